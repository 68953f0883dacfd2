"""`QueueState.enqueue_delivered` and `deliver_ready`, the publish and dispatch fast lanes, against the same model as
`apply(Enqueue(...))`: whenever it takes a publish, the state changes exactly as the
command would have changed it (the model's observables stay equal afterwards) and
the implied effects are what the command returns; it declines every other outcome
and, having declined, has changed nothing."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import rule

from broker.amqp.spec import BasicProperties
from broker.arguments import QueueSettings
from broker.message import Message
from broker.queue import Deliver, Enqueue, QueueState

from test_queue_model import Model, PagedQueueMachine, QueueMachine, _norm, messages


def model_enqueue(model: Model, m: Message, now: int, consumer: str, ack: bool) -> list[Any]:
    """Model.enqueue with a choice of ack_required for the direct hand-out."""
    out: list[Any] = []
    if model.s.overflow != "drop-head" and model.over(1, m.size):
        if model.s.overflow == "reject-publish-dlx":
            model.dead(m, "maxlen", out, silent=True)
        out.append(("nack", m.id))
        return out
    model.seq += 1
    ttls = [t for t in (model.s.message_ttl_ms, m.expiration_ms) if t is not None]
    item = [model.seq, m, now + min(ttls) if ttls else None, 0]
    out.append(("enqueued", model.seq, m.id))
    if not model.ready:
        model.hand_out(item, consumer, ack, out)
        return out
    model.insert(item)
    model.drop_head(out)
    model.expire(now, out)
    return out


class FastLane:
    state: QueueState
    model: Model
    now: int
    ids: int
    by_id: dict[int, Message]

    @rule(m=messages, ack=st.booleans())
    def enqueue_fast(self, m: tuple[int, int, int | None], ack: bool) -> None:
        size, prio, exp = m
        self.ids += 1
        message = Message("x", "k", BasicProperties(), b"b" * size, priority=prio, expiration_ms=exp, id=self.ids)
        self.by_id[self.ids] = message
        expected = model_enqueue(self.model, message, self.now, "c1", ack)
        before = self.state.statistics()
        seq = self.state.enqueue_delivered(message, self.now, "c1", ack)
        if seq is None:
            assert self.state.statistics() == before
            assert not (len(expected) == 2 and expected[1][0] == "delivered"), "a straight hand-out was declined"
            got = [_norm(e) for e in self.state.apply(Enqueue(message, self.now, "c1", ack))]
            assert got == expected
        else:
            assert expected == [("enqueued", seq, message.id), ("delivered", seq, message.id, "c1", False, 1, ack, 0)]


    @rule(ack=st.booleans())
    def deliver_fast(self, ack: bool) -> None:
        expected = self.model.deliver(self.now, "c2", ack)
        before = (self.state.statistics(), self.state.unacked_seqs(), list(self.state.ready()))
        taken = self.state.deliver_ready(self.now, "c2", ack)
        if taken is None:
            assert (self.state.statistics(), self.state.unacked_seqs(), list(self.state.ready())) == before
            got = [_norm(e) for e in self.state.apply(Deliver(self.now, "c2", ack))]
            assert got == expected
        else:
            seq, message, redelivered, count = taken
            assert len(expected) == 1 and expected[0][:6] == ("delivered", seq, message.id, "c2", redelivered, count)
            assert expected[0][6:] == (ack, self.state.messages_ready)


class FastLaneMachine(FastLane, QueueMachine):
    pass


class PagedFastLaneMachine(FastLane, PagedQueueMachine):
    pass


_settings = settings(max_examples=100, stateful_step_count=40, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])
FastLaneMachine.TestCase.settings = _settings
PagedFastLaneMachine.TestCase.settings = _settings
TestFastLane = FastLaneMachine.TestCase
TestPagedFastLane = PagedFastLaneMachine.TestCase


def test_requeued_fast_lane_delivery_keeps_its_expiry_and_count() -> None:
    state = QueueState("q", QueueSettings(message_ttl_ms=50))
    m = Message("x", "k", BasicProperties(), b"abc", id=1)
    seq = state.enqueue_delivered(m, 1000, "c1", True)
    assert seq == 1 and state.messages_unacknowledged == 1 and state.message_bytes_unacknowledged == 3
    from broker.queue import Deliver, Expire, Requeue

    assert state.apply(Requeue((seq,), 1010)) == []
    (d,) = state.apply(Deliver(1020, "c2"))
    assert (d.seq, d.redelivered, d.delivery_count) == (1, True, 2)
    assert state.apply(Requeue((seq,), 1030)) == []
    assert [type(e).__name__ for e in state.apply(Expire(1050))] == ["Dropped"]
