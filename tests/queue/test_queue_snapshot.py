"""`broker.queue_snapshot`: a `QueueState` restored from its snapshot behaves exactly
like the state it was taken from.

The property: run random commands on a queue, snapshot it at a random point,
restore the snapshot, then apply the same remaining commands to the original and
to the restored copy. Both must return the same effects (compared by the fields of
the messages they carry, since the restored copy holds messages decoded from the
bytes) and end with the same snapshot bytes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from broker.amqp import codec
from broker.amqp.spec import BasicProperties
from broker.arguments import OVERFLOW_MODES, QueueSettings
from broker.message import Message
from broker.queue import (
    Command,
    DeadLetter,
    Deliver,
    Delivered,
    Dropped,
    Enqueue,
    Enqueued,
    Expire,
    MemoryPages,
    PagingLimits,
    PublisherRejected,
    Purge,
    Purged,
    QueueState,
    Reconfigure,
    Reject,
    Requeue,
    RequeueAll,
    Settle,
    Touch,
)
from broker.queue_snapshot import state_from_bytes, state_to_bytes


def _message_form(m: Message) -> tuple[Any, ...]:
    raw = m.raw_properties if m.raw_properties is not None else codec.encode_properties(m.properties)
    return (m.id, m.exchange, m.routing_key, bytes(raw), m.body, m.persistent, m.priority, m.expiration_ms)


def canonical(effect: Any) -> tuple[Any, ...]:
    match effect:
        case Enqueued(seq, message):
            return ("enqueued", seq, _message_form(message))
        case PublisherRejected(message):
            return ("nack", _message_form(message))
        case Delivered(seq, message, consumer, redelivered, count, ack_required, remaining):
            return ("delivered", seq, _message_form(message), consumer, redelivered, count, ack_required, remaining,
                    effect.returns)
        case DeadLetter(message, reason, queue, exchange, routing_key):
            return ("dead", _message_form(message), reason, queue, exchange, routing_key)
        case Dropped(message, reason):
            return ("dropped", _message_form(message), reason)
        case Purged(count):
            return ("purged", count)
    raise AssertionError(effect)


def observables(state: QueueState, now: int) -> tuple[Any, ...]:
    return (
        state.name,
        state.settings,
        state.statistics(),
        [(seq, _message_form(m), red) for seq, m, red in state.ready()],
        state.unacked_seqs(),
        [_message_form(m) for m in state.unacked_messages(state.unacked_seqs())],
        state.expires_at,
        state.next_expiry(now),
    )


# --- generators ------------------------------------------------------------------------

settings_strategy = st.builds(
    QueueSettings,
    message_ttl_ms=st.sampled_from([None, None, 0, 5, 20]),
    expires_ms=st.sampled_from([None, 1000]),
    max_length=st.sampled_from([None, None, 0, 1, 3]),
    max_length_bytes=st.sampled_from([None, None, 8, 20]),
    overflow=st.sampled_from(OVERFLOW_MODES),
    dead_letter_exchange=st.sampled_from([None, "dlx"]),
    dead_letter_routing_key=st.sampled_from([None, "rk"]),
    max_priority=st.sampled_from([0, 0, 3]),
    queue_type=st.sampled_from(["classic", "quorum", "quorum"]),
    delivery_limit=st.sampled_from([None, 0, 1, 2]),
)

properties_strategy = st.builds(
    BasicProperties,
    content_type=st.sampled_from([None, "text/plain"]),
    headers=st.sampled_from([None, {"a": 1}, {"x-death": [{"count": 1, "reason": "expired"}], "b": b"\x00"}]),
    delivery_mode=st.sampled_from([None, 1, 2]),
    priority=st.sampled_from([None, 0, 2, 7]),
    message_id=st.sampled_from([None, "id-1"]),
)


@st.composite
def messages(draw: st.DrawFn, message_id: int) -> Message:
    props = draw(properties_strategy)
    expiration = draw(st.sampled_from([None, None, 0, 3, 10]))
    return Message(
        exchange=draw(st.sampled_from(["", "x"])),
        routing_key=draw(st.sampled_from(["k", "q.é"])),
        properties=props,
        body=draw(st.binary(max_size=6)),
        persistent=props.delivery_mode == 2,
        priority=props.priority or 0,
        expiration_ms=expiration,
        raw_properties=codec.encode_properties(props) if draw(st.booleans()) else None,
        id=message_id,
    )


class Script:
    """Draws the next command from what the queue holds (both copies hold the same)."""

    def __init__(self, data: st.DataObject, s: QueueSettings) -> None:
        self.data = data
        self.settings = s
        self.now = 0
        self.ids = 0

    def next(self, state: QueueState) -> Command:
        draw = self.data.draw
        self.now += draw(st.sampled_from([0, 0, 1, 4, 12]))
        unacked = state.unacked_seqs()
        kinds = ["enqueue", "enqueue", "enqueue", "deliver", "deliver", "expire", "touch", "purge", "reconfigure",
                 "requeue_all"]
        if unacked:
            kinds += ["settle", "requeue", "requeue", "reject"]
        kind = draw(st.sampled_from(kinds))
        if kind == "enqueue":
            self.ids += 1
            return Enqueue(draw(messages(self.ids)), self.now, draw(st.sampled_from([None, "c1"])),
                           draw(st.booleans()), draw(st.booleans()))
        if kind == "deliver":
            return Deliver(self.now, draw(st.sampled_from([None, "c2", "c3"])), draw(st.booleans()))
        if kind in ("settle", "requeue", "reject"):
            seqs = tuple(draw(st.lists(st.sampled_from(unacked), min_size=1, unique=True)))
            return {"settle": Settle(seqs), "requeue": Requeue(seqs, self.now), "reject": Reject(seqs)}[kind]
        if kind == "expire":
            return Expire(self.now)
        if kind == "touch":
            return Touch(self.now)
        if kind == "purge":
            return Purge()
        if kind == "requeue_all":
            return RequeueAll(self.now)
        self.settings = dataclasses.replace(
            self.settings,
            max_length=draw(st.sampled_from([None, 0, 2])),
            message_ttl_ms=draw(st.sampled_from([None, 4])),
            delivery_limit=draw(st.sampled_from([None, 0, 3])),
            dead_letter_exchange=draw(st.sampled_from([None, "dlx2"])),
        )
        return Reconfigure(self.settings, self.now)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(s=settings_strategy, data=st.data(), before=st.integers(0, 30), after=st.integers(0, 30))
def test_restored_state_behaves_as_the_original(s: QueueSettings, data: st.DataObject, before: int,
                                                after: int) -> None:
    original = QueueState("q", s, created_ms=data.draw(st.sampled_from([0, 5])))
    script = Script(data, s)
    for _ in range(before):
        original.apply(script.next(original))

    snapshot = state_to_bytes(original)
    restored = state_from_bytes(snapshot)
    assert state_to_bytes(restored) == snapshot
    assert observables(restored, script.now) == observables(original, script.now)

    for _ in range(after):
        cmd = script.next(original)
        assert [canonical(e) for e in restored.apply(cmd)] == [canonical(e) for e in original.apply(cmd)]
        assert observables(restored, script.now) == observables(original, script.now)
    assert state_to_bytes(restored) == state_to_bytes(original)


def _message(i: int, priority: int = 0, **headers: Any) -> Message:
    props = BasicProperties(headers=headers or None, priority=priority or None)
    return Message("", "q", props, b"body%d" % i, priority=priority, id=i)


def _filled(messages_: list[Message]) -> QueueState:
    state = QueueState("q", QueueSettings(max_priority=3, message_ttl_ms=100, queue_type="quorum", delivery_limit=4))
    for m in messages_:
        state.apply(Enqueue(m, 10))
    state.apply(Deliver(20, "c"))
    state.apply(Deliver(20, "c"))
    state.apply(Deliver(20, None, False))
    state.apply(Requeue((1,), 30))
    state.apply(Deliver(40, "c"))
    return state


def test_equal_states_give_equal_bytes() -> None:
    # Two queues fed the same publishes as distinct but equal Message objects.
    a = _filled([_message(i, priority=i % 4, h=i) for i in range(1, 8)])
    b = _filled([_message(i, priority=i % 4, h=i) for i in range(1, 8)])
    assert state_to_bytes(a) == state_to_bytes(b)
    # Anything that differs shows: one more delivery.
    b.apply(Deliver(50, "c"))
    assert state_to_bytes(a) != state_to_bytes(b)


def test_snapshot_keeps_ids_counts_expiry_and_the_expires_clock() -> None:
    state = QueueState("q.é", QueueSettings(message_ttl_ms=100, expires_ms=5000), created_ms=7)
    state.apply(Enqueue(_message(41), 10))
    state.apply(Enqueue(_message(42), 11, redelivered=True))
    state.apply(Deliver(12, "c"))
    state.apply(Requeue((1,), 13))
    state.apply(Deliver(14, None))  # basic.get: a use of the queue for x-expires
    restored = state_from_bytes(state_to_bytes(state))
    assert restored.name == "q.é" and restored.expires_at == 14 + 5000
    assert [(seq, m.id, red) for seq, m, red in restored.ready()] == [(2, 42, True)]
    assert restored.unacked_seqs() == [1]
    (d,) = restored.apply(Deliver(15, "c"))
    assert (d.seq, d.message.id, d.delivery_count, d.returns) == (2, 42, 2, 1)
    assert restored.next_expiry(15) is None
    restored.apply(Requeue((2,), 16))
    assert restored.next_expiry(16) == 11 + 100


def test_a_state_with_paged_out_messages_is_refused() -> None:
    pages = MemoryPages()
    state = QueueState("paged", QueueSettings(), paging=PagingLimits.window(4, 1 << 20), pages=pages)
    for i in range(1, 30):
        state.apply(Enqueue(_message(i), 0))
    assert state.messages_paged_out > 0
    with pytest.raises(ValueError, match="queue 'paged' has [0-9]+ messages paged out"):
        state_to_bytes(state)


def test_a_paging_state_with_everything_in_memory_is_taken() -> None:
    state = QueueState("q", QueueSettings(), paging=PagingLimits.window(100, 1 << 20), pages=MemoryPages())
    state.apply(Enqueue(_message(1), 0))
    restored = state_from_bytes(state_to_bytes(state))
    assert [m.id for _, m, _ in restored.ready()] == [1]


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x93\x01\x02\x03", state_to_bytes(QueueState("q", QueueSettings()))[:-3]])
def test_other_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        state_from_bytes(data)
