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
identifiers; keys and values are bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence, runtime_checkable


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


@dataclass(frozen=True, slots=True)
class Put:
    table: str
    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class Delete:
    table: str
    key: bytes


@dataclass(frozen=True, slots=True)
class PutBody:
    body_id: bytes
    body: bytes


@dataclass(frozen=True, slots=True)
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
