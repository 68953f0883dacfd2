"""A client may pipeline its handshake with what follows: frames after tune-ok in the
same read are held to the negotiated frame_max, not to the pre-tune minimum."""

from __future__ import annotations

from pamqp import commands as pc

from broker.amqp.connection import ConnectionState, PublishReceived

from .peer import CAPABILITIES, Peer, marshal, publish_frames

HEADER = b"AMQP\x00\x00\x09\x01"


def _pipelined(frame_max: int, body: bytes) -> bytes:
    return b"".join([
        HEADER,
        marshal(pc.Connection.StartOk(client_properties={"capabilities": CAPABILITIES}, mechanism="PLAIN",
                                      response="\0guest\0guest")),
        marshal(pc.Connection.TuneOk(channel_max=16, frame_max=frame_max, heartbeat=0)),
        marshal(pc.Connection.Open(virtual_host="/")),
        marshal(pc.Channel.Open(), channel=1),
        publish_frames(1, body),  # one body frame of len(body) octets
    ])


def test_large_frame_right_after_tune_ok_in_the_same_read() -> None:
    peer = Peer()
    body = bytes(range(256)) * 40  # 10240 octets: above the 4096 pre-tune limit
    peer.send_raw(_pipelined(131072, body))
    assert peer.conn.state is ConnectionState.OPEN
    published = [e for e in peer.events if isinstance(e, PublishReceived)]
    assert [p.body for p in published] == [body]


def test_pipelined_frame_above_the_negotiated_limit_is_still_refused() -> None:
    peer = Peer()
    peer.send_raw(_pipelined(8192, b"x" * 10000))
    frames = peer.received()
    close = frames[-1][1]
    assert isinstance(close, pc.Connection.Close)
    assert close.reply_code == 501
    assert close.reply_text == "FRAME_ERROR - type 3, all octets = <<>>: {frame_too_large,10000,8184}"
    assert peer.conn.state is ConnectionState.CLOSED


def test_handshake_split_at_every_octet_boundary_still_opens() -> None:
    data = _pipelined(131072, b"hello")
    for cut in range(1, len(data)):
        peer = Peer()
        peer.send_raw(data[:cut])
        peer.send_raw(data[cut:])
        assert peer.conn.state is ConnectionState.OPEN, cut
        assert [e.body for e in peer.events if isinstance(e, PublishReceived)] == [b"hello"], cut
