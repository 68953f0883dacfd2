"""Hand-run codec benchmark: `python -m broker.amqp.bench` (not a test; figures vary by machine).

Measures the hot paths of a broker: decoding pipelined basic.publish messages
(method + header + 256-byte body frames, as a publisher sends them), encoding
basic.deliver, and decoding / encoding basic.ack.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

from . import spec
from .codec import FrameDecoder, encode_basic_ack, encode_content, encode_deliver, encode_method, encode_properties

FRAME_MAX = 131072


def _best_rate(run: Callable[[], int], repeats: int) -> float:
    """Units per second of the fastest of `repeats` runs (least disturbed by the machine)."""
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        units = run()
        elapsed = time.perf_counter() - start
        best = max(best, units / elapsed)
    return best


def publish_stream(messages: int) -> bytes:
    raw = encode_properties(spec.BasicProperties(content_type="application/octet-stream", delivery_mode=2))
    one = encode_method(1, spec.BasicPublish(exchange="amq.direct", routing_key="bench.queue")) + encode_content(
        1, 60, raw, b"x" * 256, FRAME_MAX
    )
    return one * messages


def bench_publish_decode(messages: int, chunk: int) -> float:
    data = publish_stream(messages)
    chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]

    def run() -> int:
        decoder = FrameDecoder(FRAME_MAX)
        count = 0
        for piece in chunks:
            frames, error = decoder.feed(piece)
            assert error is None
            count += len(frames)
        assert count == 3 * messages
        return count

    return _best_rate(run, 5)


def bench_deliver_encode(messages: int) -> float:
    raw = encode_properties(spec.BasicProperties(content_type="application/octet-stream", delivery_mode=2))
    body = b"x" * 256

    def run() -> int:
        for tag in range(1, messages + 1):
            encode_deliver(1, "amq.ctag-bench", tag, False, "amq.direct", "bench.queue", raw, body, FRAME_MAX)
        return messages

    return _best_rate(run, 5)


def bench_ack_decode(messages: int) -> float:
    data = b"".join(encode_basic_ack(1, tag, False) for tag in range(1, messages + 1))

    def run() -> int:
        frames, error = FrameDecoder(FRAME_MAX).feed(data)
        assert error is None and len(frames) == messages
        return messages

    return _best_rate(run, 5)


def bench_ack_encode(messages: int) -> float:
    def run() -> int:
        for tag in range(1, messages + 1):
            encode_basic_ack(1, tag, False)
        return messages

    return _best_rate(run, 5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=65536, help="octets per feed(), like one receive_some")
    args = parser.parse_args()
    n = args.messages
    publish = bench_publish_decode(n, args.chunk)
    print(f"publish decode : {publish:12,.0f} frames/s  ({publish / 3:,.0f} messages/s, 256-byte bodies)")
    print(f"deliver encode : {bench_deliver_encode(n):12,.0f} messages/s")
    print(f"ack decode     : {bench_ack_decode(n):12,.0f} frames/s")
    print(f"ack encode     : {bench_ack_encode(n):12,.0f} frames/s")


if __name__ == "__main__":
    main()
