"""Protocol header, SASL, tune, connection.open and connection.close, driven with pamqp frames."""

from __future__ import annotations

import pytest
from pamqp import commands as pc
from pamqp import header as pheader

from broker.amqp import spec
from broker.amqp.connection import ConnectionClosed, ConnectionOpened, ConnectionState

from .peer import Peer, new_connection, of_type

ACCESS_REFUSED_TEXT = (
    "ACCESS_REFUSED - Login was refused using authentication mechanism {}. For details see the broker logfile."
)


def test_connection_start_announces_rabbitmq_capabilities() -> None:
    peer = Peer()
    start = peer.header()
    assert (start.version_major, start.version_minor) == (0, 9)
    assert start.mechanisms == "PLAIN AMQPLAIN"
    assert start.locales == "en_US"
    caps = start.server_properties["capabilities"]
    for name in (
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ):
        assert caps[name] is True, name
    assert {"product", "version", "platform"} <= set(start.server_properties)


def test_header_split_across_reads_and_frames_in_same_read() -> None:
    peer = Peer()
    assert peer.send_raw(b"AMQ") == []
    assert peer.conn.data_to_send() == b""
    peer.send_raw(b"P\x00\x00\x09\x01")
    _, start = peer.one()
    assert isinstance(start, pc.Connection.Start)


def test_wrong_header_is_answered_with_ours_and_closed() -> None:
    peer = Peer()
    events = peer.send_raw(b"GET / HTTP/1.1\r\n\r\n")
    assert peer.conn.data_to_send() == spec.PROTOCOL_HEADER
    assert peer.conn.state is ConnectionState.CLOSED
    assert not peer.conn.handshake_failed  # refused at once, as RabbitMQ does: no delay due
    (closed,) = of_type(events, ConnectionClosed)
    assert closed.code == 0 and "did not start with AMQP protocol header" in closed.text
    # Nothing is read after that.
    assert peer.send_raw(b"AMQP\x00\x00\x09\x01") == []
    assert peer.conn.data_to_send() == b""


def test_other_amqp_versions_are_refused_with_0_9_1() -> None:
    for header in (b"AMQP\x00\x00\x08\x00", b"AMQP\x00\x01\x00\x00", b"AMQP\x03\x01\x00\x00"):
        peer = Peer()
        peer.send_raw(header)
        (frame,) = [f for _, f in peer.received()]
        assert isinstance(frame, pheader.ProtocolHeader)
        assert (frame.major_version, frame.minor_version, frame.revision) == (0, 9, 1)
        assert peer.conn.state is ConnectionState.CLOSED


def test_amqp_0_9_header_is_served_as_0_9_1() -> None:
    peer = Peer()
    peer.send_raw(b"AMQP\x01\x01\x00\x09")
    _, start = peer.one()
    assert isinstance(start, pc.Connection.Start)


def test_full_handshake_plain() -> None:
    peer = Peer()
    peer.header()
    assert peer.start_ok() == []
    _, tune = peer.one()
    assert isinstance(tune, pc.Connection.Tune)
    assert (tune.channel_max, tune.frame_max, tune.heartbeat) == (2047, 131072, 60)
    assert peer.tune_ok(channel_max=100, frame_max=65536, heartbeat=30) == []
    assert peer.conn.data_to_send() == b""  # tune-ok has no reply
    events = peer.send(pc.Connection.Open(virtual_host="/"))
    ch, ok = peer.one()
    assert isinstance(ok, pc.Connection.OpenOk)
    (opened,) = events
    assert opened == ConnectionOpened("guest", "/", opened.client_properties, 100, 65536, 30)
    assert opened.client_properties["product"] == "test"
    assert peer.conn.state is ConnectionState.OPEN
    assert (peer.conn.channel_max, peer.conn.frame_max, peer.conn.heartbeat) == (100, 65536, 30)


def test_full_handshake_amqplain() -> None:
    peer = Peer()
    peer.header()
    peer.start_ok(user="alice", password="s3cret", mechanism="AMQPLAIN")
    _, tune = peer.one()
    assert isinstance(tune, pc.Connection.Tune)
    peer.tune_ok()
    events = peer.send(pc.Connection.Open(virtual_host="private"))
    assert isinstance(peer.one()[1], pc.Connection.OpenOk)
    assert events[0].username == "alice" and events[0].vhost == "private"


def test_handshake_in_one_read() -> None:
    from .peer import marshal

    conn = new_connection()
    data = (
        b"AMQP\x00\x00\x09\x01"
        + marshal(pc.Connection.StartOk(client_properties={}, mechanism="PLAIN", response="\0guest\0guest"))
        + marshal(pc.Connection.TuneOk(channel_max=10, frame_max=4096, heartbeat=0))
        + marshal(pc.Connection.Open(virtual_host="/"))
        + marshal(pc.Channel.Open(), channel=1)
    )
    peer = Peer(conn)
    events = peer.send_raw(data)
    names = [type(f).__name__ for _, f in peer.received()]
    assert names == ["Start", "Tune", "OpenOk", "OpenOk"]
    assert [type(e).__name__ for e in events] == ["ConnectionOpened", "ChannelOpened"]


def test_bad_password_with_authentication_failure_close() -> None:
    peer = Peer()
    peer.header()
    events = peer.start_ok(password="wrong")
    _, close = peer.one()
    assert isinstance(close, pc.Connection.Close)
    assert close.reply_code == 403
    assert close.reply_text == ACCESS_REFUSED_TEXT.format("PLAIN")
    assert (close.class_id, close.method_id) == (0, 0)
    assert peer.conn.state is ConnectionState.CLOSED and peer.conn.handshake_failed
    (closed,) = events
    assert closed.code == 403 and "invalid credentials" in closed.text  # the detail stays in the logs


def test_bad_password_amqplain_names_the_mechanism() -> None:
    peer = Peer()
    peer.header()
    peer.start_ok(password="wrong", mechanism="AMQPLAIN")
    _, close = peer.one()
    assert close.reply_text == ACCESS_REFUSED_TEXT.format("AMQPLAIN")


def test_bad_password_without_capability_is_dropped_silently() -> None:
    peer = Peer()
    peer.header()
    events = peer.start_ok(password="wrong", capabilities={})
    assert peer.conn.data_to_send() == b""
    assert peer.conn.state is ConnectionState.CLOSED
    assert of_type(events, ConnectionClosed)[0].code == 403


def test_unknown_mechanism_drops_the_client() -> None:
    # RabbitMQ throws a handshake error in state 'starting': no close method, just the socket.
    peer = Peer()
    peer.header()
    events = peer.send(pc.Connection.StartOk(client_properties={}, mechanism="CRAM-MD5", response="x"))
    assert peer.conn.data_to_send() == b""
    assert peer.conn.state is ConnectionState.CLOSED
    (closed,) = events
    assert (closed.code, closed.text) == (503, "COMMAND_INVALID - unknown authentication mechanism 'CRAM-MD5'")
    peer = Peer()
    peer.header()
    (closed,) = peer.send(pc.Connection.StartOk(client_properties={}, mechanism="EXTERNAL", response=""))
    assert closed.text == "COMMAND_INVALID - invalid authentication mechanism 'EXTERNAL'"


def test_malformed_plain_response() -> None:
    peer = Peer()
    peer.header()
    (closed,) = peer.send(pc.Connection.StartOk(client_properties={}, mechanism="PLAIN", response="guestguest"))
    assert closed.code == 502 and closed.text.startswith("SYNTAX_ERROR - response ")
    assert peer.conn.state is ConnectionState.CLOSED


def test_amqplain_missing_password() -> None:
    peer = Peer()
    peer.header()
    from pamqp import encode

    response = encode.field_table({"LOGIN": "guest"})[4:].decode("latin-1")
    (closed,) = peer.send(pc.Connection.StartOk(client_properties={}, mechanism="AMQPLAIN", response=response))
    assert closed.code == 502 and "is missing LOGIN or PASSWORD field" in closed.text


def _tune_fails(**tune: int) -> pc.Connection.Close:
    peer = Peer()
    peer.header()
    peer.start_ok()
    peer.one()
    events = peer.tune_ok(**tune)
    _, close = peer.one()
    assert isinstance(close, pc.Connection.Close)
    assert (close.reply_code, close.class_id, close.method_id) == (530, 10, 30)
    assert peer.conn.state is ConnectionState.CLOSING
    assert of_type(events, ConnectionClosed)[0].code == 530
    # The close handshake completes normally.
    peer.send(pc.Connection.CloseOk())
    assert peer.conn.state is ConnectionState.CLOSED
    return close


def test_tune_frame_max_above_server() -> None:
    close = _tune_fails(frame_max=200000)
    assert close.reply_text == "NOT_ALLOWED - negotiated frame_max = 200000 is higher than the maximum allowed value (131072)"


def test_tune_frame_max_below_minimum() -> None:
    close = _tune_fails(frame_max=1024)
    assert close.reply_text == "NOT_ALLOWED - negotiated frame_max = 1024 is lower than the minimum allowed value (4096)"


def test_tune_frame_max_zero_means_unlimited_which_exceeds_server() -> None:
    close = _tune_fails(frame_max=0)
    assert close.reply_text == "NOT_ALLOWED - negotiated frame_max = 0 is higher than the maximum allowed value (131072)"


def test_tune_channel_max_zero() -> None:
    close = _tune_fails(channel_max=0)
    assert close.reply_text == (
        "NOT_ALLOWED - negotiated channel_max = 0 (no limit) is higher than the maximum allowed value (2047)"
    )


def test_tune_values_below_server_limits_are_adopted() -> None:
    peer = Peer()
    peer.handshake(heartbeat=0, frame_max=8192)
    assert peer.conn.frame_max == 8192 and peer.conn.heartbeat == 0


def test_unknown_vhost() -> None:
    peer = Peer()
    peer.header()
    peer.start_ok()
    peer.one()
    peer.tune_ok()
    events = peer.send(pc.Connection.Open(virtual_host="nope"))
    _, close = peer.one()
    assert (close.reply_code, close.reply_text) == (530, "NOT_ALLOWED - vhost nope not found")
    assert (close.class_id, close.method_id) == (10, 40)
    assert peer.conn.state is ConnectionState.CLOSING
    assert of_type(events, ConnectionClosed)[0].code == 530
    assert not of_type(events, ConnectionOpened)


def test_vhost_access_refused() -> None:
    peer = Peer()
    peer.header()
    peer.start_ok()
    peer.one()
    peer.tune_ok()
    peer.send(pc.Connection.Open(virtual_host="private"))
    _, close = peer.one()
    assert close.reply_text == "NOT_ALLOWED - access to vhost 'private' refused for user 'guest'"


def test_out_of_order_handshake_method_drops_the_client() -> None:
    peer = Peer()
    peer.header()
    (closed,) = peer.send(pc.Connection.Open(virtual_host="/"))
    assert closed.text == "CHANNEL_ERROR - unexpected method in connection state starting"
    assert peer.conn.data_to_send() == b"" and peer.conn.state is ConnectionState.CLOSED


def test_channel_frame_during_handshake_drops_the_client() -> None:
    peer = Peer()
    peer.header()
    (closed,) = peer.send(pc.Channel.Open(), channel=1)
    assert closed.code == 505 and closed.text.startswith("UNEXPECTED_FRAME - type 1, ")
    assert peer.conn.state is ConnectionState.CLOSED


def test_channel_frame_while_opening_gets_a_close() -> None:
    peer = Peer()
    peer.header()
    peer.start_ok()
    peer.one()
    peer.tune_ok()
    peer.send(pc.Channel.Open(), channel=1)
    _, close = peer.one()
    assert close.reply_code == 505 and close.reply_text.startswith("UNEXPECTED_FRAME - type 1, all octets = <<")
    assert peer.conn.state is ConnectionState.CLOSING


def test_client_close_is_answered_and_ends_channels() -> None:
    peer = Peer()
    peer.handshake()
    peer.open_channel(1)
    peer.open_channel(2)
    events = peer.send(pc.Connection.Close(reply_code=200, reply_text="Goodbye", class_id=0, method_id=0))
    _, ok = peer.one()
    assert isinstance(ok, pc.Connection.CloseOk)
    assert [type(e).__name__ for e in events] == ["ChannelClosed", "ChannelClosed", "ConnectionClosed"]
    assert events[-1] == ConnectionClosed(200, "Goodbye", True)
    assert peer.conn.state is ConnectionState.CLOSED


def test_server_close_waits_for_close_ok_and_ignores_the_rest() -> None:
    peer = Peer()
    peer.handshake()
    peer.open_channel(1)
    events = peer.conn.close()
    assert [type(e).__name__ for e in events] == ["ChannelClosed", "ConnectionClosed"]
    _, close = peer.one()
    assert (close.reply_code, close.reply_text) == (
        320,
        "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'",
    )
    assert peer.conn.state is ConnectionState.CLOSING
    from .peer import publish_frames

    assert peer.send_raw(publish_frames(1, b"late")) == []
    assert peer.send(pc.Channel.Open(), channel=5) == []
    assert peer.conn.data_to_send() == b""
    peer.send(pc.Connection.CloseOk())
    assert peer.conn.state is ConnectionState.CLOSED


def test_close_crossing_ours_gets_close_ok() -> None:
    peer = Peer()
    peer.handshake()
    peer.conn.close()
    peer.received()
    assert peer.send(pc.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0)) == []
    _, ok = peer.one()
    assert isinstance(ok, pc.Connection.CloseOk)
    assert peer.conn.state is ConnectionState.CLOSED


@pytest.mark.parametrize(
    "heartbeat, start, deadline",
    [
        pytest.param(5, 100.0, 105.0, id="after-the-heartbeat-interval"),
        pytest.param(0, 0.0, 30.0, id="capped-at-30s-without-heartbeat"),
    ],
)
def test_closing_times_out(heartbeat: int, start: float, deadline: float) -> None:
    peer = Peer()
    peer.handshake(heartbeat=heartbeat)
    peer.conn.close()
    peer.conn.tick(start)
    peer.conn.tick(deadline - 1)
    assert peer.conn.state is ConnectionState.CLOSING
    peer.conn.tick(deadline)
    assert peer.conn.state is ConnectionState.CLOSED


def test_non_connection_method_on_channel_zero() -> None:
    peer = Peer()
    peer.handshake()
    events = peer.send(pc.Basic.Qos(prefetch_count=1), channel=0)
    _, close = peer.one()
    assert (close.reply_code, close.reply_text) == (504, "CHANNEL_ERROR - unexpected method in connection state running")
    assert (close.class_id, close.method_id) == (60, 10)
    assert of_type(events, ConnectionClosed)


def test_content_frame_on_channel_zero() -> None:
    from pamqp import body as pbody

    peer = Peer()
    peer.handshake()
    peer.send(pbody.ContentBody(b"abc"), channel=0)
    _, close = peer.one()
    assert (close.reply_code, close.reply_text) == (505, 'UNEXPECTED_FRAME - type 3, all octets = <<"abc">>')


def test_heartbeat_frames_on_channel_zero_are_fine() -> None:
    from pamqp import heartbeat

    peer = Peer()
    peer.handshake()
    assert peer.send(heartbeat.Heartbeat()) == []
    assert peer.conn.data_to_send() == b""
    assert peer.conn.state is ConnectionState.OPEN


def test_update_secret() -> None:
    peer = Peer()
    peer.handshake()
    peer.send(pc.Connection.UpdateSecret(new_secret="guest", reason="rotation"))
    assert isinstance(peer.one()[1], pc.Connection.UpdateSecretOk)
    # RabbitMQ's internal user database never checks the new secret (its state cannot expire).
    peer.send(pc.Connection.UpdateSecret(new_secret="wrong", reason="rotation"))
    assert isinstance(peer.one()[1], pc.Connection.UpdateSecretOk)
    assert peer.conn.state is ConnectionState.OPEN


def test_blocked_and_unblocked() -> None:
    peer = Peer()
    peer.handshake()
    peer.conn.block("low on memory")
    peer.conn.block("low on memory")  # idempotent
    _, blocked = peer.one()
    assert isinstance(blocked, pc.Connection.Blocked) and blocked.reason == "low on memory"
    peer.conn.unblock()
    assert isinstance(peer.one()[1], pc.Connection.Unblocked)


def test_blocked_not_sent_to_clients_without_the_capability() -> None:
    peer = Peer()
    peer.handshake(capabilities={})
    peer.conn.block("low on memory")
    peer.conn.unblock()
    assert peer.conn.data_to_send() == b""


def test_connection_lost_ends_everything_once() -> None:
    peer = Peer()
    peer.handshake()
    peer.open_channel(3)
    events = peer.conn.connection_lost()
    assert [type(e).__name__ for e in events] == ["ChannelClosed", "ConnectionClosed"]
    assert events[-1].code == 0
    assert peer.conn.connection_lost() == []
    assert peer.conn.state is ConnectionState.CLOSED


def test_server_close_during_handshake_just_drops() -> None:
    peer = Peer()
    peer.header()
    (closed,) = peer.conn.close()
    assert closed.code == 320 and peer.conn.state is ConnectionState.CLOSED
    assert peer.conn.data_to_send() == b""


def test_server_closes_one_channel_with_its_own_text() -> None:
    from .peer import opened

    peer = opened()
    (event,) = peer.conn.close_channel(1, 406, "PRECONDITION_FAILED - delivery acknowledgement timed out", 60, 80)
    assert event.channel == 1
    _, close = peer.one()
    assert (close.reply_code, close.reply_text, close.class_id, close.method_id) == (
        406,
        "PRECONDITION_FAILED - delivery acknowledgement timed out",
        60,
        80,
    )
    assert peer.conn.close_channel(1, 406, "again") == []
    assert peer.conn.deliver(1, "c", "h", "", "q", b"\x00\x00", b"") is None
