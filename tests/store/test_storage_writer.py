"""GroupCommitWriter: batches waiting during a write are merged; outcomes reach each caller."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from storage.interface import LogEntry, StoreError, WriteBatch
from storage.lmdb_store import LmdbStore
from storage.memory_store import MemoryStore
from storage.writer import GroupCommitWriter, open_group_commit_writer


class GatedStore:
    """A MemoryStore whose writes wait for the test to open a gate, so batches pile up."""

    def __init__(self, *, fail: bool = False) -> None:
        self.inner = MemoryStore()
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.write_sizes: list[int] = []
        self.fail = fail

    def write(self, batch: WriteBatch, *, sync: bool = True) -> None:
        assert sync, "the writer always asks for durability"
        self.entered.set()
        assert self.gate.wait(10), "test forgot to open the gate"
        if self.fail:
            raise StoreError("disk on fire")
        self.inner.write(batch, sync=sync)
        self.write_sizes.append(len(batch))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def put(key: str) -> WriteBatch:
    batch = WriteBatch()
    batch.put("t", key.encode(), b"v")
    return batch


async def wait_until_writing(store: GatedStore) -> None:
    await trio.to_thread.run_sync(store.entered.wait, 10)


async def test_batches_waiting_for_a_write_are_merged_into_the_next_one() -> None:
    store = GatedStore()
    async with open_group_commit_writer(store) as writer:  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.write, put("first"))
            await wait_until_writing(store)
            for n in range(19):
                nursery.start_soon(writer.write, put(f"k{n:02}"))
            await trio.testing.wait_all_tasks_blocked()
            assert writer.statistics().batches_pending == 19
            assert writer.statistics().batches_in_flight == 1
            store.gate.set()
        stats = writer.statistics()
    assert store.write_sizes == [1, 19]
    assert (stats.writes, stats.batches_written, stats.ops_written, stats.batches_failed) == (2, 20, 20, 0)
    assert stats.mean_batches_per_write == 10.0
    assert len(list(store.inner.items("t"))) == 20
    # Each write was timed in its thread: the first one waited at the gate, so it took a while.
    timed = stats.write_seconds
    assert timed is not None and timed.count == 2 and timed.sum > 0


async def test_a_malformed_batch_fails_alone() -> None:
    store = GatedStore()
    outcomes: dict[str, BaseException | None] = {}

    async def write(name: str, batch: WriteBatch) -> None:
        try:
            await writer.write(batch)
            outcomes[name] = None
        except Exception as exc:
            outcomes[name] = exc

    gap = WriteBatch()
    gap.put("t", b"from-bad-batch", b"v")
    gap.append("g", [LogEntry(5, 1, b"")])
    gap.append("g", [LogEntry(9, 1, b"")])  # leaves a gap after 5
    async with open_group_commit_writer(store) as writer:  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write, "first", put("first"))
            await wait_until_writing(store)
            nursery.start_soon(write, "a", put("a"))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(write, "bad", gap)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(write, "b", put("b"))
            await trio.testing.wait_all_tasks_blocked()
            store.gate.set()
        stats = writer.statistics()
    assert isinstance(outcomes.pop("bad"), ValueError)
    assert outcomes == {"first": None, "a": None, "b": None}
    assert [k for k, _ in store.inner.items("t")] == [b"a", b"b", b"first"]
    assert (stats.batches_written, stats.batches_failed) == (3, 1)


async def test_a_failing_store_is_never_reported_durable() -> None:
    store = GatedStore(fail=True)
    store.gate.set()
    async with open_group_commit_writer(store) as writer:  # type: ignore[arg-type]
        errors: list[BaseException] = []

        async def write(n: int) -> None:
            with pytest.raises(StoreError, match="disk on fire") as info:
                await writer.write(put(f"k{n}"))
            errors.append(info.value)

        async with trio.open_nursery() as nursery:
            for n in range(5):
                nursery.start_soon(write, n)
    assert len(errors) == 5
    assert len({id(e) for e in errors}) == 5  # each caller its own exception
    assert writer.statistics().batches_failed == 5
    assert writer.statistics().batches_written == 0
    assert list(store.inner.items("t")) == []


async def test_submit_calls_back_in_order_and_close_flushes() -> None:
    store = MemoryStore()
    seen: list[tuple[int, BaseException | None]] = []
    async with open_group_commit_writer(store) as writer:
        for n in range(10):
            writer.submit(put(f"k{n}"), lambda exc, n=n: seen.append((n, exc)))
        # Leaving the block closes the writer, which writes what was submitted.
    assert seen == [(n, None) for n in range(10)]
    assert len(list(store.items("t"))) == 10
    with pytest.raises(trio.ClosedResourceError):
        await writer.write(put("late"))


async def test_cancelling_the_writer_settles_every_batch() -> None:
    store = GatedStore()
    seen: dict[str, BaseException | None] = {}
    writer = GroupCommitWriter(store)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        writer.submit(put("in-flight"), lambda exc: seen.__setitem__("in-flight", exc))
        await wait_until_writing(store)
        writer.submit(put("pending"), lambda exc: seen.__setitem__("pending", exc))
        nursery.cancel_scope.cancel()
        store.gate.set()
    # The write already in the thread finishes and is reported; the rest is refused.
    assert seen["in-flight"] is None
    assert isinstance(seen["pending"], trio.ClosedResourceError)
    assert [k for k, _ in store.inner.items("t")] == [b"in-flight"]


async def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    store = GatedStore()
    async with open_group_commit_writer(store) as writer:  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.write, put("first"))
            await wait_until_writing(store)
            with trio.move_on_after(0.01):
                await writer.write(put("impatient"))
            nursery.start_soon(writer.write, put("patient"))
            await trio.testing.wait_all_tasks_blocked()
            store.gate.set()
    # The impatient batch may or may not be durable (here it is: it was queued).
    assert [k for k, _ in store.inner.items("t")] == [b"first", b"impatient", b"patient"]


async def test_many_writers_on_lmdb_share_fsyncs(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "s")

    async def writer_task(n: int) -> None:
        for i in range(1, 11):
            batch = WriteBatch()
            batch.append(f"g{n}", [LogEntry(i, 1, b"payload %d" % i)])
            await writer.write(batch)

    async with open_group_commit_writer(store) as writer:
        async with trio.open_nursery() as nursery:
            for n in range(30):
                nursery.start_soon(writer_task, n)
    stats = writer.statistics()
    assert stats.batches_written == 300
    assert stats.writes < 300
    for n in range(30):
        assert [e.index for e in store.entries(f"g{n}", 0, 100)] == list(range(1, 11))
    store.close()


async def test_wait_for_room_holds_producers_until_a_cycle_takes_the_backlog() -> None:
    store = GatedStore()
    async with open_group_commit_writer(store) as writer:  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.write, put("first"))
            await wait_until_writing(store)
            for n in range(5):
                writer.submit(put(f"k{n}"), lambda exc: None)
            assert writer.pending_ops == 5
            released: list[bool] = []

            async def producer() -> None:
                await writer.wait_for_room(2)
                released.append(True)

            nursery.start_soon(producer)
            await trio.testing.wait_all_tasks_blocked()
            assert released == []  # 5 operations wait: over the limit of 2
            store.gate.set()
        assert released == [True]
        assert writer.pending_ops == 0


async def test_held_bytes_count_values_until_written_and_gate_producers() -> None:
    store = GatedStore()
    async with open_group_commit_writer(store) as writer:  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            big = WriteBatch()
            big.put("t", b"k", b"x" * 1000)
            writer.submit(big, lambda exc: None)
            await wait_until_writing(store)  # taken by a cycle: no longer pending, still held
            assert writer.pending_ops == 0
            assert writer.held_bytes == 1000
            released: list[bool] = []

            async def producer() -> None:
                await writer.wait_for_room(10, max_held_bytes=500)
                released.append(True)

            nursery.start_soon(producer)
            await trio.testing.wait_all_tasks_blocked()
            assert released == []
            store.gate.set()
        assert released == [True]
        assert writer.held_bytes == 0
