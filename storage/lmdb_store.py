"""The durable store of a node: one LMDB environment, named sub-databases.

Layout (every key is ordered so the scans we need are cursor ranges):

    meta    b"format" -> version                             store-wide facts
    groups  gid u32 -> group name (utf-8)                     a group's number
    hard    gid u32 -> msgpack (term, vote, commit)          Raft hard state
    log     gid u32 ‖ index u64 -> msgpack (term, data)       entries, big-endian
    snap    gid u32 -> index u64 ‖ term u64 ‖ data            latest snapshot
    kv      table ‖ NUL ‖ key -> value                         named tables
    bodies  body id -> body                                   message bodies

Groups are numbered rather than keyed by name so log keys stay 12 bytes
(dense pages, cheap comparisons) and a group name may be longer than LMDB's
511-byte key limit. A snapshot keeps a fixed binary header so opening the
store learns its index without decoding (or copying) the data.

Durability. The environment is opened with sync=True, metasync=False, and a
`write(sync=True)` calls `env.sync(True)` after the commit. LMDB's commit
then flushes the new data pages (fdatasync #1) and writes the meta page that
points to them without flushing it; our `env.sync` flushes that meta page
(fdatasync #2). The order matters: meta must reach the disk only after the
pages it points to, since LMDB keeps no checksums — the tempting
"sync=False + one env.sync per commit" would let a power cut persist a meta
page pointing at unwritten pages, i.e. a corrupt store. What this buys over
LMDB's default (which does the same two flushes itself) is a cheaper
`write(sync=False)`: one flush, never corruption, but the last such commits
may be undone by a power cut — exactly the contract of sync=False. The cost
of the two flushes is shared by many callers through
`storage.writer.GroupCommitWriter`.

Threads. One thread at a time writes (the group-commit worker); readers use
their own short read transactions from any thread. The per-group first/last
index, hard state and snapshot index are cached in memory (loaded with two
cursor seeks per group on open) and replaced only after a commit succeeds, so
a failed or aborted batch leaves the cache as it was. Growing the map
(`MapFullError`) needs no transaction open in the process, so reads and the
resize share a lock; reads never hand out a live cursor (`items` copies a
chunk of rows per short read transaction and yields from the copy). `close`
takes both locks, so it waits for a write or read in flight instead of closing
the environment under it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
import threading
from pathlib import Path
from typing import Callable, Iterator

import lmdb
import msgpack

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

FORMAT_VERSION = 1
DEFAULT_MAP_SIZE = 1 << 30  # address space only: the file grows with the data
# Bytes read or newly written between two drops of the map's resident pages: what a
# backlog can hold resident beyond the hot pages. Dropping costs a page-table walk
# and a few minor faults to map the hot branch pages again.
DEFAULT_RELEASE_BYTES = 64 << 20
_PAGE = 4096
_MADV_DONTNEED = 4
ITEMS_CHUNK = 4096  # rows per read transaction when iterating a table

_GID = struct.Struct(">I")
_LOG_KEY = struct.Struct(">IQ")
_INDEX = struct.Struct(">Q")
_SNAP_HEAD = struct.Struct(">QQ")
_MAX_INDEX = (1 << 64) - 1
_DB_NAMES = (b"meta", b"groups", b"hard", b"log", b"snap", b"kv", b"bodies")

_pack = msgpack.packb
_unpack = msgpack.unpackb


class _Group:
    """What we cache of one group; replaced (never mutated) once published."""

    __slots__ = ("gid", "prefix", "first", "last", "hard", "snap_index")

    def __init__(self, gid: int) -> None:
        self.gid = gid
        self.prefix = _GID.pack(gid)
        self.first: int | None = None
        self.last: int | None = None
        self.hard: HardState | None = None
        self.snap_index: int | None = None

    def copy(self) -> "_Group":
        other = _Group.__new__(_Group)
        other.gid, other.prefix = self.gid, self.prefix
        other.first, other.last = self.first, self.last
        other.hard, other.snap_index = self.hard, self.snap_index
        return other

    def exists(self) -> bool:
        return self.first is not None or self.hard is not None or self.snap_index is not None


def _load_madvise() -> Callable[[int, int, int], int] | None:
    if not os.path.exists("/proc/self/maps"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    madvise.restype = ctypes.c_int
    return madvise  # type: ignore[no-any-return]


_madvise = _load_madvise()


def _mapped_range(path: Path) -> tuple[int, int] | None:
    """Address and length of this process's map of the file at `path`, from /proc/self/maps."""
    try:
        st = path.stat()
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) < 6 or int(fields[4]) != st.st_ino:
                    continue
                major, minor = (int(part, 16) for part in fields[3].split(":"))
                if os.makedev(major, minor) != st.st_dev:
                    continue
                lo, hi = (int(part, 16) for part in fields[0].split("-"))
                return lo, hi - lo
    except (OSError, ValueError):
        return None
    return None


_TABLE_HEADS: dict[str, bytes] = {}


def _table_key(table: str, key: bytes) -> bytes:
    head = _TABLE_HEADS.get(table)
    if head is None:
        head = table.encode("ascii") + b"\x00"
        if len(_TABLE_HEADS) < 1024:
            _TABLE_HEADS[table] = head
    return head + key


class _Transaction:
    """One batch being applied inside one LMDB write transaction.

    Group changes are staged here and published to the store's cache only
    after the commit; a cursor per sub-database is opened once per batch.
    """

    __slots__ = ("store", "txn", "staged", "next_gid", "pack", "log", "kv", "bodies", "_cursors")

    def __init__(self, store: "LmdbStore", txn: lmdb.Transaction) -> None:
        self.store = store
        self.txn = txn
        self.staged: dict[str, _Group | None] = {}  # None: dropped by this batch
        self.next_gid = store._next_gid
        self.pack = store._packer.pack
        dbs = store._dbs
        # The hot sub-databases get their cursor up front, the others on use.
        self.log = txn.cursor(db=dbs["log"])
        self.kv = txn.cursor(db=dbs["kv"])
        self.bodies = txn.cursor(db=dbs["bodies"])
        self._cursors: dict[str, lmdb.Cursor] = {}

    def cursor(self, db: str) -> lmdb.Cursor:
        cur = self._cursors.get(db)
        if cur is None:
            cur = self._cursors[db] = self.txn.cursor(db=self.store._dbs[db])
        return cur

    def lookup(self, name: str) -> _Group | None:
        if name in self.staged:
            return self.staged[name]
        return self.store._groups.get(name)

    def mutable(self, name: str, create: bool) -> _Group | None:
        """The staged copy of group `name`, numbering it first if `create` and new."""
        if name in self.staged:
            group = self.staged[name]
        else:
            current = self.store._groups.get(name)
            group = self.staged[name] = current.copy() if current is not None else None
        if group is None and create:
            assert self.next_gid < 1 << 32, "group numbers exhausted"
            group = _Group(self.next_gid)
            self.next_gid += 1
            self.cursor("groups").put(group.prefix, name.encode("utf-8"))
            self.staged[name] = group
        return group

    def delete_entries(self, group: _Group, lo: int, hi: int) -> None:
        """Delete entries lo..hi inclusive, all of which exist (the log is contiguous)."""
        cur = self.log
        found = cur.set_key(_LOG_KEY.pack(group.gid, lo))
        assert found, (group.gid, lo, hi)
        delete = cur.delete
        for _ in range(hi - lo + 1):
            delete()

    # -- one method per operation ----------------------------------------------

    def set_hard_state(self, op: SetHardState) -> None:
        group = self.mutable(op.group, create=True)
        assert group is not None
        state = op.state
        self.cursor("hard").put(group.prefix, self.pack((state.term, state.vote, state.commit)))
        group.hard = state

    def append(self, op: AppendEntries) -> None:
        group = self.mutable(op.group, create=True)
        assert group is not None
        entries = op.entries
        start, end = entries[0].index, entries[-1].index
        gid, pack = group.gid, self.pack
        if group.last is not None and start == group.last + 1:
            # The common case: extending the log, nothing to delete.
            group.last = end
        elif group.first is not None:
            assert group.last is not None
            if start > group.first and start > group.last + 1:
                raise ValueError(
                    f"append to group {op.group!r} at index {start} would leave a gap "
                    f"after its last entry {group.last}"
                )
            # Keys start..end are overwritten by the put below; only the
            # old entries past `end` need deleting.
            stale_from = max(end + 1, group.first)
            if stale_from <= group.last:
                self.delete_entries(group, stale_from, group.last)
            if start < group.first:
                group.first = start
            group.last = end
        else:
            group.first, group.last = start, end
        if len(entries) == 1:
            entry = entries[0]
            self.log.put(_LOG_KEY.pack(gid, start), pack((entry.term, entry.data)))
        else:
            key = _LOG_KEY.pack
            self.log.putmulti([(key(gid, e.index), pack((e.term, e.data))) for e in entries])

    def truncate_suffix(self, op: TruncateSuffix) -> None:
        current = self.lookup(op.group)
        if current is None or current.first is None:
            return
        group = self.mutable(op.group, create=False)
        assert group is not None and group.first is not None and group.last is not None
        if op.from_index <= group.first:
            self.delete_entries(group, group.first, group.last)
            group.first = group.last = None
        elif op.from_index <= group.last:
            self.delete_entries(group, op.from_index, group.last)
            group.last = op.from_index - 1

    def compact_prefix(self, op: CompactPrefix) -> None:
        current = self.lookup(op.group)
        if current is None or current.first is None:
            return
        group = self.mutable(op.group, create=False)
        assert group is not None and group.first is not None and group.last is not None
        if op.through_index >= group.last:
            self.delete_entries(group, group.first, group.last)
            group.first = group.last = None
        elif op.through_index >= group.first:
            self.delete_entries(group, group.first, op.through_index)
            group.first = op.through_index + 1

    def put_snapshot(self, op: PutSnapshot) -> None:
        group = self.mutable(op.group, create=True)
        assert group is not None
        snap = op.snapshot
        self.cursor("snap").put(group.prefix, _SNAP_HEAD.pack(snap.index, snap.term) + snap.data)
        group.snap_index = snap.index

    def drop_group(self, op: DropGroup) -> None:
        group = self.lookup(op.group)
        if group is None:
            return
        if group.first is not None:
            assert group.last is not None
            self.delete_entries(group, group.first, group.last)
        for db in ("hard", "snap", "groups"):
            self.txn.delete(group.prefix, db=self.store._dbs[db])
        self.staged[op.group] = None

    def put(self, op: Put) -> None:
        self.kv.put(_table_key(op.table, op.key), op.value)

    def delete(self, op: Delete) -> None:
        kv = self.kv
        if kv.set_key(_table_key(op.table, op.key)):
            kv.delete()

    def put_body(self, op: PutBody) -> None:
        self.bodies.put(op.body_id, op.body)

    def delete_body(self, op: DeleteBody) -> None:
        self.txn.delete(op.body_id, db=self.store._dbs["bodies"])


_APPLY: dict[type, Callable[[_Transaction, Operation], None]] = {
    SetHardState: _Transaction.set_hard_state,  # type: ignore[dict-item]
    AppendEntries: _Transaction.append,  # type: ignore[dict-item]
    TruncateSuffix: _Transaction.truncate_suffix,  # type: ignore[dict-item]
    CompactPrefix: _Transaction.compact_prefix,  # type: ignore[dict-item]
    PutSnapshot: _Transaction.put_snapshot,  # type: ignore[dict-item]
    DropGroup: _Transaction.drop_group,  # type: ignore[dict-item]
    Put: _Transaction.put,  # type: ignore[dict-item]
    Delete: _Transaction.delete,  # type: ignore[dict-item]
    PutBody: _Transaction.put_body,  # type: ignore[dict-item]
    DeleteBody: _Transaction.delete_body,  # type: ignore[dict-item]
}


class LmdbStore:
    """A `storage.interface.Store` in an LMDB environment at `path` (a directory).

    Open a node's store through `storage.datadir.open_data_dir`, which also
    locks the directory; opening the same directory twice at once is unsafe.
    `on_close` runs after the environment is closed (the data-dir lock uses it).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        map_size: int = DEFAULT_MAP_SIZE,
        release_bytes: int | None = DEFAULT_RELEASE_BYTES,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.path = Path(path)
        # None: never drop the map's resident pages (the kernel's default).
        self.release_bytes = release_bytes
        self.releases = 0
        # Bytes moved through the map since the last drop; an estimate (threads
        # may race on it, which only moves a drop a little).
        self._moved = 0
        self._last_pgno = 0
        self._mapped: tuple[int, int] | None = None
        self._mapped_growths = -1
        self._on_close = on_close
        self._map_lock = threading.Lock()
        # One writer at a time (LMDB would serialise them anyway); it owns the packer.
        self._write_lock = threading.Lock()
        self._packer = msgpack.Packer()
        self._failed: BaseException | None = None
        self._closed = False
        self.map_growths = 0
        try:
            self._env = lmdb.open(
                str(self.path),
                map_size=map_size,
                subdir=True,
                max_dbs=len(_DB_NAMES),
                sync=True,
                metasync=False,
                readahead=False,  # random access over a store that may exceed RAM
                meminit=False,
                lock=True,
            )
        except lmdb.Error as exc:
            raise StoreError(f"cannot open the store in {self.path}: {exc}") from exc
        try:
            self._dbs = self._open_databases()
            self._groups: dict[str, _Group] = {}
            self._next_gid = 0
            self._load_cache()
            self._last_pgno = int(self._env.info()["last_pgno"])
        except BaseException:
            self._env.close()
            raise

    # -- opening --------------------------------------------------------------

    def _open_databases(self) -> dict[str, "lmdb._Database"]:
        try:
            with self._env.begin() as txn:
                existing = [key for key, _ in txn.cursor()]
        except lmdb.Error as exc:
            raise StoreError(f"{self.path}: the store is unreadable ({exc}); left untouched") from exc
        if existing and b"meta" not in existing:
            raise StoreError(f"{self.path} holds an LMDB environment that is not a Leveret store; left untouched")
        try:
            with self._env.begin(write=True) as txn:
                dbs = {name.decode(): self._env.open_db(name, txn=txn, create=not existing) for name in _DB_NAMES}
                meta = dbs["meta"]
                version = txn.get(b"format", db=meta)
                if version is None:
                    if existing:
                        raise StoreError(f"{self.path}: the store has no format marker; left untouched")
                    txn.put(b"format", _pack(FORMAT_VERSION), db=meta)
                elif _unpack(version) != FORMAT_VERSION:
                    raise StoreError(
                        f"{self.path}: store format {_unpack(version)!r} is not the supported format {FORMAT_VERSION}"
                    )
        except lmdb.Error as exc:
            raise StoreError(f"{self.path}: the store is unreadable ({exc}); left untouched") from exc
        return dbs

    def _load_cache(self) -> None:
        dbs = self._dbs
        with self._env.begin() as txn:
            # A dropped group's number may be reused after a restart: dropping
            # deleted everything filed under it in the same transaction.
            numbers = txn.cursor(db=dbs["groups"])
            self._next_gid = _GID.unpack(numbers.key())[0] + 1 if numbers.last() else 0
            log = txn.cursor(db=dbs["log"])
            for gid_key, name in txn.cursor(db=dbs["groups"]):
                (gid,) = _GID.unpack(gid_key)
                group = _Group(gid)
                hard = txn.get(gid_key, db=dbs["hard"])
                if hard is not None:
                    term, vote, commit = _unpack(hard)
                    group.hard = HardState(term, vote, commit)
                snap = txn.get(gid_key, db=dbs["snap"])
                if snap is not None:
                    group.snap_index = _SNAP_HEAD.unpack_from(snap)[0]
                # First and last entry by two seeks: the log is keyed gid ‖ index.
                if log.set_range(_LOG_KEY.pack(gid, 0)) and log.key()[:4] == gid_key:
                    group.first = _INDEX.unpack_from(log.key(), 4)[0]
                    if log.set_range(_LOG_KEY.pack(gid + 1, 0)):
                        log.prev()
                    else:
                        log.last()
                    group.last = _INDEX.unpack_from(log.key(), 4)[0]
                    assert group.last - group.first >= 0
                self._groups[name.decode("utf-8")] = group

    # -- writes ---------------------------------------------------------------

    def write(self, batch: WriteBatch, *, sync: bool = True) -> None:
        ops = batch.ops
        for op in ops:
            check_operation(op)
        with self._write_lock:
            # Checked under the lock: `close` takes it too, so a write never runs
            # on an environment closed under it.
            if self._closed:
                raise StoreError("the store is closed")
            if self._failed is not None:
                raise StoreError(f"the store is unusable since a flush failed: {self._failed}")
            self._write_locked(ops, sync)

    def _write_locked(self, ops: list[Operation], sync: bool) -> None:
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    work = _Transaction(self, txn)
                    for op in ops:
                        _APPLY[type(op)](work, op)
                break
            except lmdb.MapFullError:
                self._grow()
            except lmdb.Error as exc:
                raise StoreError(f"writing to the store in {self.path} failed: {exc}") from exc
        self._publish(work)
        if self.release_bytes is not None:
            # Newly allocated pages are read back through the map by the next
            # write (the growing edge of each B-tree), so growth counts as touched.
            pgno = int(self._env.info()["last_pgno"])
            self._moved += max(0, pgno - self._last_pgno) * _PAGE
            self._last_pgno = pgno
            if self._moved >= self.release_bytes:
                self.release_mapped_pages()
        if sync:
            try:
                self._env.sync(True)
            except lmdb.Error as exc:
                # After a failed fsync the kernel may have dropped the dirty
                # pages; nothing written since can be trusted (see PostgreSQL's
                # "fsyncgate"). Stop rather than report later writes durable.
                self._failed = exc
                raise StoreError(f"flushing the store in {self.path} failed: {exc}") from exc

    def _publish(self, work: _Transaction) -> None:
        groups = self._groups
        if any(name not in groups or group is None for name, group in work.staged.items()):
            # Readers may be iterating the dict in another thread: replace it.
            groups = dict(groups)
            for name, group in work.staged.items():
                if group is None:
                    groups.pop(name, None)
                else:
                    groups[name] = group
            self._groups = groups
        else:
            for name, group in work.staged.items():
                groups[name] = group  # type: ignore[assignment]
        self._next_gid = work.next_gid

    def _grow(self) -> None:
        size = self._env.info()["map_size"]
        with self._map_lock:
            try:
                self._env.set_mapsize(size * 2)
            except lmdb.Error as exc:
                raise StoreError(f"cannot grow the store in {self.path} beyond {size} bytes: {exc}") from exc
        self.map_growths += 1

    @property
    def map_size(self) -> int:
        return int(self._env.info()["map_size"])

    def release_mapped_pages(self) -> bool:
        """Drop this process's mapping of the file's resident pages; False where unsupported."""
        self._moved = 0
        if _madvise is None:
            return False
        with self._map_lock:
            if self._closed:
                return False
            if self._mapped is None or self._mapped_growths != self.map_growths:
                # Growing the map may have moved it.
                self._mapped = _mapped_range(self.path / "data.mdb")
                self._mapped_growths = self.map_growths
            if self._mapped is None:
                return False
            address, length = self._mapped
            if _madvise(address, length, _MADV_DONTNEED) != 0:
                return False
        self.releases += 1
        return True

    def _read(self, size: int) -> None:
        moved = self._moved = self._moved + size
        if self.release_bytes is not None and moved >= self.release_bytes:
            self.release_mapped_pages()

    # -- reads ----------------------------------------------------------------

    def hard_state(self, group: str) -> HardState | None:
        cached = self._groups.get(group)
        return None if cached is None else cached.hard

    def first_index(self, group: str) -> int:
        cached = self._groups.get(group)
        if cached is None:
            return 1
        if cached.first is not None:
            return cached.first
        return cached.snap_index + 1 if cached.snap_index is not None else 1

    def last_index(self, group: str) -> int:
        cached = self._groups.get(group)
        if cached is None:
            return 0
        if cached.last is not None:
            return cached.last
        return cached.snap_index if cached.snap_index is not None else 0

    def entries(self, group: str, lo: int, hi: int) -> list[LogEntry]:
        cached = self._groups.get(group)
        if cached is None or hi <= lo:
            return []
        gid = cached.gid
        stop = _LOG_KEY.pack(gid, min(max(hi, 0), _MAX_INDEX))
        found: list[LogEntry] = []
        index_of, unpack = _INDEX.unpack_from, _unpack
        with self._map_lock, self._env.begin(db=self._dbs["log"]) as txn:
            cur = txn.cursor()
            if not cur.set_range(_LOG_KEY.pack(gid, min(max(lo, 0), _MAX_INDEX))):
                return found
            moved = 0
            for key, value in cur.iternext():
                if key >= stop:
                    break
                moved += len(value)
                term, data = unpack(value)
                found.append(LogEntry(index_of(key, 4)[0], term, data))
        self._read(moved)
        return found

    def snapshot(self, group: str) -> Snapshot | None:
        cached = self._groups.get(group)
        if cached is None or cached.snap_index is None:
            return None
        with self._map_lock, self._env.begin(db=self._dbs["snap"], buffers=True) as txn:
            raw = txn.get(cached.prefix)
            if raw is None:
                return None
            index, term = _SNAP_HEAD.unpack_from(raw)
            return Snapshot(index, term, bytes(raw[_SNAP_HEAD.size :]))

    def groups(self) -> list[str]:
        return sorted(name for name, group in self._groups.items() if group.exists())

    def get(self, table: str, key: bytes) -> bytes | None:
        with self._map_lock, self._env.begin(db=self._dbs["kv"]) as txn:
            value = txn.get(_table_key(table, key))
        if value is not None:
            self._read(len(value) + _PAGE // 8)  # a lookup touches a leaf, not only its row
        return value

    def items(self, table: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        # Read in chunks, one short read transaction each, so that walking a table of
        # millions of rows (recovering a large backlog) holds neither all rows in memory
        # nor a read transaction across the caller's work. Each chunk is consistent; a
        # write landing between two chunks may or may not be seen.
        head = _table_key(table, b"")
        start = head + prefix
        skip = len(head)
        position = start
        after: bytes | None = None
        while True:
            chunk: list[tuple[bytes, bytes]] = []
            moved = 0
            with self._map_lock, self._env.begin(db=self._dbs["kv"]) as txn:
                cur = txn.cursor()
                if cur.set_range(position):
                    for key, value in cur.iternext():
                        if not key.startswith(start):
                            break
                        if key == after:
                            continue
                        chunk.append((key, value))
                        moved += len(key) + len(value)
                        if len(chunk) == ITEMS_CHUNK:
                            break
            self._read(moved)
            for key, value in chunk:
                yield key[skip:], value
            if len(chunk) < ITEMS_CHUNK:
                return
            position = after = chunk[-1][0]

    def body(self, body_id: bytes) -> bytes | None:
        with self._map_lock, self._env.begin(db=self._dbs["bodies"]) as txn:
            value = txn.get(body_id)
        if value is not None:
            self._read(len(value))
        return value

    def close(self) -> None:
        with self._write_lock, self._map_lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._env.close()
            finally:
                if self._on_close is not None:
                    self._on_close()
