"""Opening a node's data directory: exclusive lock, node identity, refusing damaged stores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from storage.datadir import LOCK_FILE, open_data_dir
from storage.interface import LogEntry, StoreError, WriteBatch

REPO = Path(__file__).resolve().parents[2]

HOLD_LOCK = """
import sys
from storage.datadir import open_data_dir
store = open_data_dir(sys.argv[1], "rabbit@holder")
print("open", flush=True)
sys.stdin.readline()
store.close()
print("closed", flush=True)
sys.stdin.readline()
"""


def spawn_holder(path: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "open"
    return proc


def test_second_node_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data" / "x"
    holder = spawn_holder(path)
    try:
        with pytest.raises(StoreError) as refused:
            open_data_dir(path, "rabbit@holder")
        assert str(refused.value) == f"data directory {path} is in use by another running node (pid {holder.pid})"
        # The holder closing its store releases the directory.
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "closed"
        open_data_dir(path, "rabbit@holder").close()
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_node_leaves_no_stale_lock(tmp_path: Path) -> None:
    path = tmp_path / "x"
    holder = spawn_holder(path)
    holder.kill()  # SIGKILL: no cleanup runs in the holder
    holder.wait()
    assert (path / LOCK_FILE).exists()
    store = open_data_dir(path, "rabbit@holder")
    assert store.get("node", b"name") == b"rabbit@holder"
    store.close()


def test_node_name_is_recorded_and_enforced(tmp_path: Path) -> None:
    path = tmp_path / "x"
    store = open_data_dir(path, "rabbit@a")
    batch = WriteBatch()
    batch.append("meta", [LogEntry(1, 1, b"declare")])
    store.write(batch)
    store.close()
    with pytest.raises(StoreError) as refused:
        open_data_dir(path, "rabbit@b")
    assert str(refused.value) == f"data directory {path} belongs to node 'rabbit@a', not 'rabbit@b'; refusing to use it"
    # The refusal released the lock and changed nothing.
    again = open_data_dir(path, "rabbit@a")
    assert again.last_index("meta") == 1
    again.close()


def test_same_process_cannot_open_twice(tmp_path: Path) -> None:
    store = open_data_dir(tmp_path / "x", "rabbit@a")
    try:
        with pytest.raises(StoreError, match=rf"in use by another running node \(pid {os.getpid()}\)"):
            open_data_dir(tmp_path / "x", "rabbit@a")
    finally:
        store.close()


def make_store(path: Path) -> None:
    store = open_data_dir(path, "rabbit@a")
    batch = WriteBatch()
    batch.append("g", [LogEntry(i, 1, b"x" * 500) for i in range(1, 2000)])
    store.write(batch)
    store.close()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "scribbled", "meta-pages"])
def test_damaged_store_is_refused_and_left_untouched(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "x"
    data_file = path / "data.mdb"
    if damage == "garbage":
        path.mkdir()
        data_file.write_bytes(os.urandom(3 * 4096))
    else:
        make_store(path)
        data = bytearray(data_file.read_bytes())
        if damage == "truncated":
            data = data[: len(data) // 3]
        elif damage == "scribbled":
            # Zeroed pages where the B-tree lives: LMDB finds pages of the wrong type.
            data[2 * 4096 : 40 * 4096] = bytes(38 * 4096)
        else:
            data[: 2 * 4096] = os.urandom(2 * 4096)
        data_file.write_bytes(bytes(data))
    before = data_file.read_bytes()
    with pytest.raises(StoreError, match=f"data directory {path} holds a"):
        open_data_dir(path, "rabbit@a")
    assert data_file.read_bytes() == before
    # The refusal released the directory lock.
    with pytest.raises(StoreError, match="holds a"):
        open_data_dir(path, "rabbit@a")


def test_full_verification_passes_a_healthy_store(tmp_path: Path) -> None:
    make_store(tmp_path / "x")
    store = open_data_dir(tmp_path / "x", "rabbit@a", verify=True)
    assert store.last_index("g") == 1999
    store.close()


def test_a_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StoreError, match="cannot create data directory"):
        open_data_dir(tmp_path / "file", "rabbit@a")


def test_an_unreadable_data_file_is_refused_and_the_lock_released(tmp_path: Path) -> None:
    path = tmp_path / "x"
    (path / "data.mdb").mkdir(parents=True)  # reading it fails even for root
    with pytest.raises(StoreError, match=f"cannot read {path / 'data.mdb'}"):
        open_data_dir(path, "rabbit@a")
    (path / "data.mdb").rmdir()
    open_data_dir(path, "rabbit@a").close()
