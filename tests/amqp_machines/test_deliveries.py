"""Consumers, deliveries, delivery tags, ack / nack / reject, qos credit, recover, close."""

from __future__ import annotations

from typing import Any

import pytest
from pamqp import commands as pc

from broker.amqp import codec, spec
from broker.amqp.connection import (
    Acked,
    ChannelClosed,
    ConsumerCancelled,
    MethodReceived,
    QosChanged,
    Rejected,
)

from .peer import Peer, of_type, opened

RAW = codec.encode_properties(spec.BasicProperties(content_type="text/plain"))


def consume(peer: Peer, tag: str = "", no_ack: bool = False, channel: int = 1, queue: str = "q") -> str:
    (event,) = peer.send(pc.Basic.Consume(queue=queue, consumer_tag=tag, no_ack=no_ack), channel=channel)
    assert isinstance(event, MethodReceived) and isinstance(event.method, spec.BasicConsume)
    tag = event.method.consumer_tag
    peer.conn.send_method(channel, spec.BasicConsumeOk(consumer_tag=tag))
    peer.received()
    return tag


def deliver(peer: Peer, tag: str, handle: Any, channel: int = 1, body: bytes = b"body") -> int | None:
    return peer.conn.deliver(channel, tag, handle, "ex", "rk", RAW, body)


def _channel_close(peer: Peer) -> Any:
    ch, close = peer.one()
    assert isinstance(close, pc.Channel.Close), close
    return close


def test_generated_consumer_tag_has_rabbitmq_shape() -> None:
    peer = opened()
    tag = consume(peer)
    assert tag.startswith("amq.ctag-") and len(tag) == len("amq.ctag-") + 22
    assert consume(peer) != tag


def test_duplicate_consumer_tag() -> None:
    peer = opened()
    consume(peer, "c1")
    peer.send(pc.Basic.Consume(queue="q", consumer_tag="c1"), channel=1)
    ch, close = peer.one()
    assert isinstance(close, pc.Connection.Close)
    assert (close.reply_code, close.reply_text) == (530, "NOT_ALLOWED - attempt to reuse consumer tag 'c1'")
    assert (close.class_id, close.method_id) == (60, 20)


def test_deliver_assigns_tags_from_one_and_writes_frames() -> None:
    peer = opened()
    tag = consume(peer, "c1")
    assert [deliver(peer, tag, ("q", i), body=b"m%d" % i) for i in range(3)] == [1, 2, 3]
    frames = peer.received()
    delivers = [f for _, f in frames if isinstance(f, pc.Basic.Deliver)]
    assert [d.delivery_tag for d in delivers] == [1, 2, 3]
    assert all(d.consumer_tag == "c1" and d.exchange == "ex" and d.routing_key == "rk" for d in delivers)
    bodies = [f.value for _, f in frames if hasattr(f, "value")]
    assert bodies == [b"m0", b"m1", b"m2"]
    headers = [f for _, f in frames if f.name == "ContentHeader"]
    assert headers[0].properties.content_type == "text/plain"


def test_large_delivery_is_split_to_frame_max() -> None:
    peer = Peer()
    peer.handshake(frame_max=4096)
    peer.open_channel(1)
    tag = consume(peer, "c")
    deliver(peer, tag, "h", body=b"z" * 10000)
    bodies = [f.value for _, f in peer.received() if hasattr(f, "value")]
    assert b"".join(bodies) == b"z" * 10000 and max(map(len, bodies)) == 4096 - 8


def test_ack_single_multiple_and_unknown() -> None:
    peer = opened()
    tag = consume(peer)
    for i in range(1, 6):
        deliver(peer, tag, f"h{i}")
    peer.received()
    assert peer.send(pc.Basic.Ack(delivery_tag=2), channel=1) == [Acked(1, ("h2",))]
    assert peer.send(pc.Basic.Ack(delivery_tag=4, multiple=True), channel=1) == [Acked(1, ("h1", "h3", "h4"))]
    # Double ack is an unknown tag.
    events = peer.send(pc.Basic.Ack(delivery_tag=2), channel=1)
    close = _channel_close(peer)
    assert (close.reply_code, close.reply_text) == (406, "PRECONDITION_FAILED - unknown delivery tag 2")
    assert (close.class_id, close.method_id) == (60, 80)
    # Closing hands back what is still unacked.
    assert events == [ChannelClosed(1, ("h5",), (tag,))]


def test_ack_multiple_zero_means_everything() -> None:
    peer = opened()
    tag = consume(peer)
    for i in range(3):
        deliver(peer, tag, i)
    assert peer.send(pc.Basic.Ack(delivery_tag=0, multiple=True), channel=1) == [Acked(1, (0, 1, 2))]


def test_unknown_tag_for_reject_and_nack() -> None:
    peer = opened()
    peer.send(pc.Basic.Reject(delivery_tag=42), channel=1)
    close = _channel_close(peer)
    assert (close.reply_text, close.class_id, close.method_id) == (
        "PRECONDITION_FAILED - unknown delivery tag 42",
        60,
        90,
    )
    peer.send(pc.Channel.CloseOk(), channel=1)
    peer.open_channel(1)
    peer.send(pc.Basic.Nack(delivery_tag=7, multiple=True), channel=1)
    close = _channel_close(peer)
    assert (close.reply_text, close.method_id) == ("PRECONDITION_FAILED - unknown delivery tag 7", 120)


def test_reject_and_nack_requeue_flags() -> None:
    peer = opened()
    tag = consume(peer)
    for i in range(1, 5):
        deliver(peer, tag, i)
    assert peer.send(pc.Basic.Reject(delivery_tag=1, requeue=False), channel=1) == [Rejected(1, (1,), False)]
    assert peer.send(pc.Basic.Nack(delivery_tag=3, multiple=True, requeue=True), channel=1) == [
        Rejected(1, (2, 3), True)
    ]
    assert peer.send(pc.Basic.Nack(delivery_tag=4, multiple=False, requeue=False), channel=1) == [
        Rejected(1, (4,), False)
    ]
    assert peer.conn.channels[1].unacked == {}


def test_no_ack_consumer_deliveries_are_not_tracked() -> None:
    peer = opened()
    tag = consume(peer, no_ack=True)
    assert deliver(peer, tag, "h") == 1
    assert peer.conn.channels[1].unacked == {}
    peer.received()
    peer.send(pc.Basic.Ack(delivery_tag=1), channel=1)
    assert _channel_close(peer).reply_text == "PRECONDITION_FAILED - unknown delivery tag 1"


def test_basic_get_ok_and_empty() -> None:
    peer = opened()
    (event,) = peer.send(pc.Basic.Get(queue="q"), channel=1)
    assert event.method.queue == "q" and event.method.no_ack is False
    assert peer.conn.get_ok(1, "h1", False, "", "q", 5, RAW, b"got") == 1
    frames = peer.received()
    get_ok = frames[0][1]
    assert isinstance(get_ok, pc.Basic.GetOk)
    assert (get_ok.delivery_tag, get_ok.message_count, get_ok.routing_key) == (1, 5, "q")
    assert frames[-1][1].value == b"got"
    peer.conn.send_method(1, spec.BasicGetEmpty())
    assert isinstance(peer.one()[1], pc.Basic.GetEmpty)
    # basic.get deliveries share the tag sequence and the unacked map.
    tag = consume(peer)
    assert deliver(peer, tag, "h2") == 2
    assert peer.send(pc.Basic.Ack(delivery_tag=2, multiple=True), channel=1) == [Acked(1, ("h1", "h2"))]


def test_cancel_by_client() -> None:
    peer = opened()
    tag = consume(peer, "c1")
    deliver(peer, tag, "h1")
    peer.received()
    events = peer.send(pc.Basic.Cancel(consumer_tag="c1"), channel=1)
    assert events == [ConsumerCancelled(1, "c1")]
    _, ok = peer.one()
    assert isinstance(ok, pc.Basic.CancelOk) and ok.consumer_tag == "c1"
    # Deliveries for a cancelled consumer are refused; unacked ones can still be acked.
    assert deliver(peer, tag, "h2") is None
    assert peer.send(pc.Basic.Ack(delivery_tag=1), channel=1) == [Acked(1, ("h1",))]
    # Cancelling an unknown tag is answered and ignored (spec).
    assert peer.send(pc.Basic.Cancel(consumer_tag="nope"), channel=1) == []
    assert isinstance(peer.one()[1], pc.Basic.CancelOk)
    assert peer.send(pc.Basic.Cancel(consumer_tag="nope", nowait=True), channel=1) == []
    assert peer.conn.data_to_send() == b""


def test_cancel_by_server_notifies_capable_clients() -> None:
    peer = opened()
    consume(peer, "c1")
    assert peer.conn.cancel_consumer(1, "c1")
    _, cancel = peer.one()
    assert isinstance(cancel, pc.Basic.Cancel) and cancel.consumer_tag == "c1" and cancel.nowait
    assert not peer.conn.can_deliver(1, "c1")
    quiet = Peer()
    quiet.handshake(capabilities={})
    quiet.open_channel(1)
    consume(quiet, "c1")
    assert quiet.conn.cancel_consumer(1, "c1")
    assert quiet.conn.data_to_send() == b""


def test_qos_per_consumer_applies_to_consumers_created_afterwards() -> None:
    peer = opened()
    before = consume(peer, "before")
    assert peer.send(pc.Basic.Qos(prefetch_count=2), channel=1) == [QosChanged(1, 2, False)]
    assert isinstance(peer.one()[1], pc.Basic.QosOk)
    after = consume(peer, "after")
    for _ in range(2):
        assert peer.conn.can_deliver(1, after)
        deliver(peer, after, "a")
    assert not peer.conn.can_deliver(1, after)
    # The earlier consumer is unlimited.
    for _ in range(5):
        deliver(peer, before, "b")
    assert peer.conn.can_deliver(1, before)
    # Acking one of "after"'s deliveries gives it credit back.
    peer.send(pc.Basic.Ack(delivery_tag=1), channel=1)
    assert peer.conn.can_deliver(1, after)


def test_qos_global_is_shared_by_the_channel() -> None:
    peer = opened()
    peer.send(pc.Basic.Qos(prefetch_count=3, global_=True), channel=1)
    peer.received()
    a, b = consume(peer, "a"), consume(peer, "b")
    deliver(peer, a, 1)
    deliver(peer, b, 2)
    deliver(peer, a, 3)
    assert not peer.conn.can_deliver(1, a) and not peer.conn.can_deliver(1, b)
    peer.send(pc.Basic.Ack(delivery_tag=2), channel=1)
    assert peer.conn.can_deliver(1, a) and peer.conn.can_deliver(1, b)


def test_qos_global_and_per_consumer_together() -> None:
    peer = opened()
    peer.send(pc.Basic.Qos(prefetch_count=1), channel=1)
    peer.send(pc.Basic.Qos(prefetch_count=10, global_=True), channel=1)
    peer.received()
    a, b = consume(peer, "a"), consume(peer, "b")
    deliver(peer, a, 1)
    assert not peer.conn.can_deliver(1, a) and peer.conn.can_deliver(1, b)


def test_basic_get_does_not_use_consumer_credit() -> None:
    peer = opened()
    peer.send(pc.Basic.Qos(prefetch_count=1, global_=True), channel=1)
    peer.received()
    a = consume(peer, "a")
    peer.conn.get_ok(1, "g", False, "", "q", 0, RAW, b"")
    assert peer.conn.can_deliver(1, a)


def test_no_ack_consumers_ignore_prefetch() -> None:
    peer = opened()
    peer.send(pc.Basic.Qos(prefetch_count=1, global_=True), channel=1)
    peer.received()
    a = consume(peer, "a", no_ack=True)
    for _ in range(3):
        deliver(peer, a, None)
    assert peer.conn.can_deliver(1, a)


def test_qos_prefetch_size_is_not_implemented() -> None:
    peer = opened()
    peer.send(pc.Basic.Qos(prefetch_size=1024, prefetch_count=1), channel=1)
    ch, close = peer.one()
    assert (close.reply_code, close.reply_text) == (540, "NOT_IMPLEMENTED - prefetch_size!=0 (1024)")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pamqp flags recover-async
def test_recover_requeues_everything_unacked() -> None:
    peer = opened()
    tag = consume(peer)
    for i in range(1, 4):
        deliver(peer, tag, i)
    peer.received()
    peer.send(pc.Basic.Ack(delivery_tag=2), channel=1)
    assert peer.send(pc.Basic.Recover(requeue=True), channel=1) == [Rejected(1, (1, 3), True)]
    assert isinstance(peer.one()[1], pc.Basic.RecoverOk)
    assert peer.conn.can_deliver(1, tag)
    # recover-async has no reply.
    deliver(peer, tag, 4)
    peer.received()
    assert peer.send(pc.Basic.RecoverAsync(requeue=True), channel=1) == [Rejected(1, (4,), True)]
    assert peer.conn.data_to_send() == b""


def test_recover_without_requeue_is_not_implemented() -> None:
    peer = opened()
    peer.send(pc.Basic.Recover(requeue=False), channel=1)
    ch, close = peer.one()
    assert (close.reply_code, close.reply_text) == (540, "NOT_IMPLEMENTED - requeue=false")
    assert (close.class_id, close.method_id) == (60, 110)


def test_channel_close_returns_unacked_in_delivery_order_with_consumers() -> None:
    peer = opened()
    a, b = consume(peer, "a"), consume(peer, "b")
    for i in range(1, 7):
        deliver(peer, a if i % 2 else b, ("q", i))
    peer.send(pc.Basic.Ack(delivery_tag=3), channel=1)
    events = peer.send(pc.Channel.Close(reply_code=200, reply_text="", class_id=0, method_id=0), channel=1)
    assert events == [ChannelClosed(1, (("q", 1), ("q", 2), ("q", 4), ("q", 5), ("q", 6)), ("a", "b"))]
    # A delivery racing the close is refused.
    assert deliver(peer, a, "late") is None


def test_connection_loss_returns_unacked_per_channel() -> None:
    peer = opened()
    peer.open_channel(2)
    a = consume(peer, "a", channel=1)
    b = consume(peer, "b", channel=2)
    deliver(peer, a, "x", channel=1)
    deliver(peer, b, "y", channel=2)
    events = peer.conn.connection_lost()
    closed = of_type(events, ChannelClosed)
    assert sorted((e.channel, e.unacked, e.consumer_tags) for e in closed) == [(1, ("x",), ("a",)), (2, ("y",), ("b",))]
