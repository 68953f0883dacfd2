"""Heartbeats and timeouts, driven by the `now` passed to tick()."""

from __future__ import annotations

from broker.amqp import codec, spec
from broker.amqp.connection import ConnectionClosed, ConnectionState

from .peer import Peer, new_connection


def test_heartbeat_sent_after_half_an_interval_of_silence() -> None:
    peer = Peer()
    peer.handshake(heartbeat=10)
    conn = peer.conn
    conn.tick(0.0)
    conn.receive_data(codec.HEARTBEAT)
    conn.tick(4.9)
    assert conn.data_to_send() == b""
    conn.receive_data(codec.HEARTBEAT)
    conn.tick(5.0)
    assert conn.data_to_send() == codec.HEARTBEAT
    conn.receive_data(codec.HEARTBEAT)
    conn.tick(9.9)
    assert conn.data_to_send() == b""
    conn.receive_data(codec.HEARTBEAT)
    conn.tick(10.0)
    assert conn.data_to_send() == codec.HEARTBEAT


def test_other_traffic_postpones_heartbeats() -> None:
    peer = Peer()
    peer.handshake(heartbeat=10)
    peer.open_channel(1)
    conn = peer.conn
    conn.tick(0.0)
    for t in range(1, 30):
        conn.receive_data(codec.HEARTBEAT)
        conn.send_method(1, spec.BasicQosOk())  # any outgoing frame counts as traffic
        assert codec.HEARTBEAT not in conn.data_to_send()
        assert conn.tick(float(t)) == []
    # Silence on our side: a heartbeat within half an interval.
    conn.receive_data(codec.HEARTBEAT)
    conn.tick(34.0)
    assert conn.data_to_send() == codec.HEARTBEAT


def test_silent_client_is_dropped_after_two_intervals() -> None:
    peer = Peer()
    peer.handshake(heartbeat=10)
    peer.open_channel(1)
    conn = peer.conn
    conn.tick(0.0)
    assert conn.tick(19.9) == []
    conn.data_to_send()
    events = conn.tick(20.0)
    assert [type(e).__name__ for e in events] == ["ChannelClosed", "ConnectionClosed"]
    assert events[-1] == ConnectionClosed(0, "missed heartbeats from client, timeout: 10s", False)
    # RabbitMQ closes the socket without a close method.
    assert conn.data_to_send() in (b"", codec.HEARTBEAT)
    assert conn.state is ConnectionState.CLOSED


def test_any_received_bytes_count_as_life() -> None:
    peer = Peer()
    peer.handshake(heartbeat=10)
    conn = peer.conn
    conn.tick(0.0)
    for t in range(1, 100):
        if t % 15 == 0:
            conn.receive_data(codec.HEARTBEAT)
        assert conn.tick(float(t)) == []
    assert conn.state is ConnectionState.OPEN


def test_heartbeat_zero_disables_both_directions() -> None:
    peer = Peer()
    peer.handshake(heartbeat=0)
    conn = peer.conn
    conn.tick(0.0)
    assert conn.tick(10_000.0) == []
    assert conn.data_to_send() == b""
    assert conn.state is ConnectionState.OPEN


def test_blocked_connection_is_not_timed_out() -> None:
    peer = Peer()
    peer.handshake(heartbeat=10)
    conn = peer.conn
    conn.tick(0.0)
    conn.block("low on memory")
    assert conn.tick(100.0) == []
    conn.unblock()
    assert conn.tick(119.0) == []
    assert conn.tick(120.0)[-1].text.startswith("missed heartbeats")


def test_handshake_timeout() -> None:
    conn = new_connection(handshake_timeout=10.0)
    conn.tick(0.0)
    conn.receive_data(b"AMQP\x00\x00\x09\x01")
    assert conn.tick(9.0) == []
    (closed,) = conn.tick(10.0)
    assert closed.code == 0 and "handshake timeout" in closed.text
    assert conn.state is ConnectionState.CLOSED and not conn.handshake_failed  # closed at once


def test_no_heartbeats_before_tune_ok() -> None:
    conn = new_connection()
    conn.receive_data(b"AMQP\x00\x00\x09\x01")
    conn.data_to_send()
    conn.tick(0.0)
    conn.tick(5.0)
    assert conn.data_to_send() == b""
