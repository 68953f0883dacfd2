"""Connections: login and vhost refusals, heartbeats, and bad input on the socket
(protocol header, malformed frames), each while another client keeps working."""

from __future__ import annotations

import time

import pika
import pytest
from pamqp import body, commands, header, heartbeat

from tests.integration.conftest import connect, get_body, unique
from tests.integration.raw_amqp import PROTOCOL_HEADER, RawClient


def _still_works(conn) -> None:
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"alive")
    assert get_body(ch, q) == b"alive"
    ch.close()


def _host_port(url: str) -> tuple[str, int]:
    p = pika.URLParameters(url)
    return p.host, p.port


@pytest.mark.parametrize("credentials", ["guest:wrong", "nobody:guest"])
def test_bad_credentials_are_refused_with_403(amqp_url, conn, credentials):
    url = amqp_url.replace("guest:guest", credentials)
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as info:
        connect(url)
    assert "(403) 'ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. " \
           "For details see the broker logfile.'" in str(info.value)
    _still_works(conn)


def test_missing_vhost_is_refused_with_530(amqp_url, conn):
    vhost = unique("no-such-vhost")
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as info:
        connect(amqp_url + vhost)
    assert f"(530) 'NOT_ALLOWED - vhost {vhost} not found'" in str(info.value)
    _still_works(conn)


def test_pika_heartbeat_keeps_an_idle_connection_open(amqp_url):
    c = connect(amqp_url, heartbeat=2)
    try:
        assert c._impl.params.heartbeat == 2
        # Idle (no application traffic) for three intervals; pika and the node exchange heartbeats.
        c.sleep(6)
        assert c.is_open
        _still_works(c)
    finally:
        c.close()


def test_server_sends_heartbeats_and_drops_a_silent_client(amqp_url):
    raw = RawClient(*_host_port(amqp_url))
    raw.handshake(heartbeat=1)
    started = time.monotonic()
    frames = raw.frames(timeout=8)
    # A heartbeat before giving up, then the socket closes (no close method: the peer is
    # presumed dead) after two silent intervals.
    assert frames and all(isinstance(f, heartbeat.Heartbeat) and ch == 0 for _t, ch, f in frames)
    assert raw.eof
    assert time.monotonic() - started < 6
    raw.close()


def test_heartbeats_from_the_client_keep_the_connection(amqp_url):
    raw = RawClient(*_host_port(amqp_url))
    raw.handshake(heartbeat=1)
    deadline = time.monotonic() + 2.6  # past the two intervals a silent client gets
    while time.monotonic() < deadline:
        raw.send(heartbeat.Heartbeat.marshal())
        raw.frames(timeout=0.4)
    assert not raw.eof
    raw.close()


@pytest.mark.parametrize("header", [b"AMQP\x00\x00\x09\x00", b"AMQP\x00\x01\x00\x00", b"GET / HTTP/1.1\r\n\r\n"])
def test_wrong_protocol_header_gets_ours_and_a_close(amqp_url, conn, header):
    raw = RawClient(*_host_port(amqp_url))
    raw.send(header)
    assert raw.read_until_eof(timeout=5) == PROTOCOL_HEADER
    assert raw.eof
    raw.close()
    _still_works(conn)


# (what is sent after the handshake, reply code, reply text, class id, method id) — the
# texts are RabbitMQ 3.10's (rabbit_reader / rabbit_command_assembler renderings).
BAD_INPUT = {
    "garbage": (b"hello world this is garbage\r\n", 501,
                "FRAME_ERROR - type 104, all octets = <<>>: {frame_too_large,1819222135,131064}", 0, 0),
    "bad-frame-end": (b"\x01\x00\x01\x00\x00\x00\x04\x00\x3c\x00\x0a\xcd", 501,
                      "FRAME_ERROR - type 1, all octets = <<0,60,0,10>>: {invalid_frame_end_marker,205}", 0, 0),
    "unknown-frame-type": (b"\x09\x00\x00\x00\x00\x00\x00\xce", 501,
                           "FRAME_ERROR - type 9, all octets = <<>>: unknown_frame", 0, 0),
    "body-without-method": (b"\x03\x00\x01\x00\x00\x00\x01x\xce", 505,
                            "UNEXPECTED_FRAME - expected method frame, got non method frame instead", 0, 0),
    "heartbeat-on-a-channel": (b"\x08\x00\x01\x00\x00\x00\x00\xce", 505,
                               "UNEXPECTED_FRAME - type 8, all octets = <<>>", 0, 0),
    # RabbitMQ 3.10 drops the socket without a close here; Leveret says why first.
    "unknown-method": (b"\x01\x00\x00\x00\x00\x00\x04\x00\x0a\x00\x63\xce", 540,
                       "NOT_IMPLEMENTED - unknown method class_id 10 method_id 99", 10, 99),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_after_the_handshake_closes_with_rabbitmq_text(amqp_url, conn, case):
    data, code, text, class_id, method_id = BAD_INPUT[case]
    raw = RawClient(*_host_port(amqp_url))
    raw.handshake()
    raw.send(data)
    frames = raw.frames(timeout=5, stop_after=1)
    assert frames, "no connection.close"
    _t, channel, close = frames[0]
    assert channel == 0 and isinstance(close, commands.Connection.Close)
    assert (close.reply_code, close.reply_text, close.class_id, close.method_id) == \
        (code, text, class_id, method_id)
    # After a frame error the stream is out of sync and Leveret closes the socket at once;
    # RabbitMQ sometimes waits for close-ok first. Either way the socket ends.
    try:
        raw.send_frame(0, commands.Connection.CloseOk())
    except OSError:
        pass
    assert raw.frames(timeout=5) == []
    assert raw.eof
    raw.close()
    _still_works(conn)


def test_method_on_a_channel_that_is_not_open(amqp_url, conn):
    raw = RawClient(*_host_port(amqp_url))
    raw.handshake()
    raw.send_frame(5, commands.Basic.Qos(prefetch_count=1))
    close = raw.expect(commands.Connection.Close)
    assert (close.reply_code, close.reply_text, close.class_id, close.method_id) == \
        (504, "CHANNEL_ERROR - expected 'channel.open'", 60, 10)
    raw.close()
    _still_works(conn)


def _publish_start(raw: RawClient, body_size: int) -> None:
    raw.send_frame(1, commands.Basic.Publish(exchange="", routing_key="nowhere"))
    raw.send_frame(1, header.ContentHeader(0, body_size, commands.Basic.Properties()))


# Sent on an open channel 1: (frames, reply code, reply text, class id, method id), as
# RabbitMQ 3.10.8 answers them (compared by hand).
CHANNEL_MISUSE = {
    "second-channel-open": (lambda r: r.send_frame(1, commands.Channel.Open()),
                            504, "CHANNEL_ERROR - second 'channel.open' seen", 20, 10),
    "method-instead-of-header": (
        lambda r: (r.send_frame(1, commands.Basic.Publish(exchange="", routing_key="x")),
                   r.send_frame(1, commands.Basic.Qos(prefetch_count=1))),
        505, "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead",
        60, 40),
    "header-instead-of-body": (
        lambda r: (_publish_start(r, 10), r.send_frame(1, header.ContentHeader(0, 10, commands.Basic.Properties()))),
        505, "UNEXPECTED_FRAME - expected content body, got non content body frame instead", 60, 40),
    "header-of-another-class": (
        lambda r: (r.send_frame(1, commands.Basic.Publish(exchange="", routing_key="x")),
                   r.send(b"\x02\x00\x01\x00\x00\x00\x0e\x00\x0a\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01"
                          b"\x00\x00\xce")),
        505, "UNEXPECTED_FRAME - expected content header for class 60, got one for class 10 instead", 60, 40),
    "close-ok-without-close": (lambda r: r.send_frame(1, commands.Channel.CloseOk()),
                               503, "COMMAND_INVALID - unimplemented method", 20, 41),
    "ack-on-unopened-channel": (lambda r: r.send_frame(2, commands.Basic.Ack(delivery_tag=1)),
                                504, "CHANNEL_ERROR - expected 'channel.open'", 60, 80),
    "channel-method-on-channel-zero": (lambda r: r.send_frame(0, commands.Basic.Qos(prefetch_count=1)),
                                       504, "CHANNEL_ERROR - unexpected method in connection state running",
                                       60, 10),
    # RabbitMQ 3.10 waits forever for the rest of such a body; Leveret refuses the frame.
    "body-longer-than-declared": (lambda r: (_publish_start(r, 2), r.send_frame(1, body.ContentBody(b"xyz"))),
                                  501, "FRAME_ERROR - content body frame exceeds remaining content size", 60, 40),
}


@pytest.mark.parametrize("case", list(CHANNEL_MISUSE))
def test_channel_misuse_closes_the_connection_with_rabbitmq_text(amqp_url, conn, case):
    send, code, text, class_id, method_id = CHANNEL_MISUSE[case]
    raw = RawClient(*_host_port(amqp_url))
    raw.handshake()
    raw.send_frame(1, commands.Channel.Open())
    raw.expect(commands.Channel.OpenOk)
    send(raw)
    close = raw.expect(commands.Connection.Close)
    assert (close.reply_code, close.reply_text, close.class_id, close.method_id) == \
        (code, text, class_id, method_id)
    raw.close()
    _still_works(conn)


def test_abrupt_disconnect_mid_publish_leaves_the_node_serving(amqp_url, conn):
    raw = RawClient(*_host_port(amqp_url))
    raw.handshake()
    raw.send_frame(1, commands.Channel.Open())
    raw.expect(commands.Channel.OpenOk)
    raw.send_frame(1, commands.Basic.Publish(exchange="", routing_key="nowhere"))
    raw.close()  # header and body never come
    _still_works(conn)
