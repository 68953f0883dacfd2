"""Before login a peer is not trusted: its frames are parsed as fast as any others (not
octet by octet), it may send only the handshake method the state expects (a heartbeat
or any other frame before tune-ok drops it, silently, as RabbitMQ drops a failing
handshake), and no frame of it may exceed the pre-tune frame_max (4096 octets)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pamqp import commands as pc
from pamqp import heartbeat as pheartbeat

from broker.amqp import codec
from broker.amqp.connection import ConnectionClosed, ConnectionState, PublishReceived

from .peer import CAPABILITIES, Peer, marshal, of_type, publish_frames

HEADER = b"AMQP\x00\x00\x09\x01"
HEARTBEAT = pheartbeat.Heartbeat.marshal()


def _start_ok(padding: int = 0) -> bytes:
    props = {"capabilities": CAPABILITIES, "padding": "p" * padding}
    return marshal(pc.Connection.StartOk(client_properties=props, mechanism="PLAIN", response="\0guest\0guest"))


@pytest.fixture
def decoder_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Octets handed to the frame decoder, one entry per call."""
    calls: list[int] = []
    for name in ("feed", "feed_one"):
        original = getattr(codec.FrameDecoder, name, None)
        if original is None:
            continue

        def counted(self: codec.FrameDecoder, data: bytes, _original=original) -> object:  # type: ignore[no-untyped-def]
            calls.append(len(data))
            return _original(self, data)

        monkeypatch.setattr(codec.FrameDecoder, name, counted)
    yield calls


def test_a_handshake_is_parsed_frame_by_frame_not_octet_by_octet(decoder_calls: list[int]) -> None:
    # A whole pipelined handshake and a publish in one read, with a start-ok near the
    # 4096-octet pre-tune limit: the decoder is asked once per frame at most, however
    # many octets the frames hold (it was asked once per octet: 0.78 CPU-s per MB).
    data = b"".join([
        HEADER,
        _start_ok(padding=3500),
        marshal(pc.Connection.TuneOk(channel_max=16, frame_max=131072, heartbeat=0)),
        marshal(pc.Connection.Open(virtual_host="/")),
        marshal(pc.Channel.Open(), channel=1),
        publish_frames(1, b"x" * 10_000),
    ])
    peer = Peer()
    peer.send_raw(data)
    assert peer.conn.state is ConnectionState.OPEN
    assert [e.body for e in of_type(peer.events, PublishReceived)] == [b"x" * 10_000]
    assert len(decoder_calls) <= 4, decoder_calls


def _dropped_silently(peer: Peer, events: list[object]) -> None:
    assert peer.conn.state is ConnectionState.CLOSED
    assert peer.conn.handshake_failed
    assert peer.conn.data_to_send() == b""  # RabbitMQ answers a failed handshake with nothing
    (closed,) = of_type(events, ConnectionClosed)
    assert closed.code == 505 and not closed.by_client


def test_heartbeat_before_start_ok_drops_the_client() -> None:
    peer = Peer()
    peer.header()
    events = peer.send_raw(HEARTBEAT * 1000)
    _dropped_silently(peer, events)
    (closed,) = of_type(events, ConnectionClosed)
    assert closed.text == "UNEXPECTED_FRAME - type 8, all octets = <<>>"


def _tuning() -> Peer:
    """Logged in; connection.tune read, tune-ok not sent yet."""
    peer = Peer()
    peer.header()
    peer.start_ok()
    (_, tune), = peer.methods()
    assert isinstance(tune, pc.Connection.Tune)
    return peer


def test_heartbeat_before_tune_ok_drops_the_client() -> None:
    peer = _tuning()
    events = peer.send_raw(HEARTBEAT)
    _dropped_silently(peer, events)


def test_nothing_after_the_first_violation_is_parsed(decoder_calls: list[int]) -> None:
    peer = Peer()
    peer.header()
    decoder_calls.clear()
    peer.send_raw(HEARTBEAT * 10_000)
    assert peer.conn.state is ConnectionState.CLOSED
    peer.send_raw(HEARTBEAT * 10_000)  # a closed machine takes nothing more
    assert len(decoder_calls) == 1


def test_heartbeat_while_opening_is_fine() -> None:
    # Heartbeats are negotiated by tune-ok: a client may send one before connection.open.
    peer = _tuning()
    peer.tune_ok(heartbeat=10)
    assert peer.send_raw(HEARTBEAT) == []
    peer.send(pc.Connection.Open(virtual_host="/"))
    assert isinstance(peer.one()[1], pc.Connection.OpenOk)


def test_a_pre_auth_frame_over_the_pre_tune_limit_drops_the_client_at_its_header() -> None:
    peer = Peer()
    peer.header()
    # Only the frame header of a 1 MB method frame: refused before any payload is held.
    events = peer.send_raw(b"\x01\x00\x00\x00\x10\x00\x00")
    assert peer.conn.state is ConnectionState.CLOSED
    (closed,) = of_type(events, ConnectionClosed)
    assert "frame_too_large,1048576,4088" in closed.text


def test_start_ok_split_across_reads_still_logs_in() -> None:
    data = HEADER + _start_ok(padding=200)
    for cut in (9, 15, len(data) - 1):
        peer = Peer()
        peer.send_raw(data[:cut])
        peer.send_raw(data[cut:])
        assert peer.conn.state is ConnectionState.TUNING, cut
