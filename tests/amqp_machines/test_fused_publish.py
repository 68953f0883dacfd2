"""The connection machine answers a fused publish (header and body in the same read)
exactly as it answers the same octets frame by frame: same events, same output."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands as pc

from .peer import opened, publish_frames


def run(chunks: list[bytes], fuse: bool) -> tuple[list, bytes]:
    peer = opened()
    peer.conn._decoder.fuse_publishes = fuse
    events: list = []
    out = b""
    for chunk in chunks:
        events += peer.conn.receive_data(chunk)
        # The node's side of confirms, so nacks/acks and their coalescing show in the output.
        for e in events:
            if getattr(e, "seq", None) is not None and e.seq % 3:
                peer.conn.confirm(e.channel, e.seq)
        out += peer.conn.data_to_send()
    return events, out


# Methods that change how a channel takes the publishes after them.
SETUP = {
    "confirm": (pc.Confirm.Select(), 1),
    "tx": (pc.Tx.Select(), 1),
    "commit": (pc.Tx.Commit(), 1),
    "close": (pc.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0), 1),
    "open2": (pc.Channel.Open(), 2),
}


@st.composite
def sessions(draw: st.DrawFn) -> bytes:
    from pamqp import frame as pframe

    parts = []
    for _ in range(draw(st.integers(1, 10))):
        kind = draw(st.sampled_from(["publish", "publish", "publish", "immediate", "half", *SETUP]))
        channel = draw(st.sampled_from([1, 2]))
        if kind == "publish":
            body = draw(st.binary(max_size=300))
            parts.append(publish_frames(channel, body, chunk=draw(st.sampled_from([None, None, 7]))))
        elif kind == "immediate":
            parts.append(pframe.marshal(pc.Basic.Publish(routing_key="q", immediate=True), channel)
                         + publish_frames(channel, b"i")[len(pframe.marshal(pc.Basic.Publish(routing_key="q"), channel)):])
        elif kind == "half":
            # A publish whose body never comes before the next method: an error either way.
            parts.append(publish_frames(channel, b"abc")[:-11])
        else:
            method, number = SETUP[kind]
            parts.append(pframe.marshal(method, number))
    return b"".join(parts)


@settings(max_examples=150, deadline=None)
@given(data=sessions(), cuts=st.lists(st.integers(1, 5000), max_size=4))
def test_fused_and_frame_by_frame_agree(data, cuts):
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    chunks = [data[a:b] for a, b in zip(points, points[1:]) if b > a]
    assert run(chunks, fuse=True) == run(chunks, fuse=False)


def test_max_message_size_applies_to_fused_publishes():
    fused = run([publish_frames(1, b"x" * 200)], fuse=True)
    plain = run([publish_frames(1, b"x" * 200)], fuse=False)
    assert fused == plain
    peer = opened(max_message_size=100)
    events = peer.send_raw(publish_frames(1, b"x" * 200))
    assert [type(e).__name__ for e in events] == ["ChannelClosed"]
    (_, close), = peer.methods()
    assert close.reply_code == 406 and "larger than configured max size 100" in close.reply_text


def test_each_channel_mode_before_a_publish():
    from pamqp import frame as pframe

    scripts = [["confirm"], ["tx"], ["tx", "commit"], ["close"], ["open2"], ["confirm", "close"]]
    for script in scripts:
        data = b"".join(pframe.marshal(*SETUP[k]) for k in script) + publish_frames(1, b"body") * 2
        assert run([data], fuse=True) == run([data], fuse=False), script
    # A publish whose header and body are still to come when the next publish arrives.
    data = publish_frames(1, b"abc")[:-11] + publish_frames(1, b"next")
    assert run([data], fuse=True) == run([data], fuse=False)
