"""QueueState behaviours named one by one (the model test covers random mixes).

Requeue position, drop-head after requeue, reject-publish with a waiting consumer
and TTL 0 with and without a consumer were compared with a RabbitMQ 3.10.8 node.
"""

from __future__ import annotations

import msgpack

from broker.amqp.spec import BasicProperties
from broker.arguments import QueueSettings
from broker.message import Message
from broker.queue import (
    DeadLetter,
    Deliver,
    Delivered,
    Dropped,
    Enqueue,
    Enqueued,
    Expire,
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
    command_from_wire,
    command_to_wire,
)

_ids = iter(range(1, 10**9))


def m(size: int = 1, priority: int = 0, expiration_ms: int | None = None) -> Message:
    return Message("ex", "rk", BasicProperties(), b"x" * size, priority=priority,
                   expiration_ms=expiration_ms, id=next(_ids))


def q(**kw: object) -> QueueState:
    return QueueState("q", QueueSettings(**kw))  # type: ignore[arg-type]


def ready_ids(state: QueueState) -> list[int]:
    return [msg.id for _, msg, _ in state.ready()]


def test_fifo_deliver_ack() -> None:
    s = q()
    a, b = m(3), m(4)
    assert s.apply(Enqueue(a, 0)) == [Enqueued(1, a)]
    s.apply(Enqueue(b, 0))
    assert (s.messages_ready, s.message_bytes_ready) == (2, 7)
    [d] = s.apply(Deliver(0, "c", True))
    assert d == Delivered(1, a, "c", False, 1, True, 1)
    assert (s.messages_ready, s.messages_unacknowledged, s.message_bytes_unacknowledged) == (1, 1, 3)
    assert s.apply(Settle((1,))) == []
    assert s.messages == 1
    # Settling twice (e.g. replayed after failover) is harmless.
    assert s.apply(Settle((1,))) == []
    assert s.messages == 1


def test_no_ack_delivery_is_settled_at_once() -> None:
    s = q()
    s.apply(Enqueue(m(), 0))
    [d] = s.apply(Deliver(0, "c", False))
    assert not d.ack_required
    assert s.messages == 0 and s.message_bytes_unacknowledged == 0


def test_empty_queue_delivers_nothing() -> None:
    assert q().apply(Deliver(0, "c", True)) == []


def test_requeue_returns_to_original_position_flagged_redelivered() -> None:
    s = q()
    msgs = [m() for _ in range(4)]
    for x in msgs:
        s.apply(Enqueue(x, 0))
    d1 = s.apply(Deliver(0, "c", True))[0]
    d2 = s.apply(Deliver(0, "c", True))[0]
    d3 = s.apply(Deliver(0, "c", True))[0]
    s.apply(Requeue((d2.seq,), 0))
    assert ready_ids(s) == [msgs[1].id, msgs[3].id]
    s.apply(Requeue((d3.seq, d1.seq), 0))
    assert ready_ids(s) == [x.id for x in msgs]
    assert [red for _, _, red in s.ready()] == [True, True, True, False]
    [again] = s.apply(Deliver(0, "c", True))
    assert again.redelivered and again.delivery_count == 2 and again.seq == d1.seq


def test_requeue_all_on_failover() -> None:
    s = q()
    for _ in range(3):
        s.apply(Enqueue(m(), 0))
    for _ in range(2):
        s.apply(Deliver(0, "c", True))
    s.apply(RequeueAll(0))
    assert s.messages_unacknowledged == 0 and s.messages_ready == 3
    assert [red for _, _, red in s.ready()] == [True, True, False]


def test_priorities_higher_first_fifo_within_and_clamped() -> None:
    s = q(max_priority=5)
    low, high1, top, high2 = m(priority=1), m(priority=4), m(priority=200), m(priority=4)
    for x in (low, high1, top, high2):
        s.apply(Enqueue(x, 0))
    # 200 clamps to 5.
    assert ready_ids(s) == [top.id, high1.id, high2.id, low.id]


def test_priority_ignored_without_max_priority() -> None:
    s = q()
    a, b = m(priority=0), m(priority=9)
    s.apply(Enqueue(a, 0))
    s.apply(Enqueue(b, 0))
    assert ready_ids(s) == [a.id, b.id]


def test_queue_ttl_expires_at_head_and_dead_letters() -> None:
    s = q(message_ttl_ms=100, dead_letter_exchange="dlx", dead_letter_routing_key="dead")
    a, b = m(), m()
    s.apply(Enqueue(a, 0))
    s.apply(Enqueue(b, 50))
    assert s.next_expiry(10) == 100
    assert s.apply(Expire(99)) == []
    assert s.apply(Expire(100)) == [DeadLetter(a, "expired", "q", "dlx", "dead")]
    assert s.next_expiry(100) == 150
    assert s.apply(Expire(1000)) == [DeadLetter(b, "expired", "q", "dlx", "dead")]
    assert s.next_expiry(1000) is None


def test_message_expiry_only_at_head() -> None:
    # A short-lived message behind a long-lived one waits, as in RabbitMQ.
    s = q()
    long_lived, short = m(expiration_ms=1000), m(expiration_ms=1)
    s.apply(Enqueue(long_lived, 0))
    s.apply(Enqueue(short, 0))
    assert s.apply(Expire(500)) == []
    assert s.messages_ready == 2
    assert s.apply(Expire(1000)) == [Dropped(long_lived, "expired"), Dropped(short, "expired")]


def test_lower_of_queue_and_message_ttl() -> None:
    s = q(message_ttl_ms=50)
    s.apply(Enqueue(m(expiration_ms=10), 0))
    assert s.next_expiry(0) == 10
    s2 = q(message_ttl_ms=5)
    s2.apply(Enqueue(m(expiration_ms=10), 0))
    assert s2.next_expiry(0) == 5


def test_ttl_zero_is_delivered_if_a_consumer_waits_else_dropped() -> None:
    s = q(message_ttl_ms=0, dead_letter_exchange="dlx")
    a, b = m(), m()
    effects = s.apply(Enqueue(a, 7, deliver_to="c"))
    assert effects == [Enqueued(1, a), Delivered(1, a, "c", False, 1, True, 0)]
    effects = s.apply(Enqueue(b, 7))
    assert effects == [Enqueued(2, b), DeadLetter(b, "expired", "q", "dlx", None)]
    assert s.messages_ready == 0


def test_deliver_to_is_ignored_when_messages_are_ready() -> None:
    s = q()
    a, b = m(), m()
    s.apply(Enqueue(a, 0))
    assert s.apply(Enqueue(b, 0, deliver_to="c")) == [Enqueued(2, b)]
    assert ready_ids(s) == [a.id, b.id]


def test_expired_messages_are_not_delivered() -> None:
    s = q(message_ttl_ms=10)
    a, b = m(), m()
    s.apply(Enqueue(a, 0))
    s.apply(Enqueue(b, 5))
    effects = s.apply(Deliver(12, "c", True))
    assert effects[0] == Dropped(a, "expired")
    assert isinstance(effects[1], Delivered) and effects[1].message is b


def test_drop_head_overflow() -> None:
    s = q(max_length=2, dead_letter_exchange="dlx")
    a, b, c = m(), m(), m()
    for x in (a, b):
        s.apply(Enqueue(x, 0))
    assert s.apply(Enqueue(c, 0)) == [Enqueued(3, c), DeadLetter(a, "maxlen", "q", "dlx", None)]
    assert ready_ids(s) == [b.id, c.id]


def test_max_length_bytes_drop_head() -> None:
    s = q(max_length_bytes=10)
    a, b = m(6), m(6)
    s.apply(Enqueue(a, 0))
    assert s.apply(Enqueue(b, 0)) == [Enqueued(2, b), Dropped(a, "maxlen")]


def test_unacked_messages_do_not_count_towards_max_length() -> None:
    s = q(max_length=1, overflow="reject-publish")
    s.apply(Enqueue(m(), 0))
    s.apply(Deliver(0, "c", True))
    b = m()
    assert s.apply(Enqueue(b, 0)) == [Enqueued(2, b)]


def test_requeue_over_max_length_drops_from_head() -> None:
    s = q(max_length=1)
    a, b = m(), m()
    s.apply(Enqueue(a, 0))
    s.apply(Deliver(0, "c", True))
    s.apply(Enqueue(b, 0))
    # a goes back in front of b and is the one dropped (RabbitMQ requeue_and_run -> maybe_drop_head).
    assert s.apply(Requeue((1,), 0)) == [Dropped(a, "maxlen")]
    assert ready_ids(s) == [b.id]


def test_reject_publish_nacks_even_with_a_waiting_consumer() -> None:
    s = q(max_length=0, overflow="reject-publish", dead_letter_exchange="dlx")
    a = m()
    assert s.apply(Enqueue(a, 0, deliver_to="c")) == [PublisherRejected(a)]
    assert s.messages == 0


def test_reject_publish_dlx_dead_letters_and_nacks() -> None:
    s = q(max_length=1, overflow="reject-publish-dlx", dead_letter_exchange="dlx", dead_letter_routing_key="k")
    a, b = m(), m()
    s.apply(Enqueue(a, 0))
    assert s.apply(Enqueue(b, 0)) == [DeadLetter(b, "maxlen", "q", "dlx", "k"), PublisherRejected(b)]
    # Without a dead-letter exchange it only nacks.
    s2 = q(max_length=0, overflow="reject-publish-dlx")
    assert s2.apply(Enqueue(b, 0)) == [PublisherRejected(b)]


def test_reject_dead_letters_or_drops() -> None:
    s = q(dead_letter_exchange="dlx")
    a = m()
    s.apply(Enqueue(a, 0))
    s.apply(Deliver(0, "c", True))
    assert s.apply(Reject((1,))) == [DeadLetter(a, "rejected", "q", "dlx", None)]
    assert s.messages == 0
    s2 = q()
    s2.apply(Enqueue(a, 0))
    s2.apply(Deliver(0, "c", True))
    assert s2.apply(Reject((1,))) == [Dropped(a, "rejected")]


def test_purge_counts_ready_only() -> None:
    s = q()
    for _ in range(3):
        s.apply(Enqueue(m(2), 0))
    s.apply(Deliver(0, "c", True))
    assert s.apply(Purge()) == [Purged(2)]
    assert (s.messages_ready, s.message_bytes_ready, s.messages_unacknowledged) == (0, 0, 1)


def test_reconfigure_applies_new_limits_now() -> None:
    s = q()
    msgs = [m() for _ in range(3)]
    for x in msgs:
        s.apply(Enqueue(x, 0))
    effects = s.apply(Reconfigure(QueueSettings(max_length=1, max_priority=9), 0))
    assert effects == [Dropped(msgs[0], "maxlen"), Dropped(msgs[1], "maxlen")]
    assert s.settings.max_priority == 0  # x-max-priority is fixed at declare


def test_queue_expiry_deadline() -> None:
    s = QueueState("q", QueueSettings(expires_ms=1000), created_ms=5)
    assert s.expires_at == 1005
    s.apply(Touch(100))
    assert s.expires_at == 1100
    s.apply(Deliver(400, None, True))  # basic.get counts as a use
    assert s.expires_at == 1400
    s.apply(Deliver(900, "consumer", True))  # a consumer delivery does not
    assert s.expires_at == 1400
    assert q().expires_at is None


def test_commands_survive_msgpack() -> None:
    a = m()
    cmds = [
        Enqueue(a, 5, "c", False),
        Deliver(6, None, True),
        Settle((1, 2)),
        Requeue((3,), 7),
        Reject((4,)),
        RequeueAll(8),
        Expire(9),
        Purge(),
        Reconfigure(QueueSettings(max_length=3, dead_letter_exchange="d"), 10),
        Touch(11),
    ]
    for cmd in cmds:
        packed = msgpack.packb(command_to_wire(cmd))
        back = command_from_wire(msgpack.unpackb(packed), {a.id: a}.__getitem__)
        assert back == cmd


def test_replicas_applying_the_same_log_agree() -> None:
    msgs = [m(i % 3, priority=i % 4, expiration_ms=(i * 7) % 20 or None) for i in range(40)]
    log = []
    for i, x in enumerate(msgs):
        log.append(Enqueue(x, i))
        if i % 3 == 0:
            log.append(Deliver(i, "c", True))
        if i % 5 == 0:
            log.append(Requeue((i // 2 + 1,), i))
        if i % 7 == 0:
            log.append(Expire(i + 3))
    replicas = [q(max_priority=3, max_length=10, dead_letter_exchange="dlx") for _ in range(3)]
    outputs = [[r.apply(c) for c in log] for r in replicas]
    assert outputs[0] == outputs[1] == outputs[2]
    assert len({tuple((seq, msg.id, red) for seq, msg, red in r.ready()) for r in replicas}) == 1
