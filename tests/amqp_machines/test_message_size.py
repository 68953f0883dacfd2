"""max_message_size: a content header declaring more than the limit is refused at once
(406, RabbitMQ's text, the channel closed), and the body that follows is counted off
unread, never held."""

from __future__ import annotations

from pamqp import body as pbody
from pamqp import commands as pc
from pamqp import frame as pframe
from pamqp import header as pheader

from broker.amqp.channel import DEFAULT_MAX_MESSAGE_SIZE
from broker.amqp.connection import ChannelClosed, ConnectionState, PublishReceived

from .peer import of_type, opened, publish_frames


def _method_and_header(channel: int, declared: int) -> bytes:
    return (pframe.marshal(pc.Basic.Publish(exchange="", routing_key="q"), channel)
            + pframe.marshal(pheader.ContentHeader(0, declared, pc.Basic.Properties()), channel))


def test_default_is_rabbitmq_3_10s_128_mib() -> None:
    assert DEFAULT_MAX_MESSAGE_SIZE == 134_217_728
    peer = opened()
    assert peer.conn.max_message_size == 134_217_728


def test_declared_size_over_the_limit_is_refused_at_the_header() -> None:
    peer = opened(max_message_size=1000)
    events = peer.send_raw(_method_and_header(1, 500_000_000))
    assert of_type(events, ChannelClosed)
    ch, close = peer.one()
    assert ch == 1 and isinstance(close, pc.Channel.Close)
    assert (close.reply_code, close.reply_text, close.class_id, close.method_id) == (
        406, "PRECONDITION_FAILED - message size 500000000 is larger than configured max size 1000", 60, 40)


def test_the_refused_body_is_counted_off_unread() -> None:
    peer = opened(max_message_size=1000)
    peer.send_raw(_method_and_header(1, 3 * 100_000))
    peer.received()
    channel = peer.conn.channels[1]
    for _ in range(3):
        assert peer.send_raw(pframe.marshal(pbody.ContentBody(b"x" * 100_000), 1)) == []
        assert channel._parts == []  # nothing of the refused body is held
    assert peer.conn.state is ConnectionState.OPEN
    # The channel closes as usual and the connection goes on.
    peer.send(pc.Channel.CloseOk(), channel=1)
    peer.open_channel(1)
    events = peer.send_raw(publish_frames(1, b"small"))
    assert [e.body for e in of_type(events, PublishReceived)] == [b"small"]


def test_exactly_the_limit_is_accepted_in_several_frames() -> None:
    peer = opened(max_message_size=1000)
    events = peer.send_raw(publish_frames(1, b"y" * 1000, chunk=300))
    assert [len(e.body) for e in of_type(events, PublishReceived)] == [1000]
    events = peer.send_raw(publish_frames(1, b"y" * 1001, chunk=300))
    assert of_type(events, ChannelClosed) and not of_type(events, PublishReceived)
    assert peer.conn.state is ConnectionState.OPEN
