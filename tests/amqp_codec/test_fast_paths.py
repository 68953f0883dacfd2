"""The hand-tuned encoders and decoder paths equal the general ones, octet for octet."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.amqp import codec, spec
from broker.amqp.codec import (
    FrameDecoder,
    MethodFrame,
    encode_basic_ack,
    encode_basic_nack,
    encode_content,
    encode_deliver,
    encode_get_ok,
    encode_method,
    encode_properties,
)

from .strategies import properties, shortstr

U64 = st.integers(0, 2**64 - 1)
CHANNEL = st.integers(0, 0xFFFF)
FRAME_MAX = st.one_of(st.just(0), st.integers(9, 600), st.sampled_from([4096, 131072]))


@settings(max_examples=200, deadline=None)
@given(
    channel=CHANNEL,
    consumer_tag=shortstr(),
    delivery_tag=U64,
    redelivered=st.booleans(),
    exchange=shortstr(),
    routing_key=shortstr(),
    props=properties(),
    body=st.binary(max_size=1500),
    frame_max=FRAME_MAX,
)
def test_encode_deliver(channel, consumer_tag, delivery_tag, redelivered, exchange, routing_key, props, body, frame_max):
    raw = encode_properties(props)
    general = encode_method(
        channel, spec.BasicDeliver(consumer_tag, delivery_tag, redelivered, exchange, routing_key)
    ) + encode_content(channel, 60, raw, body, frame_max)
    fast = encode_deliver(channel, consumer_tag, delivery_tag, redelivered, exchange, routing_key, raw, body, frame_max)
    assert fast == general
    # And a second time, when the short strings come from the cache.
    assert encode_deliver(channel, consumer_tag, delivery_tag, redelivered, exchange, routing_key, raw, body, frame_max) == general


@settings(max_examples=200, deadline=None)
@given(
    channel=CHANNEL,
    delivery_tag=U64,
    redelivered=st.booleans(),
    exchange=shortstr(),
    routing_key=shortstr(),
    message_count=st.integers(0, 2**32 - 1),
    props=properties(),
    body=st.binary(max_size=1500),
    frame_max=FRAME_MAX,
)
def test_encode_get_ok(channel, delivery_tag, redelivered, exchange, routing_key, message_count, props, body, frame_max):
    raw = encode_properties(props)
    general = encode_method(
        channel, spec.BasicGetOk(delivery_tag, redelivered, exchange, routing_key, message_count)
    ) + encode_content(channel, 60, raw, body, frame_max)
    fast = encode_get_ok(channel, delivery_tag, redelivered, exchange, routing_key, message_count, raw, body, frame_max)
    assert fast == general


@settings(max_examples=200, deadline=None)
@given(channel=CHANNEL, tag=U64, multiple=st.booleans(), requeue=st.booleans())
def test_encode_ack_and_nack(channel, tag, multiple, requeue):
    assert encode_basic_ack(channel, tag, multiple) == encode_method(channel, spec.BasicAck(tag, multiple))
    assert encode_basic_nack(channel, tag, multiple, requeue) == encode_method(
        channel, spec.BasicNack(tag, multiple, requeue)
    )
    assert encode_basic_nack(channel, tag, multiple) == encode_method(channel, spec.BasicNack(tag, multiple))


def general_decode(cls: type[spec.Method], args: bytes, channel: int):
    """What the general argument decoder makes of `args`: a method, or the error code."""
    try:
        return MethodFrame(channel, codec._decode_arguments(cls, args, 0, len(args)))
    except (IndexError, struct.error):
        return spec.FRAME_ERROR


def fast_decode(class_id: int, method_id: int, args: bytes, channel: int):
    payload = struct.pack(">HH", class_id, method_id) + args
    data = struct.pack(">BHI", 1, channel, len(payload)) + payload + b"\xce"
    frames, error = FrameDecoder(0).feed(data)
    if error is not None:
        assert frames == []
        return error.code
    [frame] = frames
    return frame


@settings(max_examples=300, deadline=None)
@given(
    channel=CHANNEL,
    publish=st.builds(spec.BasicPublish, st.integers(0, 0xFFFF), shortstr(), shortstr(), st.booleans(), st.booleans()),
    cut=st.integers(0, 600),
    junk=st.binary(max_size=3),
)
def test_publish_fast_path_equals_general_decoder(channel, publish, cut, junk):
    args = encode_method(channel, publish)[11:-1]
    for candidate in (args, args[: cut % (len(args) + 1)], args + junk):
        assert fast_decode(60, 40, candidate, channel) == general_decode(spec.BasicPublish, candidate, channel)
    assert fast_decode(60, 40, args, channel) == MethodFrame(channel, publish)


@settings(max_examples=200, deadline=None)
@given(channel=CHANNEL, args=st.binary(min_size=0, max_size=12))
def test_ack_fast_path_equals_general_decoder(channel, args):
    assert fast_decode(60, 80, args, channel) == general_decode(spec.BasicAck, args, channel)


@settings(max_examples=100, deadline=None)
@given(channel=CHANNEL, tag=U64, multiple=st.booleans())
def test_ack_fast_path_round_trip(channel, tag, multiple):
    frames, error = FrameDecoder(4096).feed(encode_basic_ack(channel, tag, multiple))
    assert (frames, error) == ([MethodFrame(channel, spec.BasicAck(tag, multiple))], None)
