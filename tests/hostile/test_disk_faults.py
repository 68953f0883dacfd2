"""A full disk never takes a node down, and nothing confirmed is lost through it.

The node's data directory lives on a small tmpfs the test mounts itself; a ballast
file leaves a few megabytes free, and `disk_free_limit: 0` keeps the free-space alarm
out of the way so that the store really runs out of room. With a tiny memory window
the queue pages out (persistent messages by id) while the store refuses writes. Then:

1. publish persistent messages with confirms until the store refuses them: the
   refused ones are nacked, and the disk alarm blocks the publisher;
2. still full, consume everything (paging in past the refused messages, which used to
   kill the node with "paged persistent message ... is not in the store") and ack it;
3. free the disk (the ballast goes): the alarm clears, and new publishes are confirmed;
4. restart: every confirmed message not yet acknowledged is there, no acknowledged one
   comes back, and nothing appears that was never published.

The node must stay up throughout and stop cleanly.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from broker.amqp import spec
from broker.amqp.codec import MethodFrame, encode_content, encode_method, encode_properties
from cli.perf.client import Connection
from tests.ctl.support import ctl
from tests.integration.test_backlog import drain
from tests.support.node_process import NodeProcess, scratch_dir

FILESYSTEM_BYTES = 32 << 20
ROOM_BYTES = 3 << 20  # left free beside the ballast: the store fills it quickly
BODY = 1024
FIRST_COUNT = 12_000  # ~12 MB: far more than the room left
SECOND_COUNT = 3_000
SECOND_BASE = 1_000_000  # message numbers of the second round
QUEUE = "disk_q"
_INDEX = struct.Struct(">Q")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@contextmanager
def small_filesystem(size: int) -> Iterator[Path]:
    """A tmpfs of `size` bytes mounted for the test, unmounted and removed afterwards."""
    mount_point = Path(tempfile.mkdtemp(prefix="leveret-small-fs-"))
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)], check=True)
        try:
            yield mount_point
        finally:
            subprocess.run(["umount", str(mount_point)], check=True)
    finally:
        mount_point.rmdir()


def fill_with_ballast(mount_point: Path, room: int) -> Path:
    ballast = mount_point / "ballast"
    size = shutil.disk_usage(mount_point).free - room
    with open(ballast, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, size)
    return ballast


def status(node: NodeProcess) -> dict:
    result = ctl(node, "status", "--formatter", "json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def queue_state(node: NodeProcess) -> str:
    result = ctl(node, "list_queues", "--formatter", "json", "name", "state")
    assert result.code == 0, result.err
    return next(row["state"] for row in json.loads(result.out) if row["name"] == QUEUE)


class ConfirmedPublisher:
    """Publishes numbered persistent messages with confirms; stops at the first nack if asked."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.tags: dict[int, int] = {}  # delivery tag -> message number
        self.pending: set[int] = set()
        self.confirmed: set[int] = set()
        self.nacked: set[int] = set()

    @classmethod
    async def open(cls, url: str) -> "ConfirmedPublisher":
        conn = await Connection.open(url)
        await conn.open_channel(1)
        await conn.call(1, spec.QueueDeclare(queue=QUEUE, durable=True), spec.QueueDeclareOk)
        await conn.call(1, spec.ConfirmSelect(), spec.ConfirmSelectOk)
        return cls(conn)

    def _settle(self, tag: int, multiple: bool, ok: bool) -> None:
        tags = [t for t in self.pending if t <= tag] if multiple else [tag]
        for t in tags:
            self.pending.discard(t)
            (self.confirmed if ok else self.nacked).add(self.tags[t])

    async def _read(self) -> None:
        while True:
            for frame in await self.conn.receive():
                if type(frame) is not MethodFrame:
                    continue
                method = frame.method
                if type(method) is spec.BasicAck:
                    self._settle(method.delivery_tag, method.multiple, True)
                elif type(method) is spec.BasicNack:
                    self._settle(method.delivery_tag, method.multiple, False)
                else:
                    self.conn.check(frame)

    async def publish(self, numbers: range, *, stop_at_nack: bool) -> None:
        props = encode_properties(spec.BasicProperties(delivery_mode=2))
        method = encode_method(1, spec.BasicPublish(0, "", QUEUE, False, False))
        filler = b"." * (BODY - _INDEX.size)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read)
            for first in range(numbers.start, numbers.stop, 100):
                while len(self.pending) > 1_000 and not (stop_at_nack and self.nacked):
                    await trio.sleep(0.005)
                if stop_at_nack and self.nacked:
                    break
                chunk = range(first, min(first + 100, numbers.stop))
                for number in chunk:
                    tag = len(self.tags) + 1
                    self.tags[tag] = number
                    self.pending.add(tag)
                await self.conn.send(b"".join(
                    method + encode_content(1, 60, props, _INDEX.pack(n) + filler, self.conn.frame_max)
                    for n in chunk))
            # Outcomes of what was sent (the disk alarm may leave the last sends unread).
            with trio.move_on_after(5 if stop_at_nack else 30):
                while self.pending:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()


async def consume_all(url: str, *, expect_at_least: int) -> list[int]:
    """Consume (with acks) every message the queue has; their numbers."""
    conn = await Connection.open(url)
    try:
        await conn.open_channel(1)
        ok = await conn.call(1, spec.QueueDeclare(queue=QUEUE, durable=True), spec.QueueDeclareOk)
    finally:
        await conn.close()
    assert ok.message_count >= expect_at_least
    numbers, _redelivered = await drain(url, QUEUE, ok.message_count, durable=True)
    return numbers


async def test_a_full_disk_loses_nothing_confirmed_and_never_stops_the_node() -> None:
    with small_filesystem(FILESYSTEM_BYTES) as mount_point:
        node = NodeProcess(name="diskfull@localhost", data_dir=mount_point / "data",
                           log_path=scratch_dir() / "diskfull.log",
                           config={"queue_memory_window": 200, "disk_free_limit": 0})
        with node.start():
            ballast = fill_with_ballast(mount_point, ROOM_BYTES)

            # 1. The store fills: refused publishes are nacked, the disk alarm is raised.
            publisher = await ConfirmedPublisher.open(node.url)
            await publisher.publish(range(FIRST_COUNT), stop_at_nack=True)
            assert publisher.nacked, "the store never ran out of room"
            assert publisher.confirmed, "nothing was confirmed before the store filled"
            assert not publisher.confirmed & publisher.nacked
            await trio.aclose_forcefully(publisher.conn.stream)

            # 2. Still full: drain the queue, paging in past the refused messages, and ack.
            drained = await consume_all(node.url, expect_at_least=len(publisher.confirmed))
            assert node.proc is not None and node.proc.poll() is None
            assert publisher.confirmed <= set(drained)
            assert set(drained) <= set(range(FIRST_COUNT))
            # The log says what happened, and the disk alarm was raised for it.
            assert "the store refused a write" in node.log_text()
            assert "disk resource limit alarm set" in node.log_text()

            # 3. Room again: the alarm clears, publishes are confirmed.
            ballast.unlink()
            with trio.fail_after(30):
                while status(node)["alarms"]:
                    await trio.sleep(0.2)
            assert queue_state(node) == "running"
            second = await ConfirmedPublisher.open(node.url)
            await second.publish(range(SECOND_BASE, SECOND_BASE + SECOND_COUNT), stop_at_nack=False)
            assert second.confirmed == set(range(SECOND_BASE, SECOND_BASE + SECOND_COUNT)), (
                f"{len(second.nacked)} nacked, {len(second.pending)} unsettled after the disk had room")
            await second.conn.close()
            assert node.stop() == 0

        # 4. Restart: the second round is all there, nothing acknowledged comes back.
        with node.start():
            after = await consume_all(node.url, expect_at_least=SECOND_COUNT)
            assert len(after) == len(set(after))
            assert set(range(SECOND_BASE, SECOND_BASE + SECOND_COUNT)) <= set(after)
            first_round_back = {n for n in after if n < SECOND_BASE}
            assert not first_round_back & set(drained), "acknowledged messages came back"
            assert first_round_back <= set(range(FIRST_COUNT))
            assert node.stop() == 0
