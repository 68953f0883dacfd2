"""`FrameDecoder.feed_one`: one frame at a time, the rest kept for the next call."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from pamqp import body as pbody
from pamqp import commands as pc
from pamqp import frame as pframe
from pamqp import heartbeat as pheartbeat

from broker.amqp import codec

FRAMES = [
    pframe.marshal(pc.Connection.StartOk(client_properties={"a": 1}, mechanism="PLAIN", response="\0u\0p"), 0),
    pframe.marshal(pheartbeat.Heartbeat(), 0),
    pframe.marshal(pc.Connection.TuneOk(channel_max=5, frame_max=4096, heartbeat=0), 0),
    pframe.marshal(pbody.ContentBody(b"x" * 300), 3),
]


@given(st.lists(st.sampled_from(FRAMES), max_size=8), st.lists(st.integers(0, 40), max_size=10))
def test_feed_one_then_feed_gives_what_feed_alone_gives(frames: list[bytes], cuts: list[int]) -> None:
    data = b"".join(frames)
    expected, error = codec.FrameDecoder(4096).feed(data)
    assert error is None
    decoder = codec.FrameDecoder(4096)
    got = []
    pos = 0
    for cut in cuts:  # a few frames one by one, from reads cut anywhere
        chunk, pos = data[pos:pos + cut], pos + cut
        frame, error = decoder.feed_one(chunk)
        assert error is None
        while frame is not None:
            got.append(frame)
            frame, error = decoder.feed_one(b"")
            assert error is None
    rest, error = decoder.feed(data[pos:])  # then the rest in bulk
    assert error is None
    assert got + rest == expected
    assert decoder.buffered == 0


def test_feed_one_reports_a_frame_too_large_from_its_header() -> None:
    decoder = codec.FrameDecoder(4096)
    frame, error = decoder.feed_one(b"\x01\x00\x00\x00\x01\x00\x00")
    assert frame is None and error is not None and error.code == 501
    assert decoder.feed_one(b"more") == (None, error)
