"""Content properties: every flag combination, pamqp agreement, header frames."""

from __future__ import annotations

import itertools

import pamqp.frame
import pytest
from hypothesis import given, settings
from pamqp import header as pamqp_header

from broker.amqp import spec
from broker.amqp.codec import AMQPFrameError, FrameDecoder, HeaderFrame, decode_properties, encode_content, encode_properties

from .strategies import PROPERTY_NAMES, from_pamqp_properties, normalise, pamqp_properties, properties

SAMPLE = {
    "content_type": "application/json",
    "content_encoding": "gzip",
    "headers": {"x-death": [{"count": 1, "reason": "expired"}], "n": 7},
    "delivery_mode": 2,
    "priority": 9,
    "correlation_id": "c-1",
    "reply_to": "amq.rabbitmq.reply-to",
    "expiration": "60000",
    "message_id": "m-1",
    "timestamp": 1700000000,
    "type": "order",
    "user_id": "guest",
    "app_id": "shop",
    "cluster_id": "c",
}


def as_dict(props: spec.BasicProperties) -> dict:
    return {name: normalise(getattr(props, name)) for name in PROPERTY_NAMES}


def test_every_flag_combination() -> None:
    # All 2^14 subsets of the 14 properties, against our decoder and pamqp's.
    for mask in range(1 << 14):
        props = spec.BasicProperties(**{n: SAMPLE[n] for i, n in enumerate(PROPERTY_NAMES) if mask >> i & 1})
        raw = encode_properties(props)
        flags = int.from_bytes(raw[:2], "big")
        assert flags & 3 == 0
        assert bin(flags).count("1") == bin(mask).count("1")
        assert decode_properties(raw) == props
    # pamqp on a sample of combinations (it is slow); cluster_id is excluded because
    # pamqp refuses to build it (deprecated), though it decodes it.
    for mask in range(0, 1 << 13, 37):
        names = [n for i, n in enumerate(PROPERTY_NAMES[:13]) if mask >> i & 1]
        props = spec.BasicProperties(**{n: SAMPLE[n] for n in names})
        theirs = pamqp_properties(props).marshal()
        assert decode_properties(theirs) == props
        ours = encode_content(1, 60, encode_properties(props), b"", 0)
        assert from_pamqp_properties(pamqp.frame.unmarshal(ours)[2].properties) == as_dict(props)
        if "headers" not in names:
            # Without a table (where pamqp picks other integer letters) the octets are identical.
            assert encode_properties(props) == theirs


@settings(max_examples=200, deadline=None)
@given(properties())
def test_round_trip(props: spec.BasicProperties) -> None:
    raw = encode_properties(props)
    decoded = decode_properties(raw)
    assert as_dict(decoded) == as_dict(props)
    assert encode_properties(decoded) == raw


@settings(max_examples=100, deadline=None)
@given(properties(pamqp_safe=True))
def test_pamqp_agrees(props: spec.BasicProperties) -> None:
    ours = encode_content(1, 60, encode_properties(props), b"", 0)
    _, _, header = pamqp.frame.unmarshal(ours)
    assert from_pamqp_properties(header.properties) == as_dict(props)
    theirs = pamqp.frame.marshal(pamqp_header.ContentHeader(0, 0, pamqp_properties(props)), 1)
    frames, error = FrameDecoder(0).feed(theirs)
    assert error is None
    [frame] = frames
    assert isinstance(frame, HeaderFrame)
    assert as_dict(frame.properties) == from_pamqp_properties(pamqp.frame.unmarshal(theirs)[2].properties)


def test_header_frame_keeps_raw_properties() -> None:
    raw = encode_properties(spec.BasicProperties(delivery_mode=2, headers={"a": 1}))
    frames, error = FrameDecoder(0).feed(encode_content(5, 60, raw, b"xyz", 4096))
    assert error is None
    header, body = frames
    assert header == HeaderFrame(5, 60, 3, spec.BasicProperties(delivery_mode=2, headers={"a": 1}), raw)
    assert body.payload == b"xyz"


def test_continuation_flag_words_are_skipped() -> None:
    # Bit 0 announces another flag word; basic has no properties there.
    raw = b"\x80\x01\x00\x00" + b"\x04text"
    assert decode_properties(raw) == spec.BasicProperties(content_type="text")


@pytest.mark.parametrize(
    "raw",
    [
        b"\x80\x00",  # content_type flagged, missing
        b"\x80\x00\x09abc",  # content_type longer than the list
        b"\x20\x00\x00\x00\x00\x05\x01aZ",  # headers with an unknown field type
        b"\x00\x00junk",  # octets after the last property
        b"\x00",  # half a flag word
    ],
)
def test_malformed_properties(raw: bytes) -> None:
    with pytest.raises(AMQPFrameError) as info:
        decode_properties(raw)
    assert info.value.code == spec.SYNTAX_ERROR


def test_absent_and_empty_are_distinct() -> None:
    raw = encode_properties(spec.BasicProperties(content_type="", headers={}))
    assert decode_properties(raw) == spec.BasicProperties(content_type="", headers={})
    assert list(itertools.islice(raw, 2)) == [0xA0, 0x00]


def test_repeated_property_lists_give_separate_objects() -> None:
    # The decoder remembers property octets it has seen; frames must still not share state.
    raw = encode_properties(spec.BasicProperties(content_type="text/plain", delivery_mode=2))
    data = encode_content(1, 60, raw, b"", 0) * 3
    frames, error = FrameDecoder(0).feed(data)
    assert error is None and len(frames) == 3
    assert frames[0].properties == frames[1].properties == frames[2].properties
    assert frames[0].properties is not frames[1].properties
    frames[0].properties.priority = 5
    assert frames[1].properties.priority is None
    again, _ = FrameDecoder(0).feed(data[: len(data) // 3])
    assert again[0].properties.priority is None


def test_headers_are_never_shared() -> None:
    raw = encode_properties(spec.BasicProperties(headers={"a": 1}))
    frames, _ = FrameDecoder(0).feed(encode_content(1, 60, raw, b"", 0) * 2)
    assert frames[0].properties.headers == frames[1].properties.headers == {"a": 1}
    assert frames[0].properties.headers is not frames[1].properties.headers
