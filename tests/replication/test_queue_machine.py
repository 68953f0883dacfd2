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


def _proposals() -> list[tuple[str, int, list[Any], list[Message | None]]]:
    """What a leader's shell proposes: commands, and the message object each enqueue carries
    (one with TTL, priority, headers and a body that is not `bytes`)."""
    plain = message(b"one")
    rich = Message("amq.direct", "rk", spec.BasicProperties(delivery_mode=1, priority=3, headers={"h": [1, "x"]},
                                                          expiration="5000"),
                   bytearray(b"two"), persistent=False, priority=3, expiration_ms=5000, id=99)  # type: ignore[arg-type]
    return [
        ("n1/a", 1, [enqueue_wire(plain, 1000, "c1", True), ["touch", 1000], enqueue_wire(rich, 1000, None, False)],
         [plain, None, rich]),
        ("n1/a", 2, [["ack", [1]], ["dlv", 1001, "c1", True]], [None, None]),
        ("n1/a", 3, [["cfg", QueueSettings(max_length=5).to_wire(), 1002], ["exp", 1002]], [None, None]),
    ]


def test_the_leader_applying_its_own_proposals_reaches_the_followers_state() -> None:
    leader, follower = QueueMachine("q", QueueSettings(), 0), QueueMachine("q", QueueSettings(), 0)
    seen: dict[str, Recorder] = {"leader": Recorder(), "follower": Recorder()}
    leader.listener, follower.listener = seen["leader"], seen["follower"]
    for index, (proposer, proposal, commands, messages) in enumerate(_proposals(), start=1):
        data = encode_entry(proposer, proposal, commands)
        leader.proposed(data, proposer, proposal, commands, messages)
        leader.apply(index, bytes(data))  # the driver hands apply a copy of the entry's bytes
        follower.apply(index, data)
        assert state_to_bytes(leader.state) == state_to_bytes(follower.state)
    assert not leader._own  # every kept proposal was used once
    for (_, _, _, ours), (_, _, _, theirs) in zip(seen["leader"].entries, seen["follower"].entries):
        assert [[type(e) for e in effects] for effects in ours] == [[type(e) for e in effects] for effects in theirs]
    enqueued = [(e.message, f.message) for ours, theirs in zip(seen["leader"].entries, seen["follower"].entries)
                for a, b in zip(ours[3], theirs[3]) for e, f in zip(a, b) if isinstance(e, Enqueued)]
    assert len(enqueued) == 2
    for mine, decoded in enqueued:
        assert mine.id == decoded.id and type(mine.body) is bytes
        assert (mine.exchange, mine.routing_key, mine.body, mine.persistent, mine.priority, mine.expiration_ms,
                mine.raw_properties, mine.properties) == (decoded.exchange, decoded.routing_key, decoded.body,
                                                          decoded.persistent, decoded.priority, decoded.expiration_ms,
                                                          decoded.raw_properties, decoded.properties)
    # The publisher's message keeps its own id (it may sit in other queues under it).
    assert _proposals()[0][3][0].id == 7  # type: ignore[union-attr]


def test_a_forgotten_proposal_is_decoded_like_any_entry() -> None:
    m = QueueMachine("q", QueueSettings(), 0)
    proposer, proposal, commands, messages = _proposals()[0]
    data = encode_entry(proposer, proposal, commands)
    m.proposed(data, proposer, proposal, commands, messages)
    m.forget(data)
    rec = Recorder()
    m.listener = rec
    m.apply(1, data)
    enqueued = [e.message for effects in rec.entries[0][3] for e in effects if isinstance(e, Enqueued)]
    assert [msg.body for msg in enqueued] == [b"one", b"two"] and all(msg is not messages[0] for msg in enqueued)
