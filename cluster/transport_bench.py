"""Peer transport micro-benchmark: `python -m cluster.transport_bench` (run by hand, never a test).

What small casts cost on a peer link, the traffic chunking must not slow down:
1. encode: casts packed, queued in a peer's outbox and framed by the writer, 100 per
   cycle (`Outbox.put` / `next_write`), no I/O;
2. decode: a link reading frames of 100 casts each from a stream that hands out
   64 KiB at a time (`PeerLink.receive`: frame decoding, the chunk check, routing);
3. end to end: one `PeerTransport` casting to another over an in-memory stream, with
   the real handshake, writer, reader and cast dispatch, 100 casts per cycle.
Casts per second of CPU time (the machine is shared), the best of several runs.
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import msgpack
import trio
import trio.testing

from cluster.logtext import RefusalLog
from cluster.outbound import Outbox
from cluster.peer import DEFAULT_FRAME_MAX, PeerLink, Purpose
from cluster.peerport import serve_connection
from cluster.transport import PeerTransport

COOKIE = "BENCHMARKCOOKIEBENCH"
PER_CYCLE = 100


def _cast(n: int, payload_size: int) -> bytes:
    # As the transport packs a cast: queue ops of one publish-sized message.
    return msgpack.packb(["cast", "queue.ops", [n, [["publish", "/", "q", b"x" * payload_size, n]]]],
                         use_bin_type=True)


def _best_rate(run: Callable[[], int], repeats: int) -> float:
    best = 0.0
    for _ in range(repeats):
        start = time.process_time()
        units = run()
        best = max(best, units / (time.process_time() - start))
    return best


def bench_encode(casts: int, payload_size: int) -> float:
    def run() -> int:
        outbox = Outbox(64 * 1024 * 1024, large_limit=1024**3, ordered_tags=("cast", "call"),
                        max_frame_items_bytes=DEFAULT_FRAME_MAX - 16)
        written = 0
        for cycle in range(casts // PER_CYCLE):
            for n in range(PER_CYCLE):
                outbox.put(("cast", _cast(n, payload_size), 0))
            while (write := outbox.next_write()) is not None:
                written += len(write.data)
        assert written > casts * payload_size
        return casts

    return _best_rate(run, 5)


class _Replay(trio.abc.Stream):
    """Hands out recorded bytes, 64 KiB per read, then end of stream."""

    def __init__(self, data: bytes) -> None:
        self.data, self.offset = memoryview(data), 0

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        piece = bytes(self.data[self.offset : self.offset + (max_bytes or 65536)])
        self.offset += len(piece)
        return piece

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        pass


def bench_decode(casts: int, payload_size: int) -> float:
    cycle = b"\x92\xa1m" + msgpack.Packer().pack_array_header(PER_CYCLE) + b"".join(
        _cast(n, payload_size) for n in range(PER_CYCLE))
    data = (len(cycle).to_bytes(4, "big") + cycle) * (casts // PER_CYCLE)

    def run() -> int:
        async def read() -> int:
            link = PeerLink(_Replay(data), "a@h", "b@h", DEFAULT_FRAME_MAX, Purpose.PEER)
            count = 0
            while count < casts:
                for item in await link.receive():
                    count += item[0] == "cast"
            return count

        return trio.run(read)

    return _best_rate(run, 5)


def bench_end_to_end(casts: int, payload_size: int) -> float:
    def run() -> int:
        async def main() -> int:
            got = [0]
            done = trio.Event()

            def on_cast(src: str, payload: Any) -> None:
                got[0] += 1
                if got[0] == casts:
                    done.set()

            async with trio.open_nursery() as nursery:
                a = PeerTransport("a@h", COOKIE, rng=random.Random(1))
                b = PeerTransport("b@h", COOKIE, rng=random.Random(2))
                b.on_cast("queue.ops", on_cast)

                async def dial(*_local_address: Any) -> trio.abc.Stream:
                    left, right = trio.testing.memory_stream_pair()
                    nursery.start_soon(partial(serve_connection, {Purpose.PEER: b.serve_inbound},
                                               RefusalLog(logging.getLogger("bench")),
                                               right, cookie=COOKIE, node_name="b@h"))
                    return left

                a.set_peers({"b@h": dial})
                await nursery.start(a.run)
                while a.reachable() != {"b@h"}:
                    await trio.sleep(0.001)
                payload = [0, [["publish", "/", "q", b"x" * payload_size, 0]]]
                start = time.process_time()
                for _ in range(casts // PER_CYCLE):
                    for _ in range(PER_CYCLE):
                        a.cast("b@h", "queue.ops", payload)
                    await trio.sleep(0)
                await done.wait()
                elapsed = time.process_time() - start
                nursery.cancel_scope.cancel()
            return int(casts / elapsed)

        return trio.run(main)

    return max(run() for _ in range(5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--casts", type=int, default=200_000)
    parser.add_argument("--payload", type=int, default=256, help="bytes of message body per cast")
    options = parser.parse_args()
    print(f"small casts of a {options.payload}-byte body, {PER_CYCLE} per cycle, casts per second:")
    print(f"  encode      {bench_encode(options.casts, options.payload):12,.0f}")
    print(f"  decode      {bench_decode(options.casts, options.payload):12,.0f}")
    print(f"  end to end  {bench_end_to_end(options.casts // 4, options.payload):12,.0f}")


if __name__ == "__main__":
    main()
