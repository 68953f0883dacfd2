"""Backlogs larger than a queue's memory window, through a real node.

A node with `queue_memory_window: 1000` takes 50,000 messages of 1 KiB into one
queue with no consumer, then a consumer drains them. The node's anonymous
resident memory (RssAnon: the heap, not LMDB's file-backed map) must stay far
below what the same backlog costs a node that never pages (checked against
such a node for transient messages), and every message must come out once, in
publish order. Cases: transient messages in a non-durable queue (paged to
`queue_paged`), persistent messages in a durable queue (already on disk: paged
by id), and a restart with a paged persistent backlog (recovered in order,
flagged redelivered, and no paged data left behind once drained).

The 1,000,000-message run (`--slow`) prints the figures quoted in
docs/performance.md; `python -m tests.integration.test_backlog COUNT` runs it
against a fresh node outside pytest (`--transient`, `--restart`, `--window=N`,
`--body=BYTES`), and `python -m tests.integration.test_backlog group-commit`
measures confirmed persistent publishes per second with one message per fsync
against many (the "Storage: group commit" figures).
"""

from __future__ import annotations

import struct
import sys
import time
from dataclasses import dataclass, field

import pytest
import trio

from broker.amqp import spec
from broker.amqp.codec import BodyFrame, HeaderFrame, MethodFrame, encode_content, encode_method, encode_properties
from cli.perf.client import Connection
from tests.support.node_process import NodeProcess

COUNT = 50_000
BODY = 1024
WINDOW = 1000
_INDEX = struct.Struct(">Q")


def proc_status(pid: int, field: str) -> int:
    """A memory figure of /proc/PID/status in bytes (RssAnon, VmHWM, ...)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc status")


def rss_anon(pid: int) -> int:
    """Anonymous resident bytes of `pid` (LMDB's mapped file pages are not the heap)."""
    return proc_status(pid, "RssAnon")


@dataclass
class MemorySampler:
    pid: int
    samples: list[tuple[float, int]] = field(default_factory=list)

    async def run(self, interval: float = 0.1) -> None:
        start = time.monotonic()
        while True:
            self.samples.append((time.monotonic() - start, rss_anon(self.pid)))
            await trio.sleep(interval)

    @property
    def peak(self) -> int:
        return max(rss for _, rss in self.samples)


async def fill(url: str, queue: str, count: int, *, durable: bool, persistent: bool, body_size: int = BODY) -> None:
    """Publish `count` messages numbered 0.. with confirms; return once all are confirmed."""
    conn = await Connection.open(url)
    try:
        await conn.open_channel(1)
        await conn.call(1, spec.QueueDeclare(queue=queue, durable=durable), spec.QueueDeclareOk)
        await conn.call(1, spec.ConfirmSelect(), spec.ConfirmSelectOk)
        props = encode_properties(spec.BasicProperties(delivery_mode=2 if persistent else 1))
        method = encode_method(1, spec.BasicPublish(0, "", queue, False, False))
        filler = b"." * (body_size - _INDEX.size)
        confirmed = 0
        done = trio.Event()

        async def read_confirms() -> None:
            nonlocal confirmed
            while confirmed < count:
                for frame in await conn.receive():
                    conn.check(frame)
                    if type(frame) is MethodFrame and type(frame.method) is spec.BasicAck:
                        confirmed = frame.method.delivery_tag
                    elif type(frame) is MethodFrame and type(frame.method) is spec.BasicNack:
                        raise AssertionError(f"publish {frame.method.delivery_tag} nacked")
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_confirms)
            batch = 500
            for first in range(0, count, batch):
                # At most 2,000 unconfirmed: the test measures the backlog, not messages in flight.
                while first - confirmed > 2_000:
                    await trio.sleep(0.005)
                data = b"".join(
                    method + encode_content(1, 60, props, _INDEX.pack(i) + filler, conn.frame_max)
                    for i in range(first, min(first + batch, count))
                )
                await conn.send(data)
            with trio.fail_after(120):
                await done.wait()
    finally:
        await conn.close()


async def drain(url: str, queue: str, count: int, *, durable: bool) -> tuple[list[int], list[bool]]:
    """Consume `count` messages with acks (prefetch 2000); their numbers and redelivered flags."""
    conn = await Connection.open(url)
    indexes: list[int] = []
    redelivered: list[bool] = []
    try:
        await conn.open_channel(1)
        ok = await conn.call(1, spec.QueueDeclare(queue=queue, durable=durable), spec.QueueDeclareOk)
        assert ok.message_count == count
        await conn.call(1, spec.BasicQos(0, 2000, False), spec.BasicQosOk)
        await conn.call(1, spec.BasicConsume(queue=queue, consumer_tag="drain"), spec.BasicConsumeOk)
        acked = 0
        last_tag = 0
        with trio.fail_after(300):
            while len(indexes) < count:
                for frame in await conn.receive():
                    kind = type(frame)
                    if kind is MethodFrame:
                        conn.check(frame)
                        if type(frame.method) is spec.BasicDeliver:
                            last_tag = frame.method.delivery_tag
                            redelivered.append(frame.method.redelivered)
                    elif kind is BodyFrame:
                        indexes.append(_INDEX.unpack_from(frame.payload)[0])
                    elif kind is HeaderFrame:
                        assert frame.body_size >= _INDEX.size
                if last_tag - acked >= 500 or len(indexes) == count:
                    await conn.send(encode_method(1, spec.BasicAck(last_tag, True)))
                    acked = last_tag
        ok = await conn.call(1, spec.QueueDeclare(queue=queue, durable=durable), spec.QueueDeclareOk)
        assert ok.message_count == 0
    finally:
        await conn.close()
    return indexes, redelivered


async def backlog_run(node: NodeProcess, queue: str, count: int, *, durable: bool, persistent: bool,
                      restart: bool = False, body_size: int = BODY) -> dict[str, object]:
    """Fill, (restart,) drain; memory figures and what came out."""
    assert node.proc is not None
    before = rss_anon(node.proc.pid)
    filled = MemorySampler(node.proc.pid)
    t0 = time.monotonic()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(filled.run)
        await fill(node.url, queue, count, durable=durable, persistent=persistent, body_size=body_size)
        filled.samples.append((time.monotonic() - t0, rss_anon(node.proc.pid)))
        nursery.cancel_scope.cancel()
    fill_s = time.monotonic() - t0
    restart_s = 0.0
    if restart:
        node.stop()
        t = time.monotonic()
        node.start(timeout=600)
        restart_s = time.monotonic() - t
        recovered = rss_anon(node.proc.pid)
        # Peak total RSS (heap and mapped store pages) of the new process, i.e. of recovery.
        recovery_peak = proc_status(node.proc.pid, "VmHWM")
    drained = MemorySampler(node.proc.pid)
    t1 = time.monotonic()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(drained.run)
        indexes, redelivered = await drain(node.url, queue, count, durable=durable)
        nursery.cancel_scope.cancel()
    return {
        "restart_s": restart_s,
        "recovered": recovered if restart else None,
        "recovery_peak": recovery_peak if restart else None,
        "body_size": body_size,
        "before": before,
        "filled": filled,
        "drained": drained,
        "fill_s": fill_s,
        "drain_s": time.monotonic() - t1,
        "indexes": indexes,
        "redelivered": redelivered,
    }


@pytest.fixture(scope="module")
def paging_node():
    node = NodeProcess(config={"queue_memory_window": WINDOW}).start()
    yield node
    node.stop()


MiB = 1 << 20


async def test_transient_backlog_is_paged_and_drains_in_order(paging_node: NodeProcess) -> None:
    run = await backlog_run(paging_node, "backlog_transient", COUNT, durable=False, persistent=False)
    assert run["indexes"] == list(range(COUNT))
    assert not any(run["redelivered"])  # type: ignore[arg-type]
    growth = max(run["filled"].peak, run["drained"].peak) - run["before"]  # type: ignore[union-attr]
    # 50,000 bodies of 1 KiB are ~50 MiB before any bookkeeping; the window holds 1,000.
    # Transient publishes are not paced by the disk, so pages waiting for a slow writer
    # (a busy machine) add to this: the bound is looser than for persistent messages.
    assert growth < 45 * MiB, f"resident memory grew by {growth / MiB:.1f} MiB"

    unpaged = NodeProcess(config={"queue_memory_window": 0}).start()
    try:
        base = await backlog_run(unpaged, "backlog_transient", COUNT, durable=False, persistent=False)
    finally:
        unpaged.stop()
    assert base["indexes"] == list(range(COUNT))
    base_growth = base["filled"].peak - base["before"]  # type: ignore[union-attr, operator]
    assert base_growth > 60 * MiB
    assert growth * 2 < base_growth, (growth / MiB, base_growth / MiB)


async def test_persistent_backlog_in_durable_queue_is_paged_and_drains_in_order(paging_node: NodeProcess) -> None:
    run = await backlog_run(paging_node, "backlog_persistent", COUNT, durable=True, persistent=True)
    assert run["indexes"] == list(range(COUNT))
    growth = max(run["filled"].peak, run["drained"].peak) - run["before"]  # type: ignore[union-attr]
    assert growth < 30 * MiB, f"resident memory grew by {growth / MiB:.1f} MiB"


async def test_paged_persistent_backlog_is_recovered_in_order_after_restart() -> None:
    node = NodeProcess(config={"queue_memory_window": WINDOW}).start()
    try:
        count = 20_000
        run = await backlog_run(node, "backlog_restart", count, durable=True, persistent=True, restart=True)
        assert run["indexes"] == list(range(count))
        assert all(run["redelivered"])  # type: ignore[arg-type]
        growth = run["drained"].peak - run["before"]  # type: ignore[union-attr, operator]
        assert growth < 30 * MiB, f"resident memory grew by {growth / MiB:.1f} MiB"
    finally:
        node.stop()
    # Drained and acked: neither persisted messages nor pages are left in the store.
    from storage.lmdb_store import LmdbStore

    with_store = LmdbStore(node.data_dir)
    try:
        assert list(with_store.items("queue_paged")) == []
        assert list(with_store.items("queue_messages")) == []
    finally:
        with_store.close()


async def consume_while_published(url: str, queue: str, count: int) -> list[int]:
    """Consume `count` messages as they are published (prefetch 2000, acks every 500)."""
    conn = await Connection.open(url)
    indexes: list[int] = []
    try:
        await conn.open_channel(1)
        await conn.call(1, spec.QueueDeclare(queue=queue, durable=True), spec.QueueDeclareOk)
        await conn.call(1, spec.BasicQos(0, 2000, False), spec.BasicQosOk)
        await conn.call(1, spec.BasicConsume(queue=queue, consumer_tag="live"), spec.BasicConsumeOk)
        acked = last_tag = 0
        with trio.fail_after(120):
            while len(indexes) < count:
                for frame in await conn.receive():
                    if type(frame) is MethodFrame:
                        conn.check(frame)
                        if type(frame.method) is spec.BasicDeliver:
                            last_tag = frame.method.delivery_tag
                    elif type(frame) is BodyFrame:
                        indexes.append(_INDEX.unpack_from(frame.payload)[0])
                if last_tag - acked >= 500 or len(indexes) == count:
                    await conn.send(encode_method(1, spec.BasicAck(last_tag, True)))
                    acked = last_tag
    finally:
        await conn.close()
    return indexes


async def test_pages_read_back_before_their_messages_are_written() -> None:
    # A window of 8 messages pages out in pages of 2 and reads them back almost at once
    # while a consumer keeps up: a page that refers to persisted messages by id is then
    # read before those rows are durable, and must find them with the writer.
    node = NodeProcess(config={"queue_memory_window": 8}).start()
    try:
        count = 30_000
        got: list[int] = []

        async def consume() -> None:
            got.extend(await consume_while_published(node.url, "paged_live", count))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            await trio.sleep(0.2)  # the consumer is attached before the first publish
            await fill(node.url, "paged_live", count, durable=True, persistent=True, body_size=256)
        assert got == list(range(count))
        assert "internal error" not in node.log_text()
    finally:
        node.stop()


def report(label: str, run: dict[str, object]) -> str:
    filled, drained = run["filled"], run["drained"]
    restarted = ""
    if run["recovered"] is not None:
        restarted = (f"restart {run['restart_s']:.1f} s, peak RSS during recovery "  # type: ignore[operator]
                     f"{run['recovery_peak'] / MiB:.0f} MiB, RssAnon after {run['recovered'] / MiB:.0f} MiB, ")  # type: ignore[operator]
    lines = [f"{label}: fill {run['fill_s']:.1f} s, drain {run['drain_s']:.1f} s, {restarted}"
             f"RssAnon before {run['before'] / MiB:.0f} MiB, peak while filling {filled.peak / MiB:.0f} MiB, "  # type: ignore[operator, union-attr]
             f"peak while draining {drained.peak / MiB:.0f} MiB"]  # type: ignore[union-attr]
    for name, sampler in (("fill", filled), ("drain", drained)):
        samples = sampler.samples  # type: ignore[union-attr]
        step = max(1, len(samples) // 10)
        lines.append(f"  {name}: " + ", ".join(f"{t:.0f}s {rss / MiB:.0f}" for t, rss in samples[::step]))
    return "\n".join(lines)


@pytest.mark.slow
async def test_million_message_backlogs() -> None:
    """The figures of docs/performance.md "Storage: backlog memory" (default window)."""
    for label, count, durable, persistent in (("persistent, durable queue", 1_000_000, True, True),
                                              ("transient", 200_000, False, False)):
        node = NodeProcess().start()
        try:
            run = await backlog_run(node, "million", count, durable=durable, persistent=persistent, body_size=256)
        finally:
            node.stop()
        print(report(f"{count} x 256 B {label}", run))
        assert run["indexes"] == list(range(count))
        assert max(run["filled"].peak, run["drained"].peak) < 400 * MiB  # type: ignore[union-attr]


async def confirm_rate(url: str, publishers: int, window: int, seconds: float, body_size: int = 256) -> float:
    """Confirmed persistent publishes per second into a durable queue: `publishers`
    connections, each keeping at most `window` publishes unconfirmed."""
    queue = f"group_commit_{publishers}_{window}"
    confirmed_total = 0

    async def publisher() -> None:
        nonlocal confirmed_total
        conn = await Connection.open(url)
        try:
            await conn.open_channel(1)
            await conn.call(1, spec.QueueDeclare(queue=queue, durable=True), spec.QueueDeclareOk)
            await conn.call(1, spec.ConfirmSelect(), spec.ConfirmSelectOk)
            props = encode_properties(spec.BasicProperties(delivery_mode=2))
            one = encode_method(1, spec.BasicPublish(0, "", queue, False, False)) + encode_content(
                1, 60, props, b"." * body_size, conn.frame_max)
            sent = confirmed = 0
            deadline = trio.current_time() + seconds
            while trio.current_time() < deadline:
                if sent - confirmed < window:
                    n = window - (sent - confirmed)
                    await conn.send(one * n)
                    sent += n
                for frame in await conn.receive():
                    conn.check(frame)
                    if type(frame) is MethodFrame and type(frame.method) is spec.BasicAck:
                        m = frame.method
                        confirmed = max(confirmed, m.delivery_tag) if m.multiple else confirmed + 1
            confirmed_total += confirmed
        finally:
            await conn.close()

    async with trio.open_nursery() as nursery:
        for _ in range(publishers):
            nursery.start_soon(publisher)
    admin = await Connection.open(url)
    try:
        await admin.open_channel(1)
        await admin.call(1, spec.QueueDelete(queue=queue), spec.QueueDeleteOk)
    finally:
        await admin.close()
    return confirmed_total / seconds


if __name__ == "__main__":
    async def _group_commit() -> None:
        node = NodeProcess().start()
        try:
            for publishers, window in ((1, 1), (4, 1), (16, 1), (64, 1), (1, 256), (4, 256)):
                rate = await confirm_rate(node.url, publishers, window, 10.0)
                print(f"{publishers} publisher(s), {window} unconfirmed each: {rate:,.0f} confirmed msg/s")
        finally:
            node.stop()

    async def _main() -> None:
        count = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
        persistent = "--transient" not in sys.argv
        restart = "--restart" in sys.argv
        sizes = [int(a.split("=", 1)[1]) for a in sys.argv if a.startswith("--body=")]
        body_size = sizes[0] if sizes else BODY
        windows = [int(a.split("=", 1)[1]) for a in sys.argv if a.startswith("--window=")]
        config = {"queue_memory_window": windows[0]} if windows else None
        node = NodeProcess(config=config).start()
        try:
            run = await backlog_run(node, "bench", count, durable=persistent, persistent=persistent, restart=restart,
                                    body_size=body_size)
        finally:
            node.stop()
        print(report(f"{count} x {body_size} B {'persistent' if persistent else 'transient'}"
                     f"{' with restart' if restart else ''} {config}", run))
        assert run["indexes"] == list(range(count)), "drain out of order or incomplete"

    trio.run(_group_commit if "group-commit" in sys.argv else _main)
