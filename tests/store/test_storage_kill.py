"""kill -9 a node while it writes: every batch it acknowledged is there on reopen."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage.datadir import open_data_dir

REPO = Path(__file__).resolve().parents[2]

# Eight concurrent writers through the group-commit writer, each appending to
# its own log and a table; a line "writer index" is printed only after the
# batch is durable. The loop never ends on its own: the test kills it.
WRITER = """
import sys, trio
from storage.datadir import open_data_dir
from storage.interface import LogEntry, WriteBatch
from storage.writer import open_group_commit_writer

store = open_data_dir(sys.argv[1], "rabbit@victim")

async def one_writer(writer, w):
    index = 0
    while True:
        index += 1
        batch = WriteBatch()
        batch.append(f"g{w}", [LogEntry(index, 1, b"x" * (index % 700))])
        batch.put("acks", f"{w}:{index:08}".encode(), b"%d" % index)
        batch.put_body(f"{w}:{index}".encode(), b"body %d" % index)
        await writer.write(batch)
        print(w, index, flush=True)

async def main():
    async with open_group_commit_writer(store) as writer:
        async with trio.open_nursery() as nursery:
            for w in range(8):
                nursery.start_soon(one_writer, writer, w)

trio.run(main)
"""


@pytest.mark.parametrize("acks_before_kill", [1, 150, 600])
def test_acknowledged_batches_survive_sigkill(tmp_path: Path, acks_before_kill: int) -> None:
    path = tmp_path / "node"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    acked: dict[int, int] = {}
    count = 0
    deadline = time.monotonic() + 20
    try:
        while count < acks_before_kill and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            writer, index = map(int, line.split())
            assert index == acked.get(writer, 0) + 1  # each writer acks in order
            acked[writer] = index
            count += 1
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert count == acks_before_kill, "the writer process stopped or was too slow"

    store = open_data_dir(path, "rabbit@victim")
    try:
        for writer, last_acked in acked.items():
            group = f"g{writer}"
            assert store.last_index(group) >= last_acked
            got = store.entries(group, 1, last_acked + 1)
            assert [e.index for e in got] == list(range(1, last_acked + 1))
            assert all(e.data == b"x" * (e.index % 700) for e in got)
            assert store.get("acks", f"{writer}:{last_acked:08}".encode()) == b"%d" % last_acked
            assert store.body(f"{writer}:{last_acked}".encode()) == b"body %d" % last_acked
            # Whatever else got in (written, not yet acked) is whole: log and table agree.
            beyond = store.last_index(group)
            assert store.get("acks", f"{writer}:{beyond:08}".encode()) == b"%d" % beyond
    finally:
        store.close()
