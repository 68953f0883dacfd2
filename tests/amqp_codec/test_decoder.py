"""FrameDecoder: content splitting, arbitrary chunking, frame_max, malformed input."""

from __future__ import annotations

import struct

import pamqp.frame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.amqp import spec
from broker.amqp.codec import (
    HEARTBEAT,
    AMQPFrameError,
    BodyFrame,
    FrameDecoder,
    HeaderFrame,
    HeartbeatFrame,
    MethodFrame,
    encode_content,
    encode_method,
    encode_properties,
)

from .strategies import ALL_METHODS, methods, properties


def frame(frame_type: int, channel: int, payload: bytes, end: int = 0xCE) -> bytes:
    return struct.pack(">BHI", frame_type, channel, len(payload)) + payload + bytes([end])


@settings(max_examples=150, deadline=None)
@given(
    body=st.binary(max_size=3000),
    frame_max=st.one_of(st.integers(9, 300), st.sampled_from([0, 4096, 131072])),
    channel=st.integers(1, 0xFFFF),
)
def test_content_split_at_frame_max(body: bytes, frame_max: int, channel: int) -> None:
    raw = encode_properties(spec.BasicProperties(delivery_mode=2))
    encoded = encode_content(channel, 60, raw, body, frame_max)
    # Tiny frame_max values exercise splitting; the header frame itself may exceed them,
    # so the decoder checks no limit here and the sizes are asserted below.
    frames, error = FrameDecoder(0).feed(encoded)
    assert error is None
    header, *bodies = frames
    assert isinstance(header, HeaderFrame)
    assert header.body_size == len(body) and header.channel == channel
    assert all(isinstance(f, BodyFrame) and f.channel == channel for f in bodies)
    assert b"".join(f.payload for f in bodies) == body
    if frame_max:
        chunk = frame_max - 8
        assert all(len(f.payload) <= chunk for f in bodies)
        assert len(bodies) == -(-len(body) // chunk)
        assert all(len(f.payload) == chunk for f in bodies[:-1])
    else:
        assert len(bodies) == (1 if body else 0)
    # pamqp reads the same frames.
    pos, pieces = 0, []
    while pos < len(encoded):
        used, ch, obj = pamqp.frame.unmarshal(encoded[pos:])
        assert ch == channel
        pos += used
        pieces.append(obj)
    assert pieces[0].body_size == len(body)
    assert b"".join(p.value for p in pieces[1:]) == body


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    parts = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["method", "content", "heartbeat"]))
        channel = draw(st.integers(0, 20))
        if kind == "method":
            cls = draw(st.sampled_from(ALL_METHODS))
            parts.append(encode_method(channel, draw(methods(cls))))
        elif kind == "content":
            parts.append(encode_method(channel, spec.BasicPublish(exchange="amq.direct", routing_key="k")))
            raw = encode_properties(draw(properties()))
            parts.append(encode_content(channel, 60, raw, draw(st.binary(max_size=600)), 4096))
        else:
            parts.append(HEARTBEAT)
    return b"".join(parts)


def feed_in_pieces(data: bytes, cuts: list[int], kind: type = bytes) -> tuple[list, AMQPFrameError | None]:
    decoder = FrameDecoder(131072)
    frames: list = []
    error = None
    bounds = [0, *sorted(set(c % (len(data) + 1) for c in cuts)), len(data)]
    for a, b in zip(bounds, bounds[1:]):
        got, error = decoder.feed(kind(data[a:b]))
        frames.extend(got)
        if error is not None:
            break
    return frames, error


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=streams(), cuts=st.lists(st.integers(0, 10**6), max_size=30), kind=st.sampled_from([bytes, bytearray, memoryview]))
def test_any_chunking_gives_the_same_frames(data: bytes, cuts: list[int], kind: type) -> None:
    whole, error = FrameDecoder(131072).feed(data)
    assert error is None
    assert feed_in_pieces(data, cuts, kind) == (whole, None)


def test_byte_at_a_time_and_tail() -> None:
    data = encode_method(3, spec.BasicAck(7)) + HEARTBEAT + encode_method(3, spec.QueueDeclare(queue="q"))
    decoder = FrameDecoder(4096)
    frames = []
    for i in range(len(data) - 1):
        got, error = decoder.feed(data[i : i + 1])
        assert error is None
        frames += got
    assert len(frames) == 2 and decoder.buffered == len(data) - 21 - 8 - 1
    got, _ = decoder.feed(data[-1:])
    assert got == [MethodFrame(3, spec.QueueDeclare(queue="q"))] and decoder.buffered == 0
    assert frames == [MethodFrame(3, spec.BasicAck(7)), HeartbeatFrame(0)]


def expect_error(data: bytes, frame_max: int = 4096) -> AMQPFrameError:
    frames, error = FrameDecoder(frame_max).feed(data)
    assert error is not None
    return error


def test_bad_frame_end() -> None:
    error = expect_error(frame(1, 1, b"\x00\x3c\x00\x50" + b"\x00" * 9, end=0xCD))
    assert error.code == spec.FRAME_ERROR
    assert error.channel == 1
    assert error.text == (
        "FRAME_ERROR - type 1, all octets = <<0,60,0,80,0,0,0,0,0,0,0,0,0>>: {invalid_frame_end_marker,205}"
    )


def test_unknown_frame_type() -> None:
    error = expect_error(frame(7, 0, b"hello"))
    assert (error.code, error.text) == (501, 'FRAME_ERROR - type 7, all octets = <<"hello">>: unknown_frame')
    long = expect_error(frame(9, 2, bytes(range(20))))
    assert long.text == (
        "FRAME_ERROR - type 9, first 16 octets = <<0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15>>: unknown_frame"
    )


def test_heartbeat_with_payload_and_short_frames() -> None:
    assert expect_error(frame(8, 0, b"x")).code == spec.FRAME_ERROR
    assert expect_error(frame(1, 1, b"\x00\x3c")).code == spec.FRAME_ERROR
    assert expect_error(frame(2, 1, b"\x00\x3c\x00\x00")).code == spec.FRAME_ERROR


def test_frame_too_large_and_frame_max_update() -> None:
    big = frame(3, 1, b"x" * 5000)
    error = expect_error(big, 4096)
    assert error.text == "FRAME_ERROR - type 3, all octets = <<>>: {frame_too_large,5000,4088}"
    # Detected from the 7-octet header alone, before the payload arrives.
    decoder = FrameDecoder(4096)
    assert decoder.feed(big[:7])[1] is not None
    # RabbitMQ tolerates payloads up to frame_max (clients are often off by the 8-octet overhead).
    assert FrameDecoder(4096).feed(frame(3, 1, b"x" * 4096)) == ([BodyFrame(1, b"x" * 4096)], None)
    assert FrameDecoder(4096).feed(frame(3, 1, b"x" * 4097))[1] is not None
    decoder = FrameDecoder(4096)
    decoder.frame_max = 131072
    assert decoder.feed(big) == ([BodyFrame(1, b"x" * 5000)], None)


def test_unknown_method_is_not_implemented() -> None:
    error = expect_error(frame(1, 4, struct.pack(">HH", 60, 999)))
    assert (error.code, error.channel, error.class_id, error.method_id) == (540, 4, 60, 999)
    assert error.text.startswith("NOT_IMPLEMENTED - ")


def test_undecodable_arguments() -> None:
    # queue.declare cut short: RabbitMQ's rabbit_framing reports "cannot decode".
    error = expect_error(frame(1, 2, struct.pack(">HHH", 50, 10, 0) + b"\x05ab"))
    assert (error.code, error.class_id, error.method_id, error.channel) == (501, 50, 10, 2)
    assert error.text == "FRAME_ERROR - cannot decode <<0,0,5,97,98>>"
    # Trailing octets after the last argument.
    assert expect_error(encode_method(1, spec.BasicAck(1))[:-1] + b"\x00\xce").code == 501


def test_bad_table_in_arguments_is_syntax_error() -> None:
    table = struct.pack(">I", 3) + b"\x01aZ"
    payload = struct.pack(">HH", 50, 10) + b"\x00\x00\x01q\x00" + table
    error = expect_error(frame(1, 1, payload))
    assert (error.code, error.class_id, error.method_id) == (spec.SYNTAX_ERROR, 50, 10)


def test_frames_before_the_error_are_returned_and_error_is_sticky() -> None:
    good = encode_method(1, spec.BasicAck(1)) + HEARTBEAT
    decoder = FrameDecoder(4096)
    frames, error = decoder.feed(good + frame(7, 0, b"") + good)
    assert frames == [MethodFrame(1, spec.BasicAck(1)), HeartbeatFrame(0)]
    assert error is not None and error.code == 501
    assert decoder.feed(good) == ([], error)
    assert decoder.error is error


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), cuts=st.lists(st.integers(0, 500), max_size=5))
def test_random_bytes_only_give_frames_or_frame_errors(data: bytes, cuts: list[int]) -> None:
    whole = FrameDecoder(4096).feed(data)
    assert feed_in_pieces_4096(data, cuts) == whole


def feed_in_pieces_4096(data: bytes, cuts: list[int]) -> tuple[list, AMQPFrameError | None]:
    decoder = FrameDecoder(4096)
    frames: list = []
    error = None
    bounds = [0, *sorted(set(c % (len(data) + 1) for c in cuts)), len(data)]
    for a, b in zip(bounds, bounds[1:]):
        got, error = decoder.feed(data[a:b])
        frames.extend(got)
        if error is not None:
            break
    return frames, error


@st.composite
def mutated_streams(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(streams()))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "delete", "insert"]))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[i] = draw(st.integers(0, 255))
        elif op == "delete" and data:
            del data[i]
        else:
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated_streams(), cuts=st.lists(st.integers(0, 10**5), max_size=5))
def test_mutated_streams_only_give_frames_or_frame_errors(data: bytes, cuts: list[int]) -> None:
    # Any exception other than AMQPFrameError escaping feed() fails this test.
    frames, error = FrameDecoder(4096).feed(data)
    assert error is None or error.code in (spec.FRAME_ERROR, spec.SYNTAX_ERROR, spec.NOT_IMPLEMENTED)
    assert error is None or error.text.startswith(spec.REPLY_NAMES[error.code] + " - ")
    # Compared as text: a mutated double can be a NaN, which is never equal to itself.
    assert repr(feed_in_pieces_4096(data, cuts)) == repr((frames, error))


def test_error_texts_render_octets_like_erlang() -> None:
    # ~tp: printable octets as a string with escapes.
    error = expect_error(frame(7, 0, b'a"\\\n'))
    assert error.text == 'FRAME_ERROR - type 7, all octets = <<"a\\"\\\\\\n">>: unknown_frame'
    # "cannot decode ~w": always the octet list, even when printable.
    error = expect_error(frame(1, 1, struct.pack(">HH", 60, 30) + b"\x05abc"))
    assert error.text == "FRAME_ERROR - cannot decode <<5,97,98,99>>"


@settings(max_examples=400, deadline=None)
@given(cls=st.sampled_from(ALL_METHODS), args=st.binary(max_size=60), channel=st.integers(0, 0xFFFF))
def test_random_arguments_for_every_method(cls: type[spec.Method], args: bytes, channel: int) -> None:
    payload = struct.pack(">HH", cls.CLASS_ID, cls.METHOD_ID) + args
    frames, error = FrameDecoder(0).feed(frame(1, channel, payload))
    if error is None:
        [decoded] = frames
        assert type(decoded.method) is cls
        # Whatever decoded re-encodes and decodes to itself (surrogateescape keeps bad UTF-8;
        # unused bits and table type letters may differ in the octets).
        again, error = FrameDecoder(0).feed(encode_method(channel, decoded.method))
        assert error is None and repr(again) == repr(frames)  # repr: NaN in a table equals itself
    else:
        assert frames == []
        assert error.code in (spec.FRAME_ERROR, spec.SYNTAX_ERROR)
        assert (error.class_id, error.method_id, error.channel) == (cls.CLASS_ID, cls.METHOD_ID, channel)
