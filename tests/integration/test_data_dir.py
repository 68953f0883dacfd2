"""A data directory that a running node holds, that is corrupt, or that belongs to
another node stops leveret-server at start with a clear message and a non-zero exit."""

from __future__ import annotations

import subprocess

from tests.support.node_process import NodeProcess, free_port


def _run_second(node: NodeProcess, name: str) -> subprocess.CompletedProcess:
    other = NodeProcess(name=name, data_dir=node.data_dir, port=free_port(), dist_port=free_port())
    return subprocess.run(other.command(), env=other.env(), cwd=node.data_dir.parent,
                          capture_output=True, text=True, timeout=30)


def test_directory_held_by_a_running_node_is_refused(fresh_node: NodeProcess) -> None:
    result = _run_second(fresh_node, fresh_node.name)
    assert result.returncode != 0
    assert "in use by another running node" in result.stderr
    assert f"pid {fresh_node.proc.pid}" in result.stderr
    # The running node is unharmed.
    assert fresh_node.proc.poll() is None


def test_directory_of_another_node_is_refused() -> None:
    first = NodeProcess(name="owner@localhost").start()
    first.stop()
    result = _run_second(first, "intruder@localhost")
    assert result.returncode != 0
    assert "owner@localhost" in result.stderr and "intruder@localhost" in result.stderr


def test_corrupt_directory_is_refused_and_left_untouched() -> None:
    first = NodeProcess(name="corrupt@localhost").start()
    first.stop()
    data_file = first.data_dir / "data.mdb"
    garbage = b"\x00not an lmdb file\xff" * 512
    data_file.write_bytes(garbage)
    result = _run_second(first, "corrupt@localhost")
    assert result.returncode != 0
    assert "cannot start node corrupt@localhost" in result.stderr
    assert data_file.read_bytes() == garbage
