"""Store operations waiting for the group-commit writer's next cycle.

A node stages the writes of its message path here (persisted messages, their
deletions, queue pages) instead of handing each socket read's worth to the
writer at once. The writer pulls everything staged when a cycle starts (see
`storage.writer.GroupCommitWriter.attach`), so while one write is in flight
the next one's operations stay here, where they can still change:

A persisted message's row is *withdrawable*. If the message leaves its queue
(acknowledged, dropped) before its row was taken by a cycle, `withdraw`
removes the row instead of letting the node write it and then delete it: the
message never touches the disk, its completion runs at once (it no longer
needs to be durable: RabbitMQ confirms such a message as well), and the
writer has two operations less to apply. A row's value may be given as a
function that encodes it, called only when a cycle takes the row, so a
withdrawn message is never encoded either. Under a steady confirmed load most
messages are consumed and acknowledged within one write cycle, so this is
the common case, not a corner.

A failed cycle is reported whole to `on_written` (when set) before the
completions run: the owner learns which rows did not reach the store (a
persisted message whose row failed must not later be read back from it, and a
failed delete leaves a row behind) from the batch itself, without a
completion per row.

Pure bookkeeping, no I/O, no trio: the writer and the node are the shells.
"""

from __future__ import annotations

from typing import Callable, Iterable

from storage.interface import Delete, Operation, Put, PutBody, WriteBatch

__all__ = ["OnDone", "OnWritten", "StagedWrites", "find_rows", "value_bytes"]

OnDone = Callable[[BaseException | None], None]
# A cycle's outcome with the batch it took: None when durable, else the store's error.
OnWritten = Callable[[WriteBatch, BaseException | None], None]


class _Row:
    """A withdrawable row whose value is made when a cycle takes it."""

    __slots__ = ("table", "key", "make", "size")

    def __init__(self, table: str, key: bytes, make: Callable[[], bytes], size: int) -> None:
        self.table = table
        self.key = key
        self.make = make
        self.size = size


class StagedWrites:
    """Operations in staging order, each batch with an optional completion."""

    __slots__ = ("_ops", "_done", "_rows", "_bytes", "withdrawn", "on_staged", "on_written")

    def __init__(self, on_staged: Callable[[], None] | None = None, on_written: OnWritten | None = None) -> None:
        # Called when something is staged into an empty staging: the writer's `poke`.
        self.on_staged = on_staged
        # Called with every batch taken, once it is written or failed, before its completions.
        self.on_written = on_written
        self._ops: list[Operation | _Row | None] = []  # None: a withdrawn row
        self._done: list[OnDone | None] = []
        # (table, key) of a withdrawable row -> its place in _ops and in _done.
        self._rows: dict[tuple[str, bytes], tuple[int, int]] = {}
        self._bytes = 0
        self.withdrawn = 0  # rows withdrawn in all, for statistics

    @property
    def pending_ops(self) -> int:
        return len(self._ops)

    @property
    def pending_bytes(self) -> int:
        """Octets of values staged (they stay in memory until written)."""
        return self._bytes

    def add(self, ops: list[Operation], on_done: OnDone | None = None) -> None:
        """Stage `ops` as they are; `on_done` runs once they are durable (or failed)."""
        if not self._ops and self.on_staged is not None:
            self.on_staged()
        self._ops.extend(ops)
        self._bytes += value_bytes(ops)
        if on_done is not None:
            self._done.append(on_done)

    def add_row(self, table: str, key: bytes, value: bytes | Callable[[], bytes],
                on_done: OnDone | None = None, size: int = 0) -> None:
        """Stage a row that `withdraw` may take back before it is written.

        `value` is the row's value, or a function making it when the row is taken
        (then `size` estimates its length for `pending_bytes`)."""
        place = (len(self._ops), len(self._done) if on_done is not None else -1)
        if not place[0] and self.on_staged is not None:
            self.on_staged()
        if type(value) is bytes:
            self._ops.append(Put(table, key, value))
            self._bytes += len(value)
        else:
            self._ops.append(_Row(table, key, value, size))  # type: ignore[arg-type]
            self._bytes += size
        if on_done is not None:
            self._done.append(on_done)
        row = (table, key)
        if row in self._rows:
            # Staged twice: neither copy may be withdrawn, or the other would be
            # written with nothing left to delete it.
            self._rows[row] = (-1, -1)
        else:
            self._rows[row] = place

    def withdraw(self, table: str, key: bytes) -> bool:
        """Take back the staged row (table, key) and run its completion with success.

        True: the row will never be written, so there is nothing to delete.
        False: it was not staged here (already taken by a write, or never
        withdrawable); the caller deletes it the ordinary way.
        """
        place = self._rows.pop((table, key), None)
        if place is None or place[0] < 0:
            return False
        op_index, done_index = place
        op = self._ops[op_index]
        assert op is not None and op.key == key, "a withdrawable row moved"  # type: ignore[union-attr]
        self._ops[op_index] = None
        self._bytes -= op.size if type(op) is _Row else len(op.value)  # type: ignore[union-attr]
        self.withdrawn += 1
        if done_index >= 0:
            done = self._done[done_index]
            if done is not None:
                self._done[done_index] = None
                done(None)
        return True

    def delete(self, table: str, key: bytes) -> None:
        """Delete row (table, key): withdrawn if still staged, else a Delete is staged."""
        if not self.withdraw(table, key):
            if not self._ops and self.on_staged is not None:
                self.on_staged()
            self._ops.append(Delete(table, key))

    def find(self, table: str, keys: set[bytes], into: dict[bytes, bytes]) -> None:
        """Add to `into` the staged values of rows (table, key), key in `keys` (see `find_rows`)."""
        find_rows(self._ops, table, keys, into)

    def take(self) -> tuple[WriteBatch, OnDone] | None:
        """Everything staged as one batch and one completion; None when nothing waits.

        A take with only completions left (every row withdrawn) runs them at once."""
        ops: list[Operation] = []
        for op in self._ops:
            if op is None:
                continue
            if type(op) is _Row:
                op = Put(op.table, op.key, op.make())
            ops.append(op)  # type: ignore[arg-type]
        done = [d for d in self._done if d is not None]
        self._ops, self._done, self._rows, self._bytes = [], [], {}, 0
        if not ops:
            for d in done:
                d(None)
            return None
        batch = WriteBatch(ops)
        on_written = self.on_written
        if on_written is not None:
            done.insert(0, lambda exc: on_written(batch, exc))
        if not done:
            return batch, _ignore
        if len(done) == 1:
            return batch, done[0]

        def all_done(exc: BaseException | None) -> None:
            for d in done:
                d(exc)

        return batch, all_done


def value_bytes(ops: Iterable[Operation]) -> int:
    """Octets of the values `ops` put: what stays in memory until they are written."""
    total = 0
    for op in ops:
        t = type(op)
        if t is Put:
            total += len(op.value)  # type: ignore[union-attr]
        elif t is PutBody:
            total += len(op.body)  # type: ignore[union-attr]
    return total


def find_rows(ops: Iterable[Operation | _Row | None], table: str, keys: set[bytes],
              into: dict[bytes, bytes]) -> None:
    """Add to `into` the values `ops` put in rows (table, key), key in `keys`, in order: a
    later put replaces, a later delete removes. Scans: not for hot paths."""
    for op in ops:
        t = type(op)
        if t is Put or t is _Row:
            if op.table == table and op.key in keys:  # type: ignore[union-attr]
                into[op.key] = op.value if t is Put else op.make()  # type: ignore[union-attr]
        elif t is Delete and op.table == table:  # type: ignore[union-attr]
            into.pop(op.key, None)  # type: ignore[union-attr]


def _ignore(_exc: BaseException | None) -> None:
    pass
