"""QueueState against a plain-list model under random command sequences, with and
without paging to a tiny window.

The model keeps ready messages in one Python list sorted by (priority level
descending, sequence number) and recomputes everything the slow, obvious way; the
real state must agree on every effect and every observable after every step.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

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
    command_from_wire,
    command_to_wire,
)


def _norm(effect: Any) -> tuple[Any, ...]:
    match effect:
        case Enqueued(seq, message):
            return ("enqueued", seq, message.id)
        case PublisherRejected(message):
            return ("nack", message.id)
        case Delivered(seq, message, consumer, redelivered, count, ack_required, remaining):
            return ("delivered", seq, message.id, consumer, redelivered, count, ack_required, remaining)
        case DeadLetter(message, reason, _queue, exchange, rk):
            return ("dead", message.id, reason, exchange, rk)
        case Dropped(message, reason):
            return ("dropped", message.id, reason)
        case Purged(count):
            return ("purged", count)
    raise AssertionError(effect)


class Model:
    def __init__(self, s: QueueSettings) -> None:
        self.s = s
        self.ready: list[list[Any]] = []  # [seq, message, expires_at, deliveries]
        self.unacked: dict[int, list[Any]] = {}
        self.seq = 0

    def level(self, m: Message) -> int:
        return min(max(m.priority, 0), self.s.max_priority) if self.s.max_priority else 0

    def insert(self, item: list[Any]) -> None:
        self.ready.append(item)
        self.ready.sort(key=lambda it: (-self.level(it[1]), it[0]))

    def ready_bytes(self) -> int:
        return sum(it[1].size for it in self.ready)

    def dead(self, m: Message, reason: str, out: list[Any], silent: bool = False) -> None:
        if self.s.dead_letter_exchange is not None:
            out.append(("dead", m.id, reason, self.s.dead_letter_exchange, self.s.dead_letter_routing_key))
        elif not silent:
            out.append(("dropped", m.id, reason))

    def over(self, extra_len: int = 0, extra_bytes: int = 0) -> bool:
        s = self.s
        if s.max_length is not None and len(self.ready) + extra_len > s.max_length:
            return True
        return s.max_length_bytes is not None and self.ready_bytes() + extra_bytes > s.max_length_bytes

    def expire(self, now: int, out: list[Any]) -> None:
        while self.ready and self.ready[0][2] is not None and now >= self.ready[0][2]:
            self.dead(self.ready.pop(0)[1], "expired", out)

    def drop_head(self, out: list[Any]) -> None:
        if self.s.overflow == "drop-head":
            while self.over():
                self.dead(self.ready.pop(0)[1], "maxlen", out)

    def hand_out(self, item: list[Any], consumer: str | None, ack: bool, out: list[Any]) -> None:
        redelivered = item[3] > 0
        item[3] += 1
        if ack:
            self.unacked[item[0]] = item
        out.append(("delivered", item[0], item[1].id, consumer, redelivered, item[3], ack, len(self.ready)))

    def enqueue(self, m: Message, now: int, deliver_to: str | None) -> list[Any]:
        out: list[Any] = []
        if self.s.overflow != "drop-head" and self.over(1, m.size):
            if self.s.overflow == "reject-publish-dlx":
                self.dead(m, "maxlen", out, silent=True)
            out.append(("nack", m.id))
            return out
        self.seq += 1
        ttls = [t for t in (self.s.message_ttl_ms, m.expiration_ms) if t is not None]
        item = [self.seq, m, now + min(ttls) if ttls else None, 0]
        out.append(("enqueued", self.seq, m.id))
        if deliver_to is not None and not self.ready:
            self.hand_out(item, deliver_to, True, out)
            return out
        self.insert(item)
        self.drop_head(out)
        self.expire(now, out)
        return out

    def deliver(self, now: int, consumer: str | None, ack: bool) -> list[Any]:
        out: list[Any] = []
        self.expire(now, out)
        if self.ready:
            self.hand_out(self.ready.pop(0), consumer, ack, out)
            delivered = len(out) - 1
            self.expire(now, out)
            if consumer is None:
                # basic.get-ok counts the messages left after the expired ones behind it (RabbitMQ).
                out[delivered] = (*out[delivered][:7], len(self.ready))
        return out

    def requeue(self, seqs: list[int], now: int) -> list[Any]:
        out: list[Any] = []
        moved = False
        limit = self.s.delivery_limit if self.s.queue_type == "quorum" else None
        for seq in seqs:
            item = self.unacked.pop(seq, None)
            if item is not None:
                # A quorum queue counts this return; past the limit the message leaves.
                if limit is not None and item[3] > limit:
                    self.dead(item[1], "delivery_limit", out)
                    continue
                self.insert(item)
                moved = True
        if moved:
            self.drop_head(out)
            self.expire(now, out)
        return out


messages = st.builds(
    lambda size, prio, exp: (size, prio, exp),
    st.integers(0, 6),
    st.integers(0, 5),
    st.sampled_from([None, None, 0, 3, 10]),
)

queue_settings = st.builds(
    QueueSettings,
    message_ttl_ms=st.sampled_from([None, None, 0, 5, 20]),
    max_length=st.sampled_from([None, None, 0, 1, 3]),
    max_length_bytes=st.sampled_from([None, None, 0, 8, 20]),
    overflow=st.sampled_from(["drop-head", "reject-publish", "reject-publish-dlx"]),
    dead_letter_exchange=st.sampled_from([None, "dlx"]),
    dead_letter_routing_key=st.sampled_from([None, "rk"]),
    max_priority=st.sampled_from([0, 0, 3]),
    queue_type=st.sampled_from(["classic", "classic", "quorum"]),
    delivery_limit=st.sampled_from([None, 0, 1, 2]),
)


class QueueMachine(RuleBasedStateMachine):
    @initialize(s=queue_settings)
    def start(self, s: QueueSettings) -> None:
        self.state = QueueState("q", s)
        self.model = Model(s)
        self.now = 0
        self.ids = 0
        self.by_id: dict[int, Message] = {}

    def run(self, cmd: Any, expected: list[Any]) -> None:
        # Every command also survives its wire form.
        wire = command_to_wire(cmd)
        cmd2 = command_from_wire(wire, self.by_id.__getitem__)
        assert command_to_wire(cmd2) == wire
        got = [_norm(e) for e in self.state.apply(cmd2)]
        assert got == expected

    @rule(m=messages, direct=st.booleans())
    def enqueue(self, m: tuple[int, int, int | None], direct: bool) -> None:
        size, prio, exp = m
        self.ids += 1
        message = Message("x", "k", BasicProperties(), b"b" * size, priority=prio, expiration_ms=exp, id=self.ids)
        self.by_id[self.ids] = message
        consumer = "c1" if direct else None
        expected = self.model.enqueue(message, self.now, consumer)
        self.run(Enqueue(message, self.now, consumer), expected)

    @rule(ack=st.booleans(), get=st.booleans())
    def deliver(self, ack: bool, get: bool) -> None:
        consumer = None if get else "c2"
        self.run(Deliver(self.now, consumer, ack), self.model.deliver(self.now, consumer, ack))

    @precondition(lambda self: self.model.unacked)
    @rule(data=st.data())
    def settle(self, data: st.DataObject) -> None:
        seqs = data.draw(st.lists(st.sampled_from(sorted(self.model.unacked)), min_size=1, unique=True))
        for seq in seqs:
            del self.model.unacked[seq]
        self.run(Settle(tuple(seqs)), [])

    @precondition(lambda self: self.model.unacked)
    @rule(data=st.data())
    def requeue(self, data: st.DataObject) -> None:
        seqs = data.draw(st.lists(st.sampled_from(sorted(self.model.unacked)), min_size=1, unique=True))
        self.run(Requeue(tuple(seqs), self.now), self.model.requeue(seqs, self.now))

    @precondition(lambda self: self.model.unacked)
    @rule(data=st.data())
    def reject(self, data: st.DataObject) -> None:
        seqs = data.draw(st.lists(st.sampled_from(sorted(self.model.unacked)), min_size=1, unique=True))
        expected: list[Any] = []
        for seq in seqs:
            self.model.dead(self.model.unacked.pop(seq)[1], "rejected", expected)
        self.run(Reject(tuple(seqs)), expected)

    @rule()
    def requeue_all(self) -> None:
        self.run(RequeueAll(self.now), self.model.requeue(sorted(self.model.unacked), self.now))

    @rule(dt=st.integers(0, 12))
    def tick_and_expire(self, dt: int) -> None:
        self.now += dt
        expected: list[Any] = []
        self.model.expire(self.now, expected)
        self.run(Expire(self.now), expected)

    @rule()
    def purge(self) -> None:
        count = len(self.model.ready)
        self.model.ready.clear()
        self.run(Purge(), [("purged", count)])

    @rule(max_length=st.sampled_from([None, 0, 2]), ttl=st.sampled_from([None, 4]))
    def reconfigure(self, max_length: int | None, ttl: int | None) -> None:
        from dataclasses import replace

        s = replace(self.model.s, max_length=max_length, message_ttl_ms=ttl)
        self.model.s = s
        expected: list[Any] = []
        self.model.drop_head(expected)
        self.model.expire(self.now, expected)
        self.run(Reconfigure(s, self.now), expected)

    @invariant()
    def observables_agree(self) -> None:
        if not hasattr(self, "state"):
            return
        st_, m = self.state, self.model
        assert [(seq, msg.id, red) for seq, msg, red in st_.ready()] == [
            (it[0], it[1].id, it[3] > 0) for it in m.ready
        ]
        assert st_.messages_ready == len(m.ready)
        assert st_.unacked_seqs() == sorted(m.unacked)
        assert st_.messages_unacknowledged == len(m.unacked)
        assert st_.message_bytes_ready == m.ready_bytes()
        assert st_.message_bytes_unacknowledged == sum(it[1].size for it in m.unacked.values())
        head_expiry = m.ready[0][2] if m.ready else None
        assert st_.next_expiry(self.now) == (None if head_expiry is None else max(head_expiry, self.now))


QueueMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestQueueModel = QueueMachine.TestCase


class PagedQueueMachine(QueueMachine):
    """The same model, the same expected effects, with a window of a few messages or
    bytes: every page-out and page-in must be invisible, and memory must stay bounded."""

    @initialize(s=queue_settings, window=st.integers(1, 6), window_bytes=st.integers(1, 24))
    def start(self, s: QueueSettings, window: int, window_bytes: int) -> None:  # type: ignore[override]
        self.pages = MemoryPages()
        self.limits = PagingLimits.window(window, window_bytes)
        self.state = QueueState("q", s, paging=self.limits, pages=self.pages)
        self.model = Model(s)
        self.now = 0
        self.ids = 0
        self.by_id = {}

    @invariant()
    def memory_stays_in_window(self) -> None:
        if not hasattr(self, "state"):
            return
        st_, limits = self.state, self.limits
        in_memory = st_.messages_ready - st_.messages_paged_out
        in_memory_bytes = st_.message_bytes_ready - st_.message_bytes_paged_out
        assert in_memory <= limits.window_messages
        # The head level keeps a page for the next deliveries even over the byte window.
        assert in_memory_bytes <= max(limits.window_bytes, limits.page_bytes + 6)
        # Every page the state knows of is in the store, and nothing else is.
        refs = [page.ref for level in st_._levels for page in level.pages]
        assert sorted(refs) == sorted(self.pages.pages)
        assert sum(len(p) for p in self.pages.pages.values()) == st_.messages_paged_out


PagedQueueMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestPagedQueueModel = PagedQueueMachine.TestCase
