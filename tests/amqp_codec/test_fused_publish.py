"""A decoder that fuses publishes returns the same frames as one that does not, once each
PublishFrame is expanded back into the frames it stands for; errors are the same too."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.amqp import spec
from broker.amqp.codec import (
    BodyFrame,
    FrameDecoder,
    HeaderFrame,
    MethodFrame,
    PublishFrame,
    encode_content,
    encode_method,
    encode_properties,
)

from .strategies import properties, shortstr

FRAME_MAX = 4096


def publish(channel: int, body: bytes, props: spec.BasicProperties | None = None, exchange: str = "",
            routing_key: str = "q", frame_max: int = FRAME_MAX) -> bytes:
    raw = encode_properties(props or spec.BasicProperties())
    return encode_method(channel, spec.BasicPublish(0, exchange, routing_key, False, False)) + encode_content(
        channel, 60, raw, body, frame_max
    )


def expand(frames: list) -> list:
    out = []
    for f in frames:
        out.extend(f.frames() if type(f) is PublishFrame else [f])
    return out


def test_publish_with_header_and_one_body_frame_is_one_record():
    props = spec.BasicProperties(content_type="text/plain", delivery_mode=2)
    data = publish(3, b"hello", props, "x", "rk")
    frames, error = FrameDecoder(FRAME_MAX, fuse_publishes=True).feed(data)
    assert error is None
    (frame,) = frames
    assert type(frame) is PublishFrame
    assert frame.channel == 3 and frame.method == spec.BasicPublish(0, "x", "rk", False, False)
    assert (frame.class_id, frame.body_size, frame.payload) == (60, 5, b"hello")
    assert frame.properties == props and frame.raw_properties == encode_properties(props)
    plain, _ = FrameDecoder(FRAME_MAX).feed(data)
    assert frame.frames() == plain


def test_empty_body_fuses_without_a_body_frame():
    frames, error = FrameDecoder(FRAME_MAX, fuse_publishes=True).feed(publish(1, b""))
    assert error is None and [type(f) for f in frames] == [PublishFrame]
    assert [type(f) for f in frames[0].frames()] == [MethodFrame, HeaderFrame]


def test_unusual_shapes_stay_separate_frames():
    decoder = FrameDecoder(FRAME_MAX, fuse_publishes=True)
    # Body in two frames.
    frames, _ = decoder.feed(publish(1, b"x" * 6000))
    assert [type(f) for f in frames] == [MethodFrame, HeaderFrame, BodyFrame, BodyFrame]
    # Content split across reads: the method frame comes alone, the rest later.
    data = publish(1, b"abc")
    cut = len(data) - 3
    frames, _ = decoder.feed(data[:cut])
    assert [type(f) for f in frames] == [MethodFrame, HeaderFrame]
    frames, _ = decoder.feed(data[cut:])
    assert [type(f) for f in frames] == [BodyFrame]
    # Header on another channel than the method.
    method = encode_method(1, spec.BasicPublish(0, "", "q", False, False))
    content = encode_content(2, 60, encode_properties(spec.BasicProperties()), b"z", FRAME_MAX)
    frames, _ = decoder.feed(method + content)
    assert [type(f) for f in frames] == [MethodFrame, HeaderFrame, BodyFrame]


def test_a_malformed_header_is_reported_as_without_fusing():
    method = encode_method(1, spec.BasicPublish(0, "", "q", False, False))
    # Properties say content-type is present but its string overruns the header.
    header_payload = struct.pack(">HHQ", 60, 0, 1) + struct.pack(">H", 0x8000) + b"\x09ab"
    header = struct.pack(">BHI", 2, 1, len(header_payload)) + header_payload + b"\xce"
    body = struct.pack(">BHI", 3, 1, 1) + b"z\xce"
    fused = FrameDecoder(FRAME_MAX, fuse_publishes=True).feed(method + header + body)
    plain = FrameDecoder(FRAME_MAX).feed(method + header + body)
    assert fused == plain
    assert fused[1] is not None and fused[1].code == spec.SYNTAX_ERROR


# A stream of frames of many shapes: publishes (one or several body frames, with or
# without properties and headers, on one or two channels), other methods, heartbeats,
# stray headers/bodies, and now and then a broken frame end.
@st.composite
def streams(draw: st.DrawFn) -> bytes:
    parts = []
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["publish", "publish", "publish", "ack", "heartbeat", "stray", "broken"]))
        channel = draw(st.sampled_from([1, 2]))
        if kind == "publish":
            body = draw(st.binary(max_size=9000))
            props = draw(properties()) if draw(st.booleans()) else spec.BasicProperties()
            parts.append(publish(channel, body, props, draw(shortstr(20)), draw(shortstr(20))))
        elif kind == "ack":
            parts.append(encode_method(channel, spec.BasicAck(draw(st.integers(0, 2**64 - 1)), draw(st.booleans()))))
        elif kind == "heartbeat":
            parts.append(b"\x08\x00\x00\x00\x00\x00\x00\xce")
        elif kind == "stray":
            parts.append(encode_content(channel, 60, encode_properties(spec.BasicProperties()), b"stray", FRAME_MAX))
        else:
            frame = publish(channel, b"broken")
            at = draw(st.integers(0, len(frame) - 1))
            parts.append(frame[:at] + b"\x00" + frame[at + 1 :])
    return b"".join(parts)


@settings(max_examples=300, deadline=None)
@given(data=streams(), cuts=st.lists(st.integers(1, 20000), max_size=6))
def test_fused_equals_unfused_at_any_read_boundaries(data, cuts):
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    fused, plain = FrameDecoder(FRAME_MAX, fuse_publishes=True), FrameDecoder(FRAME_MAX)
    fused_frames, plain_frames = [], []
    fused_error = plain_error = None
    for a, b in zip(points, points[1:]):
        frames, fused_error = fused.feed(data[a:b])
        fused_frames += frames
        frames, plain_error = plain.feed(data[a:b])
        plain_frames += frames
    assert expand(fused_frames) == plain_frames
    assert fused_error == plain_error
