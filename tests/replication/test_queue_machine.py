"""`QueueMachine`: entries of a replicated queue's log applied the same way on every replica."""

from __future__ import annotations

from typing import Any

from broker.amqp import spec
from broker.arguments import QueueSettings
from broker.message import Message
from broker.queue import Delivered, Enqueued
from broker.queue_machine import ID_BASE, ID_SHIFT, QueueMachine, encode_entry, enqueue_wire, load_wire
from broker.queue_snapshot import state_to_bytes


def message(body: bytes) -> Message:
    return Message("", "q", spec.BasicProperties(delivery_mode=2), body, persistent=True, id=7)


class Recorder:
    def __init__(self) -> None:
        self.entries: list[tuple[str, int, list[Any], list[list[Any]]]] = []
        self.restores = 0

    def applied(self, proposer: str, proposal: int, commands: list[Any], results: list[list[Any]]) -> None:
        self.entries.append((proposer, proposal, commands, results))

    def restored(self) -> None:
        self.restores += 1


def entries() -> list[bytes]:
    return [
        encode_entry("n1/a", 1, [enqueue_wire(message(b"one"), 1000, None, True),
                                 enqueue_wire(message(b"two"), 1000, None, True)]),
        encode_entry("n1/a", 2, [["dlv", 1001, "c1", True], ["dlv", 1001, "c1", True]]),
        encode_entry("n1/a", 3, [["ack", [1]], ["req", [2], 1002]]),
        encode_entry("n2/b", 1, [["reqall", 1003], ["touch", 1003]]),
    ]


def test_replicas_applying_the_same_entries_reach_the_same_state() -> None:
    a, b = QueueMachine("q", QueueSettings(), 0), QueueMachine("q", QueueSettings(), 0)
    for index, data in enumerate(entries(), start=1):
        a.apply(index, data)
        b.apply(index, data)
        assert state_to_bytes(a.state) == state_to_bytes(b.state)
    assert a.state.messages_ready == 1 and a.state.messages_unacknowledged == 0


def test_message_ids_come_from_the_entry_not_from_a_counter() -> None:
    m = QueueMachine("q", QueueSettings(), 0)
    rec = Recorder()
    m.listener = rec
    m.apply(5, entries()[0])
    proposer, proposal, _, results = rec.entries[0]
    assert (proposer, proposal) == ("n1/a", 1)
    ids = [e.message.id for effects in results for e in effects if isinstance(e, Enqueued)]
    assert ids == [ID_BASE | 5 << ID_SHIFT | 0, ID_BASE | 5 << ID_SHIFT | 1]
    assert [e.message.body for effects in results for e in effects if isinstance(e, Enqueued)] == [b"one", b"two"]


def test_effects_reach_the_listener_in_command_order() -> None:
    m = QueueMachine("q", QueueSettings(), 0)
    rec = Recorder()
    m.listener = rec
    for index, data in enumerate(entries()[:2], start=1):
        m.apply(index, data)
    delivered = [e for effects in rec.entries[1][3] for e in effects if isinstance(e, Delivered)]
    assert [(d.seq, d.consumer, d.message.body) for d in delivered] == [(1, "c1", b"one"), (2, "c1", b"two")]


def test_load_replaces_the_state_and_snapshots_restore_it() -> None:
    source = QueueMachine("q", QueueSettings(), 0)
    for index, data in enumerate(entries()[:1], start=1):
        source.apply(index, data)
    target = QueueMachine("q", QueueSettings(), 0)
    target.apply(1, encode_entry("n1/a", 9, [load_wire(source.state)]))
    assert state_to_bytes(target.state) == state_to_bytes(source.state)
    restored = QueueMachine("q", QueueSettings(), 0)
    rec = Recorder()
    restored.listener = rec
    restored.restore(target.snapshot())
    assert rec.restores == 1
    assert state_to_bytes(restored.state) == state_to_bytes(source.state)


def test_a_failing_listener_does_not_stop_apply() -> None:
    class Broken(Recorder):
        def applied(self, *args: Any) -> None:
            raise RuntimeError("a client went away")

    m = QueueMachine("q", QueueSettings(), 0)
    m.listener = Broken()
    m.apply(1, entries()[0])  # logged, not raised: the driver's loop goes on
    assert m.state.messages_ready == 2
