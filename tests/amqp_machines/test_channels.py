"""Channel multiplexing, channel close both ways, frame-order and frame-size errors."""

from __future__ import annotations

import struct

from pamqp import body as pbody
from pamqp import commands as pc
from pamqp import header as pheader
from pamqp import frame as pframe

from broker.amqp import codec, spec
from broker.amqp.connection import (
    ChannelClosed,
    ChannelOpened,
    ConnectionClosed,
    ConnectionState,
    MethodReceived,
    PublishReceived,
)

from .peer import Peer, new_connection, of_type, opened, publish_frames


def _connection_close(peer: Peer) -> pc.Connection.Close:
    frames = peer.methods()
    assert len(frames) == 1, frames
    ch, close = frames[0]
    assert ch == 0 and isinstance(close, pc.Connection.Close), close
    assert peer.conn.state is ConnectionState.CLOSING
    return close


def test_channel_open_and_client_close() -> None:
    peer = Peer()
    peer.handshake()
    events = peer.send(pc.Channel.Open(), channel=7)
    assert events == [ChannelOpened(7)]
    assert isinstance(peer.one()[1], pc.Channel.OpenOk)
    events = peer.send(pc.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0), channel=7)
    ch, ok = peer.one()
    assert ch == 7 and isinstance(ok, pc.Channel.CloseOk)
    assert events == [ChannelClosed(7, (), ())]
    assert 7 not in peer.conn.channels
    # The number may be reused right away.
    assert peer.send(pc.Channel.Open(), channel=7) == [ChannelOpened(7)]


def test_second_channel_open() -> None:
    peer = opened()
    peer.send(pc.Channel.Open(), channel=1)
    close = _connection_close(peer)
    assert (close.reply_code, close.reply_text) == (504, "CHANNEL_ERROR - second 'channel.open' seen")
    assert (close.class_id, close.method_id) == (20, 10)


def test_method_on_unopened_channel() -> None:
    peer = opened()
    events = peer.send(pc.Queue.Declare(queue="q"), channel=2)
    close = _connection_close(peer)
    assert (close.reply_code, close.reply_text) == (504, "CHANNEL_ERROR - expected 'channel.open'")
    assert (close.class_id, close.method_id) == (50, 10)
    # Every channel ends for the node, then the connection.
    assert [type(e) for e in events] == [ChannelClosed, ConnectionClosed]


def test_content_on_unopened_channel() -> None:
    peer = opened()
    peer.send(pheader.ContentHeader(0, 3, pc.Basic.Properties()), channel=2)
    close = _connection_close(peer)
    assert close.reply_text == "UNEXPECTED_FRAME - expected method frame, got non method frame instead"


def test_channel_max_reached() -> None:
    peer = Peer()
    peer.header()
    peer.start_ok()
    peer.one()
    peer.tune_ok(channel_max=2)
    peer.send(pc.Connection.Open(virtual_host="/"))
    peer.one()
    peer.open_channel(1)
    peer.open_channel(2)
    peer.send(pc.Channel.Open(), channel=3)
    close = _connection_close(peer)
    assert (close.reply_code, close.reply_text) == (
        530,
        "NOT_ALLOWED - number of channels opened (2) has reached the negotiated channel_max (2)",
    )


def test_channel_number_above_channel_max() -> None:
    peer = Peer()
    peer.header()
    peer.start_ok()
    peer.one()
    peer.tune_ok(channel_max=10)
    peer.send(pc.Connection.Open(virtual_host="/"))
    peer.one()
    peer.send(pc.Channel.Open(), channel=11)
    close = _connection_close(peer)
    assert close.reply_code == 530
    assert close.reply_text == "NOT_ALLOWED - channel number 11 is higher than the negotiated channel_max (10)"


def test_soft_error_closes_only_the_channel() -> None:
    peer = opened()
    peer.open_channel(2)
    events = peer.send(pc.Tx.Commit(), channel=1)
    ch, close = peer.one()
    assert ch == 1 and isinstance(close, pc.Channel.Close)
    assert (close.reply_code, close.reply_text) == (406, "PRECONDITION_FAILED - channel is not transactional")
    assert (close.class_id, close.method_id) == (90, 20)
    assert events == [ChannelClosed(1, (), ())]
    assert peer.conn.state is ConnectionState.OPEN
    # Channel 2 is unaffected.
    peer.send(pc.Basic.Qos(prefetch_count=5), channel=2)
    assert isinstance(peer.one()[1], pc.Basic.QosOk)


def test_closing_channel_ignores_all_but_close_and_close_ok() -> None:
    peer = opened()
    peer.send(pc.Tx.Commit(), channel=1)
    peer.received()
    assert peer.send_raw(publish_frames(1, b"dropped")) == []
    assert peer.send(pc.Queue.Declare(queue="x"), channel=1) == []
    assert peer.send(pc.Channel.Open(), channel=1) == []
    assert peer.conn.data_to_send() == b""
    # A crossing channel.close is answered; close-ok frees the number.
    peer.send(pc.Channel.Close(reply_code=200, reply_text="", class_id=0, method_id=0), channel=1)
    assert isinstance(peer.one()[1], pc.Channel.CloseOk)
    assert 1 in peer.conn.channels
    assert peer.send(pc.Channel.CloseOk(), channel=1) == []
    assert 1 not in peer.conn.channels
    assert peer.send(pc.Channel.Open(), channel=1) == [ChannelOpened(1)]


def test_closing_channel_still_checks_frame_order() -> None:
    peer = opened()
    peer.send(pc.Tx.Commit(), channel=1)
    peer.received()
    peer.send(pbody.ContentBody(b"x"), channel=1)
    close = _connection_close(peer)
    assert close.reply_code == 505


def test_node_closes_a_channel() -> None:
    peer = opened()
    events = peer.conn.protocol_error(1, 404, "no queue 'q' in vhost '/'")
    ch, close = peer.one()
    assert (close.reply_code, close.reply_text, close.class_id) == (404, "NOT_FOUND - no queue 'q' in vhost '/'", 0)
    assert events == [ChannelClosed(1, (), ())]
    # Replies for a closing channel are dropped.
    assert peer.conn.send_method(1, spec.QueueDeclareOk()) is False


def test_node_error_with_method_ids_and_hard_code() -> None:

    peer = opened()
    peer.conn.protocol_error(1, 404, "no queue 'q' in vhost '/'", spec.QueueDeclare)
    _, close = peer.one()
    assert (close.class_id, close.method_id) == (50, 10)
    peer.open_channel(2)
    events = peer.conn.protocol_error(2, 541, "boom", spec.QueueDeclare)
    close = _connection_close(peer)
    assert close.reply_text == "INTERNAL_ERROR - boom"
    assert of_type(events, ConnectionClosed)


def test_long_reply_text_is_clipped_like_rabbitmq() -> None:
    peer = opened()
    peer.conn.protocol_error(1, 404, "x" * 400)
    _, close = peer.one()
    assert len(close.reply_text.encode()) == 255 and close.reply_text.endswith("...")


def test_header_without_publish() -> None:
    peer = opened()
    peer.send(pheader.ContentHeader(0, 3, pc.Basic.Properties()), channel=1)
    close = _connection_close(peer)
    assert (close.reply_code, close.reply_text) == (
        505,
        "UNEXPECTED_FRAME - expected method frame, got non method frame instead",
    )
    assert (close.class_id, close.method_id) == (0, 0)


def test_body_without_header() -> None:
    peer = opened()
    peer.send_raw(
        b"".join(
            [
                pframe.marshal(pc.Basic.Publish(routing_key="q"), 1),
                pframe.marshal(pbody.ContentBody(b"abc"), 1),
            ]
        )
    )
    close = _connection_close(peer)
    assert close.reply_text == (
        "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead"
    )
    assert (close.class_id, close.method_id) == (60, 40)


def test_method_while_body_expected() -> None:

    peer = opened()
    data = (
        pframe.marshal(pc.Basic.Publish(routing_key="q"), 1)
        + pframe.marshal(pheader.ContentHeader(0, 10, pc.Basic.Properties()), 1)
        + pframe.marshal(pbody.ContentBody(b"abc"), 1)
        + pframe.marshal(pc.Basic.Qos(prefetch_count=1), 1)
    )
    events = peer.send_raw(data)
    close = _connection_close(peer)
    assert close.reply_text == "UNEXPECTED_FRAME - expected content body, got non content body frame instead"
    assert (close.class_id, close.method_id) == (60, 40)
    assert not of_type(events, PublishReceived)


def test_second_header_while_body_expected() -> None:
    # RabbitMQ (rabbit_command_assembler, content_body state): the publish is named.
    peer = opened()
    header = pframe.marshal(pheader.ContentHeader(0, 10, pc.Basic.Properties()), 1)
    events = peer.send_raw(pframe.marshal(pc.Basic.Publish(routing_key="q"), 1) + header + header)
    close = _connection_close(peer)
    assert (close.reply_code, close.reply_text) == (
        505, "UNEXPECTED_FRAME - expected content body, got non content body frame instead")
    assert (close.class_id, close.method_id) == (60, 40)
    assert not of_type(events, PublishReceived)


def test_header_for_wrong_class() -> None:

    peer = opened()
    header = pframe.marshal(pheader.ContentHeader(0, 3, pc.Basic.Properties()), 1)
    # Rewrite the class id of the header payload (octets 7-8) to 50.
    header = header[:7] + struct.pack(">H", 50) + header[9:]
    peer.send_raw(pframe.marshal(pc.Basic.Publish(routing_key="q"), 1) + header)
    close = _connection_close(peer)
    assert close.reply_text == "UNEXPECTED_FRAME - expected content header for class 60, got one for class 50 instead"


def test_body_bigger_than_body_size() -> None:

    peer = opened()
    data = (
        pframe.marshal(pc.Basic.Publish(routing_key="q"), 1)
        + pframe.marshal(pheader.ContentHeader(0, 4, pc.Basic.Properties()), 1)
        + pframe.marshal(pbody.ContentBody(b"abc"), 1)
        + pframe.marshal(pbody.ContentBody(b"de"), 1)
    )
    peer.send_raw(data)
    close = _connection_close(peer)
    assert (close.reply_code, close.reply_text) == (501, "FRAME_ERROR - content body frame exceeds remaining content size")
    assert (close.class_id, close.method_id) == (60, 40)


def test_body_size_above_rabbitmq_ceiling() -> None:

    peer = opened()
    peer.send_raw(
        pframe.marshal(pc.Basic.Publish(routing_key="q"), 1)
        + pframe.marshal(pheader.ContentHeader(0, 536_870_913, pc.Basic.Properties()), 1)
    )
    close = _connection_close(peer)
    assert close.reply_text == "FRAME_ERROR - content body size 536870913 exceeds maximum allowed size 536870912"


def test_message_above_max_message_size_is_a_soft_error() -> None:
    peer = opened(max_message_size=10)
    events = peer.send_raw(publish_frames(1, b"x" * 11))
    ch, close = peer.one()
    assert isinstance(close, pc.Channel.Close)
    assert (close.reply_code, close.reply_text) == (
        406,
        "PRECONDITION_FAILED - message size 11 is larger than configured max size 10",
    )
    assert not of_type(events, PublishReceived)


def test_heartbeat_on_a_channel() -> None:
    peer = opened()
    # pamqp always marshals heartbeats on channel 0, so write this one by hand.
    peer.send_raw(b"\x08\x00\x01\x00\x00\x00\x00\xce")
    close = _connection_close(peer)
    assert (close.reply_code, close.reply_text) == (505, "UNEXPECTED_FRAME - type 8, all octets = <<>>")


def test_frame_larger_than_frame_max_is_fatal() -> None:
    peer = Peer(new_connection())
    peer.handshake(frame_max=4096)
    peer.open_channel(1)
    events = peer.send_raw(publish_frames(1, b"x" * 5000))
    ch, close = peer.one()
    assert close.reply_code == 501 and "frame_too_large" in close.reply_text
    # The stream is out of sync: nothing more is read, not even close-ok.
    assert peer.conn.state is ConnectionState.CLOSED
    assert [type(e) for e in events] == [ChannelClosed, ConnectionClosed]


def test_bad_frame_end_is_fatal_but_earlier_frames_count() -> None:

    peer = opened()
    good = pframe.marshal(pc.Queue.Declare(queue="a"), 1)
    bad = bytearray(pframe.marshal(pc.Queue.Declare(queue="b"), 1))
    bad[-1] = 0
    events = peer.send_raw(good + bytes(bad))
    assert isinstance(events[0], MethodReceived) and events[0].method.queue == "a"
    _, close = peer.one()
    assert close.reply_code == 501 and "invalid_frame_end_marker" in close.reply_text
    assert peer.conn.state is ConnectionState.CLOSED


def test_unknown_method_is_not_implemented() -> None:
    peer = opened()
    peer.send_raw(struct.pack(">BHIHH", 1, 1, 4, 60, 999) + b"\xce")
    _, close = peer.one()
    assert close.reply_code == 540 and (close.class_id, close.method_id) == (60, 999)


def test_unimplemented_method_on_a_channel() -> None:
    peer = opened()
    peer.send(pc.Basic.Deliver(consumer_tag="x", delivery_tag=1, exchange="", routing_key="q"), channel=1)
    close = _connection_close(peer)
    assert (close.reply_code, close.reply_text) == (503, "COMMAND_INVALID - unimplemented method")
    assert (close.class_id, close.method_id) == (60, 60)


def test_channel_flow() -> None:
    peer = opened()
    peer.send(pc.Channel.Flow(active=True), channel=1)
    _, ok = peer.one()
    assert isinstance(ok, pc.Channel.FlowOk) and ok.active is True
    peer.send(pc.Channel.Flow(active=False), channel=1)
    close = _connection_close(peer)
    assert (close.reply_code, close.reply_text) == (540, "NOT_IMPLEMENTED - active=false")


def test_publish_immediate_is_not_implemented() -> None:

    peer = opened()
    peer.send_raw(pframe.marshal(pc.Basic.Publish(routing_key="q", immediate=True), 1))
    close = _connection_close(peer)
    assert (close.reply_code, close.reply_text) == (540, "NOT_IMPLEMENTED - immediate=true")


def test_node_methods_are_handed_over() -> None:
    peer = opened()
    methods = [
        pc.Exchange.Declare(exchange="x", exchange_type="topic"),
        pc.Exchange.Delete(exchange="x"),
        pc.Exchange.Bind(destination="a", source="b", routing_key="k"),
        pc.Exchange.Unbind(destination="a", source="b", routing_key="k"),
        pc.Queue.Declare(queue="q"),
        pc.Queue.Bind(queue="q", exchange="x"),
        pc.Queue.Unbind(queue="q", exchange="x"),
        pc.Queue.Purge(queue="q"),
        pc.Queue.Delete(queue="q"),
        pc.Basic.Get(queue="q"),
    ]
    events = peer.send(*methods, channel=1)
    assert [e.method.NAME for e in events] == [
        "exchange.declare",
        "exchange.delete",
        "exchange.bind",
        "exchange.unbind",
        "queue.declare",
        "queue.bind",
        "queue.unbind",
        "queue.purge",
        "queue.delete",
        "basic.get",
    ]
    assert all(isinstance(e, MethodReceived) and e.channel == 1 for e in events)
    assert events[0].method.type == "topic"
    assert peer.conn.data_to_send() == b""  # the node answers these


def test_node_replies_go_out_on_the_channel() -> None:

    peer = opened()
    (event,) = peer.send(pc.Queue.Declare(queue="q"), channel=1)
    assert peer.conn.send_method(1, spec.QueueDeclareOk(queue="q", message_count=3, consumer_count=1))
    ch, ok = peer.one()
    assert ch == 1 and isinstance(ok, pc.Queue.DeclareOk) and ok.message_count == 3
    assert peer.conn.send_method(9, spec.QueueDeclareOk(queue="q")) is False


def test_basic_return_with_content() -> None:

    peer = opened()
    raw = codec.encode_properties(spec.BasicProperties(content_type="text/plain"))
    assert peer.conn.send_content(
        1, spec.BasicReturn(reply_code=312, reply_text="NO_ROUTE", exchange="x", routing_key="k"), raw, b"hi"
    )
    frames = peer.received()
    assert isinstance(frames[0][1], pc.Basic.Return) and frames[0][1].reply_code == 312
    assert frames[1][1].properties.content_type == "text/plain" and frames[1][1].body_size == 2
    assert frames[2][1].value == b"hi"
