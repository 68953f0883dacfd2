"""Group commit: many callers' batches, one `Store.write` and one fsync per cycle.

`GroupCommitWriter` is the trio shell in front of a store. Callers hand it
batches (`await write(batch)`, or `submit(batch, on_done)` for a driver that
wants a callback); one task, `run`, repeatedly takes *every* batch waiting,
merges them in order into one `WriteBatch` and writes it with sync=True in a
worker thread. While that fsync is in flight new batches queue up, so the
next cycle carries all of them: the batch size grows with fsync latency and
load, the way RabbitMQ Ra's WAL does, and N concurrent writers cost about
one fsync per cycle instead of N.

Why `trio.to_thread.run_sync` rather than a dedicated thread fed by a queue:
there is only ever one write in flight (the next cycle starts when the
previous returns), so the thread cache hands us an idle thread at a cost of
tens of microseconds against milliseconds of fsync; waiters, wake-ups and
shutdown then stay plain trio code with no cross-thread queue. A write in
the thread is never abandoned on cancellation (the default), so a batch is
never reported one way while the thread does the other.

Pulled operations: a producer of many small writes (a node's message path)
can `attach` a source instead of submitting, typically a
`storage.staging.StagedWrites`; each cycle takes whatever the sources hold
when it starts, after the submitted batches. Until then the operations stay
with the source, which may still withdraw some (see storage.staging).
`poke` wakes an idle writer when a source gains something.

Ordering: batches are written in the order they were submitted. Failures:
if a merged write fails, the store's transaction was aborted as a whole, so
nothing of it is durable; each batch of the cycle is then written alone so
one malformed batch cannot fail its neighbours, and each waiter gets its own
batch's outcome. A failed batch is never reported durable. A write cancelled
while waiting may or may not have been made durable.
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator, Protocol

import trio

from storage.interface import Store, WriteBatch
from storage.latency import HistogramSnapshot, LatencyHistogram
from storage.staging import OnDone, find_rows, value_bytes



class WriteSource(Protocol):
    """Operations held outside the writer until a cycle takes them."""

    @property
    def pending_ops(self) -> int: ...

    @property
    def pending_bytes(self) -> int: ...

    def take(self) -> tuple[WriteBatch, OnDone] | None: ...

    def find(self, table: str, keys: set[bytes], into: dict[bytes, bytes]) -> None: ...


@dataclass(frozen=True, slots=True)
class WriterStatistics:
    batches_written: int  # batches made durable
    batches_failed: int  # batches whose write raised
    ops_written: int
    writes: int  # successful Store.write calls, each one fsync
    batches_pending: int  # submitted, not yet taken by a cycle
    batches_in_flight: int  # in the write currently running
    # Durations of the durable writes (the store's commit and its fsyncs), failed ones too:
    # a slow disk shows here before it shows as a backlog.
    write_seconds: HistogramSnapshot | None = None

    @property
    def mean_batches_per_write(self) -> float:
        return self.batches_written / self.writes if self.writes else 0.0

    @property
    def mean_ops_per_write(self) -> float:
        return self.ops_written / self.writes if self.writes else 0.0


class GroupCommitWriter:
    """Merges concurrently submitted batches into one durable write per cycle.

    Start `run` in a nursery (or use `open_group_commit_writer`); batches
    submitted before it starts wait for it.
    """

    def __init__(self, store: Store, *, max_ops_per_write: int = 16384) -> None:
        assert max_ops_per_write >= 1
        self._store = store
        self._max_ops = max_ops_per_write
        self._pending: list[tuple[WriteBatch, OnDone]] = []
        self._sources: list[WriteSource] = []
        self._pending_ops = 0
        self._held_bytes = 0
        self._room: trio.Event | None = None
        self._wakeup = trio.Event()
        self._stopped = trio.Event()
        self._closing = False
        self._running = False
        self._in_flight = 0
        self._writing: WriteBatch | None = None  # the batch of the write under way
        self._batches_written = 0
        self._batches_failed = 0
        self._ops_written = 0
        self._writes = 0
        self._write_seconds = LatencyHistogram()

    # -- callers --------------------------------------------------------------

    def submit(self, batch: WriteBatch, on_done: OnDone) -> None:
        """Queue `batch`; `on_done(None)` runs once it is durable, `on_done(exc)` if it failed.

        Call from the trio thread. `on_done` runs in the writer's task and must
        not block or raise.
        """
        if self._closing:
            raise trio.ClosedResourceError("the storage writer is closed")
        # Copy: the caller may reuse or extend its batch while we hold it.
        self._enqueue(WriteBatch(list(batch.ops)), on_done)
        self._wakeup.set()

    def attach(self, source: WriteSource) -> None:
        """Take `source`'s operations at the start of every cycle (see the module doc)."""
        self._sources.append(source)

    def poke(self) -> None:
        """An attached source has something: start a cycle if none is under way."""
        self._wakeup.set()

    def _enqueue(self, batch: WriteBatch, on_done: OnDone) -> None:
        nbytes = value_bytes(batch.ops)
        if nbytes:
            # Values stay in memory until written: count them until the write completes.
            self._held_bytes += nbytes
            caller_done = on_done

            def on_done(exc: BaseException | None) -> None:
                self._held_bytes -= nbytes
                self._make_room()
                caller_done(exc)

        self._pending.append((batch, on_done))
        self._pending_ops += len(batch.ops)

    async def write(self, batch: WriteBatch) -> None:
        """Return once `batch` is durable; raise the store's error if it is not."""
        done = trio.Event()
        outcome: list[BaseException | None] = []

        def on_done(exc: BaseException | None) -> None:
            outcome.append(exc)
            done.set()

        self.submit(batch, on_done)
        await done.wait()
        if outcome[0] is not None:
            raise outcome[0]

    @property
    def pending_ops(self) -> int:
        """Operations submitted or held by a source and not yet taken by a write cycle."""
        return self._pending_ops + sum(s.pending_ops for s in self._sources)

    @property
    def held_bytes(self) -> int:
        """Octets of values not yet written (submitted, held by a source, or in the write under way)."""
        return self._held_bytes + sum(s.pending_bytes for s in self._sources)

    async def wait_for_room(self, max_pending_ops: int, max_held_bytes: int | None = None) -> None:
        """Wait until at most `max_pending_ops` operations wait for a cycle and at most
        `max_held_bytes` of values wait to be written: the back-pressure a producer of
        writes (publishers paging to disk) applies when the disk falls behind."""
        while (self.pending_ops > max_pending_ops
               or (max_held_bytes is not None and self.held_bytes > max_held_bytes)) and not self._closing:
            if self._room is None:
                self._room = trio.Event()
            await self._room.wait()

    def find_unwritten(self, table: str, keys: set[bytes]) -> dict[bytes, bytes]:
        """Values of rows (table, key), key in `keys`, that are put but not yet durable:
        in the write under way, submitted, or held by a source; newest first wins, a
        later delete removes. For a reader that found a row missing from the store
        because it was written a moment ago (a queue reading back a page that refers
        to persisted messages by id). Scans every waiting operation: not for hot paths."""
        found: dict[bytes, bytes] = {}
        batches = [self._writing] if self._writing is not None else []
        batches += [batch for batch, _ in self._pending]
        for batch in batches:
            find_rows(batch.ops, table, keys, found)
        for source in self._sources:
            source.find(table, keys, found)
        return found

    def statistics(self) -> WriterStatistics:
        return WriterStatistics(
            batches_written=self._batches_written,
            batches_failed=self._batches_failed,
            ops_written=self._ops_written,
            writes=self._writes,
            batches_pending=len(self._pending),
            batches_in_flight=self._in_flight,
            write_seconds=self._write_seconds.snapshot(),
        )

    async def aclose(self) -> None:
        """Stop taking batches, finish writing those already submitted, then return."""
        self._closing = True
        self._wakeup.set()
        if self._running:
            await self._stopped.wait()
        else:
            self._fail_pending()
            await trio.lowlevel.checkpoint()

    # -- the cycle ------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        assert not self._running, "run() started twice"
        self._running = True
        task_status.started()
        try:
            while True:
                await trio.lowlevel.checkpoint_if_cancelled()
                self._pull()
                if not self._pending:
                    if self._closing:
                        return
                    await self._wakeup.wait()
                    self._wakeup = trio.Event()
                    continue
                # A cycle runs to the end even if we are cancelled, so every
                # batch it took is settled one way or the other.
                with trio.CancelScope(shield=True):
                    await self._cycle(self._take())
        finally:
            self._running = False
            self._fail_pending()
            self._stopped.set()

    def _pull(self) -> None:
        for source in self._sources:
            taken = source.take()
            if taken is not None:
                self._enqueue(*taken)

    def _take(self) -> list[tuple[WriteBatch, OnDone]]:
        pending = self._pending
        ops = 0
        for count, (batch, _) in enumerate(pending, start=1):
            ops += len(batch)
            if ops >= self._max_ops:
                break
        else:
            count = len(pending)
        taken, self._pending = pending[:count], pending[count:]
        self._pending_ops -= sum(len(batch) for batch, _ in taken)
        self._make_room()
        return taken

    async def _cycle(self, taken: list[tuple[WriteBatch, OnDone]]) -> None:
        if len(taken) == 1:
            merged = taken[0][0]
        else:
            merged = WriteBatch()
            for batch, _ in taken:
                merged.extend(batch)
        self._in_flight = len(taken)
        self._writing = merged
        try:
            error = await self._write_in_thread(merged)
            if error is None:
                self._settle(taken, [None] * len(taken))
                return
            if len(taken) == 1:
                self._settle(taken, [error])
                return
            # The merged transaction was aborted whole: retry alone so only
            # the failing batches fail.
            outcomes = [await self._write_in_thread(batch) for batch, _ in taken]
            self._settle(taken, outcomes)
        finally:
            self._in_flight = 0
            self._writing = None

    async def _write_in_thread(self, batch: WriteBatch) -> BaseException | None:
        try:
            await trio.to_thread.run_sync(self._timed_write, batch)
        except Exception as exc:
            return exc
        self._writes += 1
        return None

    def _timed_write(self, batch: WriteBatch) -> None:
        """In the worker thread: the store's write, timed there so that waiting for a thread
        or for the trio loop to notice the end is not counted as disk time."""
        started = time.perf_counter()
        try:
            self._store.write(batch)
        finally:
            self._write_seconds.observe(time.perf_counter() - started)

    def _settle(self, taken: list[tuple[WriteBatch, OnDone]], outcomes: list[BaseException | None]) -> None:
        for (batch, on_done), outcome in zip(taken, outcomes):
            if outcome is None:
                self._batches_written += 1
                self._ops_written += len(batch)
            else:
                self._batches_failed += 1
            on_done(outcome)

    def _make_room(self) -> None:
        if self._room is not None:
            self._room.set()
            self._room = None

    def _fail_pending(self) -> None:
        self._pull()
        pending, self._pending = self._pending, []
        self._pending_ops = 0
        self._make_room()
        for _, on_done in pending:
            self._batches_failed += 1
            on_done(trio.ClosedResourceError("the storage writer stopped before writing this batch"))


@asynccontextmanager
async def open_group_commit_writer(store: Store, *, max_ops_per_write: int = 16384) -> AsyncIterator[GroupCommitWriter]:
    """A running `GroupCommitWriter`; leaving the block flushes what was submitted."""
    writer = GroupCommitWriter(store, max_ops_per_write=max_ops_per_write)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        try:
            yield writer
        finally:
            with trio.CancelScope(shield=True):
                await writer.aclose()
