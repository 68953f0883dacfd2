"""A store that refuses writes, under a queue leader that pages: nothing breaks.

A `Node` (not started: no sockets, no Raft) with its group-commit writer over an
in-memory store wrapped to refuse writes on demand, and one durable queue with a
tiny memory window, so that persisted rows, pages and deletions all meet the fault.
The AMQP-level version on a real full disk is tests/hostile/test_disk_faults.py.
"""

from __future__ import annotations

from dataclasses import replace

import trio

from broker.alarms import DISK
from broker.amqp.spec import BasicProperties
from broker.arguments import QueueSettings
from broker.config import Settings
from broker.message import Message
from broker.node import Node
from broker.paging import MESSAGES_TABLE
from broker.queue_leader import QueueLeader
from storage.interface import StoreError, WriteBatch
from storage.memory_store import MemoryStore
from storage.writer import GroupCommitWriter

WINDOW = 20


class RefusingStore:
    """A MemoryStore whose writes fail while `refusing` (a full disk, injected)."""

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.refusing = False
        self.refused = 0

    def write(self, batch: WriteBatch, *, sync: bool = True) -> None:
        if self.refusing:
            self.refused += 1
            raise StoreError("injected: no space left on device")
        self.inner.write(batch, sync=sync)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


async def node_with_queue(nursery: trio.Nursery) -> tuple[Node, RefusingStore, QueueLeader]:
    node = Node(replace(Settings(node_name="faults@localhost"), queue_memory_window=WINDOW))
    store = RefusingStore()
    node.store = store  # type: ignore[assignment]
    node.writer = GroupCommitWriter(store)  # type: ignore[arg-type]
    node.writer.attach(node.staged)
    node.staged.on_staged = node.writer.poke
    await nursery.start(node.writer.run)
    leader = QueueLeader(node, "/", "q", True, QueueSettings(), 0)
    node.leaders[("/", "q")] = leader
    return node, store, leader


def persistent(node: Node, number: int) -> Message:
    return Message("", "q", BasicProperties(delivery_mode=2), number.to_bytes(8, "big") * 16, persistent=True,
                   id=node.next_message_id())


async def settled(outcomes: dict[int, bool], count: int) -> None:
    with trio.fail_after(10):
        while len(outcomes) < count:
            await trio.sleep(0.005)


async def test_refused_writes_keep_every_message_readable_and_acks_are_deleted_later(
        nursery: trio.Nursery) -> None:
    node, store, leader = await node_with_queue(nursery)
    outcomes: dict[int, bool] = {}

    def publish(number: int) -> None:
        leader.publish(persistent(node, number), 0, lambda ok: outcomes.__setitem__(number, ok))

    for number in range(50):
        publish(number)
    await settled(outcomes, 50)
    store.refusing = True
    # Persisted rows refused, and (beyond the window) pages naming them by id refused too.
    for number in range(50, 150):
        publish(number)
    await settled(outcomes, 150)
    assert all(outcomes[n] for n in range(50)) and not any(outcomes[n] for n in range(50, 150))
    assert leader.state.messages_paged_out > 0

    # Still refusing: every message comes out in order, paged in past the refused rows.
    got = []
    while (delivered := leader.get(0, no_ack=False)) is not None:
        got.append(delivered)
    assert [int.from_bytes(d.message.body[:8], "big") for d in got] == list(range(150))
    # The node says why: the disk alarm, and the queue's store error.
    assert node.store_failure is not None and DISK in node.alarms
    assert leader.store_error is not None
    refused = store.refused
    leader.settle(tuple(d.seq for d in got[:100]), 0)  # deletions of stored rows refused...
    with trio.fail_after(10):
        while store.refused == refused:
            await trio.sleep(0.005)
    assert len(list(store.items(MESSAGES_TABLE))) == 50

    # ...and made again once the store takes writes (found by the probe, once a second
    # has passed without a refusal).
    store.refusing = False
    with trio.fail_after(10):
        while node.store_failure is not None:
            node._probe_store()
            await trio.sleep(0.05)
    assert leader.store_error is None
    leader.settle(tuple(d.seq for d in got[100:]), 0)
    await node.wait_for_writes()
    with trio.fail_after(10):
        while list(store.items(MESSAGES_TABLE)):
            await trio.sleep(0.005)
    assert leader.state.messages == 0


async def test_a_refused_metadata_write_is_written_once_the_store_takes_writes(nursery: trio.Nursery) -> None:
    node, store, _leader = await node_with_queue(nursery)
    store.refusing = True
    batch = WriteBatch()
    batch.put("meta_test", b"k", b"v")
    written = trio.Event()

    async def write() -> None:
        await node.write_until_taken(batch)
        written.set()

    nursery.start_soon(write)
    with trio.fail_after(10):
        while node.store_failure is None:
            await trio.sleep(0.005)
    assert not written.is_set()
    store.refusing = False
    with trio.fail_after(10):
        await written.wait()
    assert store.get("meta_test", b"k") == b"v"
    assert node.store_failure is None


async def test_a_queue_with_refused_rows_paged_out_purges_and_deletes(nursery: trio.Nursery) -> None:
    node, store, leader = await node_with_queue(nursery)
    outcomes: dict[int, bool] = {}
    store.refusing = True
    for number in range(100):
        leader.publish(persistent(node, number), 0, lambda ok, number=number: outcomes.__setitem__(number, ok))
    await settled(outcomes, 100)
    assert not any(outcomes.values()) and leader.state.messages_paged_out > 0
    assert leader.purge(0) == 100
    # Refused again, paged again: deleting the queue drops those pages too.
    refused = store.refused
    for number in range(100, 200):
        leader.publish(persistent(node, number), 0, None)
    assert leader.state.messages_paged_out > 0
    await node.wait_for_writes()
    with trio.fail_after(10):
        while store.refused == refused or node.writer.statistics().batches_in_flight:
            await trio.sleep(0.005)
    assert leader.delete() == []
