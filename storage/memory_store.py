"""The in-memory twin of the LMDB store, for simulations and fast tests.

`MemoryStore` answers every `storage.interface.Store` question exactly as
`storage.lmdb_store.LmdbStore` does (a stateful property test holds them to
that), and models what a disk keeps across a crash:

- a `write(batch, sync=True)` is durable once it returns, and so is every
  earlier batch (an fsync flushes everything written before it, as on LMDB);
- a `write(batch, sync=False)` is visible at once but may be lost in a crash.

`durable_copy(keep_unsynced=k)` returns a new store holding what a disk would
hold after a crash at this instant: every batch up to the last synced one,
plus the first `k` unsynced batches after it (a crash may persist a prefix of
the unsynced writes, never a later batch without an earlier one; each batch
stays atomic). A simulation that owns the disk picks `k` from its seed; a
clean restart is `durable_copy(keep_unsynced=store.unsynced_batches())`.

To keep that cheap the store holds two states, the live one and the durable
one, and applies each batch to both (the durable one lazily, at the next
synced write), sharing the immutable entries and bytes between them.
"""

from __future__ import annotations

import threading
from typing import Iterator

from storage.interface import (
    AppendEntries,
    CompactPrefix,
    Delete,
    DeleteBody,
    DropGroup,
    HardState,
    LogEntry,
    Operation,
    Put,
    PutBody,
    PutSnapshot,
    SetHardState,
    Snapshot,
    StoreError,
    TruncateSuffix,
    WriteBatch,
    check_operation,
)


class _Log:
    """A contiguous run of entries: `entries[i].index == first + i`."""

    __slots__ = ("first", "entries")

    def __init__(self, first: int, entries: list[LogEntry]) -> None:
        self.first = first
        self.entries = entries

    @property
    def last(self) -> int:
        return self.first + len(self.entries) - 1


class _State:
    """Everything a store holds; `apply` is the single definition of the semantics."""

    __slots__ = ("hard", "logs", "snapshots", "tables", "bodies")

    def __init__(self) -> None:
        self.hard: dict[str, HardState] = {}
        self.logs: dict[str, _Log] = {}
        self.snapshots: dict[str, Snapshot] = {}
        self.tables: dict[str, dict[bytes, bytes]] = {}
        self.bodies: dict[bytes, bytes] = {}

    def clone(self) -> "_State":
        other = _State()
        other.hard = dict(self.hard)
        other.logs = {g: _Log(log.first, list(log.entries)) for g, log in self.logs.items()}
        other.snapshots = dict(self.snapshots)
        other.tables = {t: dict(kv) for t, kv in self.tables.items()}
        other.bodies = dict(self.bodies)
        return other

    def apply(self, op: Operation) -> None:
        match op:
            case SetHardState(group, state):
                self.hard[group] = state
            case AppendEntries(group, entries):
                start = entries[0].index
                log = self.logs.get(group)
                if log is None or start <= log.first:
                    self.logs[group] = _Log(start, list(entries))
                else:
                    if start > log.last + 1:
                        raise ValueError(
                            f"append to group {group!r} at index {start} would leave a gap "
                            f"after its last entry {log.last}"
                        )
                    del log.entries[start - log.first :]
                    log.entries.extend(entries)
            case TruncateSuffix(group, from_index):
                log = self.logs.get(group)
                if log is not None:
                    if from_index <= log.first:
                        del self.logs[group]
                    else:
                        del log.entries[from_index - log.first :]
            case CompactPrefix(group, through_index):
                log = self.logs.get(group)
                if log is not None:
                    if through_index >= log.last:
                        del self.logs[group]
                    elif through_index >= log.first:
                        del log.entries[: through_index + 1 - log.first]
                        log.first = through_index + 1
            case PutSnapshot(group, snapshot):
                self.snapshots[group] = snapshot
            case DropGroup(group):
                self.hard.pop(group, None)
                self.logs.pop(group, None)
                self.snapshots.pop(group, None)
            case Put(table, key, value):
                self.tables.setdefault(table, {})[key] = value
            case Delete(table, key):
                kv = self.tables.get(table)
                if kv is not None:
                    kv.pop(key, None)
            case PutBody(body_id, body):
                self.bodies[body_id] = body
            case DeleteBody(body_id):
                self.bodies.pop(body_id, None)
            case _:
                raise TypeError(f"not a store operation: {op!r}")


_LOG_OPS = (AppendEntries, TruncateSuffix, CompactPrefix, DropGroup)


def _apply_atomically(state: _State, batch: WriteBatch) -> None:
    """Apply `batch` to `state`, or nothing of it if any operation fails.

    `check_operation` rejects malformed operations up front; the one failure
    left is an append leaving a gap, which depends on the log as the earlier
    operations of the batch left it, so those are rehearsed first on copies of
    the logs the batch touches.
    """
    for op in batch.ops:
        check_operation(op)
    touched = {op.group for op in batch.ops if isinstance(op, AppendEntries)}
    if touched:
        rehearsal = _State()
        rehearsal.logs = {g: _Log(log.first, list(log.entries)) for g, log in state.logs.items() if g in touched}
        for op in batch.ops:
            if isinstance(op, _LOG_OPS) and op.group in touched:
                rehearsal.apply(op)
    for op in batch.ops:
        state.apply(op)


class MemoryStore:
    """A `Store` in memory; see the module docstring for its crash model."""

    def __init__(self) -> None:
        self._live = _State()
        self._durable = _State()
        self._unsynced: list[WriteBatch] = []
        self._lock = threading.Lock()  # the group-commit writer writes from a worker thread
        self._closed = False

    # -- writes ---------------------------------------------------------------

    def write(self, batch: WriteBatch, *, sync: bool = True) -> None:
        with self._lock:
            self._check_open()
            # Batches are mutable lists; freeze what we were given so a caller
            # reusing its batch cannot rewrite history.
            frozen = WriteBatch(list(batch.ops))
            _apply_atomically(self._live, frozen)
            self._unsynced.append(frozen)
            if sync:
                for pending in self._unsynced:
                    for op in pending.ops:
                        self._durable.apply(op)
                self._unsynced.clear()

    def unsynced_batches(self) -> int:
        """How many batches were written with sync=False since the last synced write."""
        with self._lock:
            return len(self._unsynced)

    def durable_copy(self, *, keep_unsynced: int = 0) -> "MemoryStore":
        """The store a restart after a crash right now would find (see module docstring)."""
        with self._lock:
            assert 0 <= keep_unsynced <= len(self._unsynced), keep_unsynced
            state = self._durable.clone()
            for pending in self._unsynced[:keep_unsynced]:
                for op in pending.ops:
                    state.apply(op)
        other = MemoryStore()
        other._live = state
        other._durable = state.clone()
        return other

    # -- reads ----------------------------------------------------------------

    def hard_state(self, group: str) -> HardState | None:
        with self._lock:
            return self._live.hard.get(group)

    def first_index(self, group: str) -> int:
        with self._lock:
            log = self._live.logs.get(group)
            if log is not None:
                return log.first
            snap = self._live.snapshots.get(group)
            return snap.index + 1 if snap is not None else 1

    def last_index(self, group: str) -> int:
        with self._lock:
            log = self._live.logs.get(group)
            if log is not None:
                return log.last
            snap = self._live.snapshots.get(group)
            return snap.index if snap is not None else 0

    def entries(self, group: str, lo: int, hi: int) -> list[LogEntry]:
        with self._lock:
            log = self._live.logs.get(group)
            if log is None:
                return []
            lo = max(lo, log.first)
            hi = min(hi, log.last + 1)
            if lo >= hi:
                return []
            return log.entries[lo - log.first : hi - log.first]

    def snapshot(self, group: str) -> Snapshot | None:
        with self._lock:
            return self._live.snapshots.get(group)

    def groups(self) -> list[str]:
        with self._lock:
            live = self._live
            return sorted(set(live.hard) | set(live.logs) | set(live.snapshots))

    def get(self, table: str, key: bytes) -> bytes | None:
        with self._lock:
            kv = self._live.tables.get(table)
            return None if kv is None else kv.get(key)

    def items(self, table: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        with self._lock:
            kv = self._live.tables.get(table, {})
            found = sorted((k, v) for k, v in kv.items() if k.startswith(prefix))
        return iter(found)

    def body(self, body_id: bytes) -> bytes | None:
        with self._lock:
            return self._live.bodies.get(body_id)

    def close(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the store is closed")

