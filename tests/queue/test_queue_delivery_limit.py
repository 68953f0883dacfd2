"""Quorum queues: returns are counted, `x-delivery-limit` dead-letters a message returned
too often (reason delivery_limit), and redeliveries carry `x-delivery-count`.

The behaviour was read off RabbitMQ 3.10.8 (scripts/rabbitmq-ref, pika): with
x-delivery-limit 2 a rejected-with-requeue message is fetched with
x-delivery-count 0, 1, 2 and the third reject dead-letters it; basic.get always
carries the header, consumer deliveries only once the count is above 0; a
channel closed with the message unacked and basic.recover each count as a
return; -1 and 0 both dead-letter at the first return, a non-integer limit never;
a policy or operator policy of 1 beats an argument of 3; the dead-lettered copy
has no x-delivery-count.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, strategies as st

from broker.amqp.spec import BasicProperties
from broker.arguments import QueueSettings, check_declare_arguments
from broker.config import Settings
from broker.message import Message
from broker.node import Node
from broker.queue import (
    DeadLetter,
    Deliver,
    Delivered,
    Dropped,
    Enqueue,
    QueueState,
    Reconfigure,
    Requeue,
    RequeueAll,
)
from broker.queue_leader import ConsumerRef, QueueLeader, with_delivery_count

QUORUM = QueueSettings(queue_type="quorum", delivery_limit=2, dead_letter_exchange="dlx")


def _message(i: int = 1, headers: dict[str, Any] | None = None) -> Message:
    return Message("", "q", BasicProperties(headers=headers), b"body", id=i)


def _deliver(state: QueueState, consumer: str | None = "c") -> Delivered:
    (d,) = [e for e in state.apply(Deliver(0, consumer)) if isinstance(e, Delivered)]
    return d


# --- the state: counting and the limit --------------------------------------------------


def test_limit_2_allows_two_returns_and_dead_letters_at_the_third() -> None:
    state = QueueState("q", QUORUM)
    state.apply(Enqueue(_message(), 0))
    returns = []
    for _ in range(2):
        d = _deliver(state)
        returns.append((d.returns, d.redelivered))
        assert state.apply(Requeue((d.seq,), 0)) == []
    d = _deliver(state)
    returns.append((d.returns, d.redelivered))
    (dead,) = state.apply(Requeue((d.seq,), 0))
    assert returns == [(0, False), (1, True), (2, True)]
    assert isinstance(dead, DeadLetter) and (dead.reason, dead.exchange, dead.queue_name) == ("delivery_limit", "dlx", "q")
    assert dead.message.id == 1 and state.messages == 0


def test_without_a_dead_letter_exchange_the_message_is_dropped() -> None:
    state = QueueState("q", QueueSettings(queue_type="quorum", delivery_limit=0))
    state.apply(Enqueue(_message(), 0))
    d = _deliver(state)
    (dropped,) = state.apply(Requeue((d.seq,), 0))
    assert isinstance(dropped, Dropped) and dropped.reason == "delivery_limit" and state.messages == 0


@pytest.mark.parametrize("limit", [-1, 0])
def test_limit_0_or_below_dead_letters_at_the_first_return(limit: int) -> None:
    state = QueueState("q", replace(QUORUM, delivery_limit=limit))
    state.apply(Enqueue(_message(), 0))
    (dead,) = state.apply(Requeue((_deliver(state).seq,), 0))
    assert isinstance(dead, DeadLetter) and dead.reason == "delivery_limit"


def test_without_a_limit_a_quorum_queue_counts_on() -> None:
    state = QueueState("q", QueueSettings(queue_type="quorum"))
    state.apply(Enqueue(_message(), 0))
    seen = []
    for _ in range(5):
        d = _deliver(state)
        seen.append(d.returns)
        assert state.apply(Requeue((d.seq,), 0)) == []
    assert seen == [0, 1, 2, 3, 4]


def test_classic_queues_ignore_a_delivery_limit() -> None:
    state = QueueState("q", QueueSettings(queue_type="classic", delivery_limit=0, dead_letter_exchange="dlx"))
    state.apply(Enqueue(_message(), 0))
    for _ in range(4):
        assert state.apply(Requeue((_deliver(state).seq,), 0)) == []
    assert state.messages_ready == 1


def test_failover_requeue_counts_and_dead_letters_in_seq_order() -> None:
    state = QueueState("q", replace(QUORUM, delivery_limit=0))
    for i in (1, 2, 3):
        state.apply(Enqueue(_message(i), 0))
    # Message 1 is returned once while no limit applies; then the limit is 1.
    first = _deliver(state)
    state.apply(Reconfigure(replace(QUORUM, delivery_limit=None), 0))
    state.apply(Requeue((first.seq,), 0))  # returned once, no limit then
    state.apply(Reconfigure(replace(QUORUM, delivery_limit=1), 0))
    seqs = [_deliver(state).seq for _ in range(3)]
    assert seqs == [1, 2, 3]
    effects = state.apply(RequeueAll(0))
    # Message 1 reaches two returns (over the limit of 1); 2 and 3 one each.
    assert [(type(e).__name__, e.message.id) for e in effects] == [("DeadLetter", 1)]
    assert [seq for seq, _, _ in state.ready()] == [2, 3]
    third = _deliver(state)
    assert (third.seq, third.returns) == (2, 1)


def test_a_recovered_message_counts_as_returned_once() -> None:
    # Recovery flags a message redelivered ("may have been delivered before"): the count agrees.
    state = QueueState("q", QUORUM)
    state.apply(Enqueue(_message(), 0, redelivered=True))
    d = _deliver(state)
    assert (d.redelivered, d.returns) == (True, 1)


def test_the_dispatch_fast_lane_reports_the_count() -> None:
    state = QueueState("q", QUORUM)
    state.apply(Enqueue(_message(1), 0))
    state.apply(Enqueue(_message(2), 0))
    d = _deliver(state)
    state.apply(Requeue((d.seq,), 0))
    taken = state.deliver_ready(0, "c", True)
    assert taken is not None and taken[0] == 1 and taken[2:] == (True, 2)


# --- settings -----------------------------------------------------------------------------


def test_argument_policy_and_operator_policy_lower_wins() -> None:
    quorum = {"x-queue-type": "quorum"}
    assert QueueSettings.effective({**quorum, "x-delivery-limit": 3}).delivery_limit == 3
    assert QueueSettings.effective({**quorum, "x-delivery-limit": 3}, {"delivery-limit": 1}).delivery_limit == 1
    assert QueueSettings.effective({**quorum, "x-delivery-limit": 1}, {"delivery-limit": 5}).delivery_limit == 1
    assert QueueSettings.effective(quorum, {"delivery-limit": 4}).delivery_limit == 4
    assert QueueSettings.effective({**quorum, "x-delivery-limit": 3}, {}, {"delivery-limit": 1}).delivery_limit == 1
    assert QueueSettings.effective(quorum, {"delivery-limit": 4}, {"delivery-limit": 2}).delivery_limit == 2
    assert QueueSettings.effective(quorum).delivery_limit is None


@pytest.mark.parametrize("value", ["abc", True, b"2", None, [1]])
def test_a_non_integer_limit_does_not_limit(value: Any) -> None:
    arguments = {"x-queue-type": "quorum", "x-delivery-limit": value}
    # RabbitMQ 3.10.8 accepts it at declare...
    assert check_declare_arguments("q", "/", arguments) is None
    # ...and never dead-letters for it; a policy's number still applies.
    assert QueueSettings.effective(arguments).delivery_limit is None
    assert QueueSettings.effective(arguments, {"delivery-limit": 2}).delivery_limit == 2


def test_a_negative_limit_is_accepted_and_kept() -> None:
    arguments = {"x-queue-type": "quorum", "x-delivery-limit": -1}
    assert check_declare_arguments("q", "/", arguments) is None
    assert QueueSettings.effective(arguments).delivery_limit == -1


@given(st.one_of(st.none(), st.integers(-2, 100)))
def test_delivery_limit_survives_the_wire(limit: int | None) -> None:
    s = QueueSettings(queue_type="quorum", delivery_limit=limit)
    assert QueueSettings.from_wire(s.to_wire()) == s


def test_settings_from_an_older_wire_form_have_no_limit() -> None:
    wire = QueueSettings(queue_type="quorum").to_wire()
    del wire["delivery_limit"]
    assert QueueSettings.from_wire(wire).delivery_limit is None


# --- the header, as the leader hands deliveries out ----------------------------------------


class RecordingSession:
    def __init__(self) -> None:
        self.got: list[tuple[Message, bool]] = []

    def can_deliver(self, channel: int, tag: str) -> bool:
        return True

    def deliver(self, channel: int, tag: str, handle: Any, m: Message, redelivered: bool) -> int | None:
        self.got.append((m, redelivered))
        return len(self.got)

    def cancel_consumer(self, channel: int, tag: str) -> None:
        pass


def _leader(settings: QueueSettings) -> tuple[QueueLeader, RecordingSession]:
    node = Node(replace(Settings(node_name="dlimit@localhost"), queue_memory_window=0))
    leader = QueueLeader(node, "/", "q", False, settings, 0)
    session = RecordingSession()
    assert leader.add_consumer(ConsumerRef(session, 1, "c", no_ack=False), 0, False) is None  # type: ignore[arg-type]
    return leader, session


def test_redeliveries_of_a_quorum_queue_carry_x_delivery_count_on_a_copy() -> None:
    leader, session = _leader(QueueSettings(queue_type="quorum"))
    original = _message(7, {"b": 1, "a": "x"})
    leader.publish(original, 0, None)  # the publish fast lane: straight to the consumer
    leader.publish(_message(8), 0, None)
    first, _ = session.got[0]
    assert first is original and first.properties.headers == {"b": 1, "a": "x"}
    for _ in range(2):
        leader.requeue((1,), 0)  # back, then out again through the dispatch lanes
    counts = [(m.id, red, (m.properties.headers or {}).get("x-delivery-count")) for m, red in session.got]
    assert counts == [(7, False, None), (8, False, None), (7, True, 1), (7, True, 2)]
    copy, _ = session.got[-1]
    assert copy is not original and copy.raw_properties is None and copy.body is original.body
    assert list(copy.properties.headers) == ["a", "b", "x-delivery-count"]
    assert original.properties.headers == {"b": 1, "a": "x"}  # the shared message is untouched


def test_classic_queue_redeliveries_have_no_header() -> None:
    leader, session = _leader(QueueSettings())
    original = _message(7)
    leader.publish(original, 0, None)
    leader.requeue((1,), 0)
    assert [(m, red) for m, red in session.got] == [(original, False), (original, True)]


def test_basic_get_from_a_quorum_queue_always_carries_the_count() -> None:
    node = Node(replace(Settings(node_name="dlimit@localhost"), queue_memory_window=0))
    leader = QueueLeader(node, "/", "q", False, QueueSettings(queue_type="quorum"), 0)
    original = _message(3)
    leader.publish(original, 0, None)
    got = leader.get(0, no_ack=False)
    assert got is not None and got.message.properties.headers == {"x-delivery-count": 0}
    leader.requeue((got.seq,), 0)
    again = leader.get(0, no_ack=False)
    assert again is not None and again.redelivered and again.message.properties.headers == {"x-delivery-count": 1}
    assert original.properties.headers is None
    classic = QueueLeader(node, "/", "c", False, QueueSettings(), 0)
    classic.publish(original, 0, None)
    plain = classic.get(0, no_ack=True)
    assert plain is not None and plain.message is original


def test_with_delivery_count_replaces_a_header_the_publisher_set() -> None:
    m = _message(1, {"x-delivery-count": 99, "z": 1})
    copy = with_delivery_count(m, 2)
    assert copy.properties.headers == {"x-delivery-count": 2, "z": 1} and copy.id == 1
    assert m.properties.headers == {"x-delivery-count": 99, "z": 1}
