"""Opening a node's data directory: lock it, check whose it is, refuse damage.

A data directory holds the node's LMDB environment (`data.mdb`, `lock.mdb`)
and `leveret.lock`, which a running node holds with an exclusive `flock` for
its whole life. flock rather than a pid file: the kernel drops the lock when
the process dies however it dies (kill -9 included), so there is never a
stale lock to clean up by hand, and the pid written in the file is only
there to name the culprit in the error message.

Every refusal raises `StoreError` with a sentence meant for an operator; the
server prints it and exits non-zero. Nothing here ever rewrites or deletes an
existing store: a directory that is in use, belongs to another node, or holds
an unreadable environment is left exactly as it was.
"""

from __future__ import annotations

import fcntl
import os
import struct
import sys
from pathlib import Path

import lmdb

from storage.interface import StoreError, WriteBatch
from storage.lmdb_store import DEFAULT_MAP_SIZE, LmdbStore

LOCK_FILE = "leveret.lock"
DATA_FILE = "data.mdb"
NODE_TABLE = "node"
NODE_NAME_KEY = b"name"


def open_data_dir(
    path: str | os.PathLike[str],
    node_name: str,
    *,
    map_size: int = DEFAULT_MAP_SIZE,
    verify: bool = False,
) -> LmdbStore:
    """The store of node `node_name` in directory `path`, created on first use.

    `verify` first walks the whole data file with LMDB's offline verifier
    (linear in its size; meant for a start after an unclean shutdown or an
    operator's check, not every start).
    """
    if not node_name:
        raise StoreError("a node name is required to open a data directory")
    directory = Path(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create data directory {directory}: {exc.strerror or exc}") from exc
    if not directory.is_dir():
        raise StoreError(f"data directory {directory} is not a directory")

    lock_fd = _lock(directory)
    try:
        data_file = directory / DATA_FILE
        try:
            if data_file.exists() and data_file.stat().st_size > 0:
                _check_length(data_file)
                if verify:
                    _verify(directory)
        except OSError as exc:
            raise StoreError(f"cannot read {data_file}: {exc.strerror or exc}") from exc
        try:
            store = LmdbStore(directory, map_size=map_size, on_close=lambda: os.close(lock_fd))
        except StoreError as exc:
            raise StoreError(
                f"data directory {directory} holds a store that cannot be opened ({exc.__cause__ or exc}); "
                "nothing was changed: move the directory aside or restore it from a backup"
            ) from exc
    except BaseException:
        os.close(lock_fd)
        raise

    try:
        _claim(store, directory, node_name)
    except BaseException:
        store.close()
        raise
    return store


def _lock(directory: Path) -> int:
    lock_path = directory / LOCK_FILE
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StoreError(f"cannot open lock file {lock_path}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_pid(fd)
        os.close(fd)
        who = f"pid {holder}" if holder else "pid unknown"
        raise StoreError(f"data directory {directory} is in use by another running node ({who})") from None
    except OSError as exc:
        os.close(fd)
        raise StoreError(f"cannot lock data directory {directory}: {exc.strerror or exc}") from exc
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:
        os.close(fd)
        raise StoreError(f"cannot write lock file {lock_path}: {exc.strerror or exc}") from exc
    return fd


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


_META_MAGIC = 0xBEEFC0DE
_PAGE_HEADER = 16  # LMDB 0.9 on 64-bit hosts
_U32 = struct.Struct("<I" if sys.byteorder == "little" else ">I")
_U64 = struct.Struct("<Q" if sys.byteorder == "little" else ">Q")


def _check_length(data_file: Path) -> None:
    """Refuse a data file shorter than its committed meta page says it is.

    LMDB maps the file and trusts that length; a truncated file (a bad copy, a
    full disk during a restore) would kill the process with SIGBUS on first
    touch instead of an error. Reading the two meta pages costs two reads.
    """
    if lmdb.version()[:2] != (0, 9):
        return  # other on-disk layouts: leave the checking to LMDB
    size = data_file.stat().st_size
    with open(data_file, "rb") as f:
        head = f.read(_PAGE_HEADER + 200)
        if len(head) < _PAGE_HEADER + 160 or _U32.unpack_from(head, _PAGE_HEADER)[0] != _META_MAGIC:
            return  # not LMDB at all: LMDB says so itself (MDB_INVALID)
        page_size = _U32.unpack_from(head, _PAGE_HEADER + 24)[0]
        f.seek(page_size)
        second = f.read(_PAGE_HEADER + 200)
    best: tuple[int, int] | None = None  # (txnid, last page)
    for meta in (head, second):
        if len(meta) >= _PAGE_HEADER + 160 and _U32.unpack_from(meta, _PAGE_HEADER)[0] == _META_MAGIC:
            last_page = _U64.unpack_from(meta, _PAGE_HEADER + 24 + 96)[0]
            txnid = _U64.unpack_from(meta, _PAGE_HEADER + 24 + 104)[0]
            if best is None or txnid > best[0]:
                best = (txnid, last_page)
    assert best is not None
    needed = (best[1] + 1) * page_size
    if size < needed:
        raise StoreError(
            f"data directory {data_file.parent} holds a truncated store ({DATA_FILE} is {size} bytes, "
            f"its last commit needs {needed}); nothing was changed: move the directory aside or "
            "restore it from a backup"
        )


def _verify(directory: Path) -> None:
    from lmdb import verify as lmdb_verify

    try:
        problems = lmdb_verify.verify(str(directory))
    except (lmdb_verify.VerifyError, OSError) as exc:
        problems = [str(exc)]
    if problems:
        shown = "; ".join(problems[:3])
        raise StoreError(
            f"data directory {directory} holds a damaged store ({shown}); "
            "nothing was changed: move the directory aside or restore it from a backup"
        )


def _claim(store: LmdbStore, directory: Path, node_name: str) -> None:
    owner = store.get(NODE_TABLE, NODE_NAME_KEY)
    if owner is None:
        batch = WriteBatch()
        batch.put(NODE_TABLE, NODE_NAME_KEY, node_name.encode("utf-8"))
        store.write(batch, sync=True)
    elif owner != node_name.encode("utf-8"):
        raise StoreError(
            f"data directory {directory} belongs to node {owner.decode('utf-8', 'replace')!r}, "
            f"not {node_name!r}; refusing to use it"
        )


def wipe_store_files(path: str | os.PathLike[str]) -> None:
    """Remove the LMDB environment of a data directory, which its node has closed: the
    operator's `reset` returns the node to its virgin state. The lock file stays (its
    node is still running and takes the lock again on reopening)."""
    directory = Path(path)
    for name in (DATA_FILE, "lock.mdb"):
        try:
            (directory / name).unlink()
        except FileNotFoundError:
            pass
