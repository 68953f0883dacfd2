"""The store protocol every durable thing in a node goes through.

One store per node holds, for any number of replication groups (the metadata
group and one group per queue), the Raft hard state, the log entries and the
latest snapshot; plus named key-value tables (node identity, settings) and
message bodies keyed by id, shared by the fan-out copies of one message.

Writes are described by a `WriteBatch` (a plain list of operations) and
applied atomically by `Store.write`: either every operation of a batch is
durable or none is. Many callers' batches are merged into one `write` with one
fsync by `storage.writer.GroupCommitWriter` (group commit); the store itself
never starts threads.

Reads are synchronous and see every batch whose `write` has returned.

Group ids are non-empty strings without NUL; table names are short ASCII
identifiers; keys and values are bytes. Table keys and body ids are at most
`MAX_KEY_BYTES` long (body ids non-empty): LMDB caps key sizes.

A group's log is contiguous: an append may start anywhere in an empty log,
and otherwise at or before `last_index + 1`; one that would leave a gap is
refused (ValueError) and, like any failing operation, fails its whole batch.
`check_operation` is the shape check both stores run before writing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, Sequence, runtime_checkable

MAX_KEY_BYTES = 400
MAX_TABLE_NAME = 64
_TABLE_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,%d}" % MAX_TABLE_NAME)


class StoreError(Exception):
    """A store could not be opened or used; the message says why for a human."""


@dataclass(frozen=True, slots=True)
class HardState:
    """What Raft must remember across a crash for one group."""

    term: int = 0
    vote: str | None = None
    commit: int = 0


@dataclass(frozen=True, slots=True)
class LogEntry:
    index: int
    term: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The state machine of one group as of `index`; `data` is opaque to the store."""

    index: int
    term: int
    data: bytes


# Operations of a batch. Each is a frozen record so a batch can be inspected,
# compared and replayed by tests.


@dataclass(frozen=True, slots=True)
class SetHardState:
    group: str
    state: HardState


@dataclass(frozen=True, slots=True)
class AppendEntries:
    """Append `entries` (consecutive indexes) to a group's log.

    Any existing entry at or after `entries[0].index` is removed first, which
    is how Raft overwrites a conflicting suffix.
    """

    group: str
    entries: tuple[LogEntry, ...]


@dataclass(frozen=True, slots=True)
class TruncateSuffix:
    """Remove a group's log entries with index >= `from_index`."""

    group: str
    from_index: int


@dataclass(frozen=True, slots=True)
class CompactPrefix:
    """Remove a group's log entries with index <= `through_index` (after a snapshot)."""

    group: str
    through_index: int


@dataclass(frozen=True, slots=True)
class PutSnapshot:
    """Replace a group's snapshot. Entries at or below its index may then be compacted."""

    group: str
    snapshot: Snapshot


@dataclass(frozen=True, slots=True)
class DropGroup:
    """Forget everything of a group: hard state, log and snapshot."""

    group: str


@dataclass(slots=True)
class Put:
    table: str
    key: bytes
    value: bytes


@dataclass(slots=True)
class Delete:
    table: str
    key: bytes


@dataclass(slots=True)
class PutBody:
    body_id: bytes
    body: bytes


@dataclass(slots=True)
class DeleteBody:
    body_id: bytes


Operation = (
    SetHardState
    | AppendEntries
    | TruncateSuffix
    | CompactPrefix
    | PutSnapshot
    | DropGroup
    | Put
    | Delete
    | PutBody
    | DeleteBody
)


@dataclass(slots=True)
class WriteBatch:
    """Operations applied in order, atomically, by one `Store.write`."""

    ops: list[Operation] = field(default_factory=list)

    def set_hard_state(self, group: str, state: HardState) -> None:
        self.ops.append(SetHardState(group, state))

    def append(self, group: str, entries: Sequence[LogEntry]) -> None:
        if entries:
            self.ops.append(AppendEntries(group, tuple(entries)))

    def truncate_suffix(self, group: str, from_index: int) -> None:
        self.ops.append(TruncateSuffix(group, from_index))

    def compact_prefix(self, group: str, through_index: int) -> None:
        self.ops.append(CompactPrefix(group, through_index))

    def put_snapshot(self, group: str, snapshot: Snapshot) -> None:
        self.ops.append(PutSnapshot(group, snapshot))

    def drop_group(self, group: str) -> None:
        self.ops.append(DropGroup(group))

    def put(self, table: str, key: bytes, value: bytes) -> None:
        self.ops.append(Put(table, key, value))

    def delete(self, table: str, key: bytes) -> None:
        self.ops.append(Delete(table, key))

    def put_body(self, body_id: bytes, body: bytes) -> None:
        self.ops.append(PutBody(body_id, body))

    def delete_body(self, body_id: bytes) -> None:
        self.ops.append(DeleteBody(body_id))

    def extend(self, other: "WriteBatch") -> None:
        self.ops.extend(other.ops)

    def __len__(self) -> int:
        return len(self.ops)


def _check_group(group: object) -> None:
    if type(group) is not str or not group or "\x00" in group:
        raise ValueError(f"group id must be a non-empty string without NUL, not {group!r}")


def _check_table(table: object, key: object) -> None:
    if type(table) is not str or table not in _VALID_TABLES:
        _check_table_name(table)
    if type(key) is not bytes or len(key) > MAX_KEY_BYTES:
        raise ValueError(f"table key must be bytes of at most {MAX_KEY_BYTES} bytes")


# Table names seen valid: a node uses a handful, checked once each rather than by
# regular expression on every row it writes.
_VALID_TABLES: set[str] = set()


def _check_table_name(table: object) -> None:
    if type(table) is not str or not _TABLE_NAME.fullmatch(table):
        raise ValueError(f"table name must be 1-{MAX_TABLE_NAME} ASCII letters, digits or _.:-, not {table!r}")
    if len(_VALID_TABLES) < 1024:
        _VALID_TABLES.add(table)


def _check_body_id(body_id: object) -> None:
    if type(body_id) is not bytes or not 0 < len(body_id) <= MAX_KEY_BYTES:
        raise ValueError(f"body id must be 1-{MAX_KEY_BYTES} bytes, not {body_id!r}")


def _check_index(index: object) -> None:
    if type(index) is not int:
        raise ValueError(f"index must be an int, not {index!r}")


def _check_set_hard_state(op: SetHardState) -> None:
    _check_group(op.group)
    if type(op.state) is not HardState:
        raise ValueError(f"not a HardState: {op.state!r}")


def _check_append(op: AppendEntries) -> None:
    _check_group(op.group)
    entries = op.entries
    if not entries:
        raise ValueError("an append needs at least one entry")
    expected = entries[0].index
    if type(expected) is not int or expected < 1:
        raise ValueError(f"log indexes start at 1, not {expected!r}")
    for entry in entries:
        if entry.index != expected:
            raise ValueError(f"appended entries must have consecutive indexes: {entry.index} after {expected - 1}")
        if type(entry.data) is not bytes:
            raise ValueError("entry data must be bytes")
        expected += 1


def _check_truncate(op: TruncateSuffix) -> None:
    _check_group(op.group)
    _check_index(op.from_index)


def _check_compact(op: CompactPrefix) -> None:
    _check_group(op.group)
    _check_index(op.through_index)


def _check_put_snapshot(op: PutSnapshot) -> None:
    _check_group(op.group)
    snap = op.snapshot
    if type(snap) is not Snapshot or type(snap.data) is not bytes or type(snap.index) is not int or snap.index < 0:
        raise ValueError(f"not a valid snapshot: {snap!r}")


def _check_drop(op: DropGroup) -> None:
    _check_group(op.group)


def _check_put(op: Put) -> None:
    _check_table(op.table, op.key)
    if type(op.value) is not bytes:
        raise ValueError("table values must be bytes")


def _check_delete(op: Delete) -> None:
    _check_table(op.table, op.key)


def _check_put_body(op: PutBody) -> None:
    _check_body_id(op.body_id)
    if type(op.body) is not bytes:
        raise ValueError("a body must be bytes")


def _check_delete_body(op: DeleteBody) -> None:
    _check_body_id(op.body_id)


_CHECKS: dict[type, Callable[[Any], None]] = {
    SetHardState: _check_set_hard_state,
    AppendEntries: _check_append,
    TruncateSuffix: _check_truncate,
    CompactPrefix: _check_compact,
    PutSnapshot: _check_put_snapshot,
    DropGroup: _check_drop,
    Put: _check_put,
    Delete: _check_delete,
    PutBody: _check_put_body,
    DeleteBody: _check_delete_body,
}


def check_operation(op: Operation) -> None:
    """Raise ValueError if `op` is malformed on its own (regardless of the store's contents).

    Values must be exactly bytes (not bytearray or memoryview): both stores
    keep them as given.
    """
    check = _CHECKS.get(type(op))
    if check is None:
        raise ValueError(f"not a store operation: {op!r}")
    check(op)


@runtime_checkable
class Store(Protocol):
    """A node's durable state. `storage.memory_store.MemoryStore` is the twin of the LMDB store."""

    def write(self, batch: WriteBatch, *, sync: bool = True) -> None:
        """Apply `batch` atomically; with `sync`, return only once it is on disk."""

    def hard_state(self, group: str) -> HardState | None: ...

    def first_index(self, group: str) -> int:
        """Index of the first entry still in the log (snapshot index + 1 when compacted; 1 when empty)."""

    def last_index(self, group: str) -> int:
        """Index of the last entry, or the snapshot's index, or 0."""

    def entries(self, group: str, lo: int, hi: int) -> list[LogEntry]:
        """Entries with lo <= index < hi that are present, in order."""

    def snapshot(self, group: str) -> Snapshot | None: ...

    def groups(self) -> list[str]:
        """Every group with a hard state, an entry or a snapshot, sorted."""

    def get(self, table: str, key: bytes) -> bytes | None: ...

    def items(self, table: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """Key-value pairs whose key starts with `prefix`, in key order."""

    def body(self, body_id: bytes) -> bytes | None: ...

    def close(self) -> None: ...
