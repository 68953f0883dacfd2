"""Every method round-trips through our codec, and agrees with pamqp in both directions."""

from __future__ import annotations

import pamqp.frame
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.amqp import spec
from broker.amqp.codec import FrameDecoder, MethodFrame, encode_method

from .strategies import ALL_METHODS, methods, our_fields, pamqp_fields, to_pamqp

IDS = [cls.NAME for cls in ALL_METHODS]

# pamqp warns when it builds basic.recover-async (deprecated in 0-9-1); RabbitMQ still implements it.
pytestmark = pytest.mark.filterwarnings("ignore:This command is deprecated:DeprecationWarning")


def decode_one(data: bytes) -> MethodFrame:
    frames, error = FrameDecoder(0).feed(data)
    assert error is None, error
    assert len(frames) == 1
    frame = frames[0]
    assert isinstance(frame, MethodFrame)
    return frame


def test_catalogue_is_complete() -> None:
    assert len(spec.METHODS) == 64
    names = {cls.NAME for cls in ALL_METHODS}
    assert {"basic.recover-async", "connection.update-secret-ok", "exchange.unbind-ok", "confirm.select-ok"} <= names
    # Same (class, method) ids as pamqp's catalogue, which follows RabbitMQ's spec file.
    from pamqp import commands

    assert {(i >> 16, i & 0xFFFF) for i in commands.INDEX_MAPPING} == set(spec.METHODS)
    for cls in ALL_METHODS:
        assert spec.METHODS_BY_NAME[cls.NAME] is cls
        assert cls.HAS_CONTENT == (cls.NAME in {"basic.publish", "basic.return", "basic.deliver", "basic.get-ok"})


@pytest.mark.parametrize("cls", ALL_METHODS, ids=IDS)
@settings(max_examples=25, deadline=None)
@given(data=st.data(), channel=st.integers(0, 0xFFFF))
def test_round_trip(cls: type[spec.Method], data: st.DataObject, channel: int) -> None:
    method = data.draw(methods(cls))
    encoded = encode_method(channel, method)
    frame = decode_one(encoded)
    assert frame.channel == channel
    assert type(frame.method) is cls
    assert our_fields(frame.method) == our_fields(method)


@pytest.mark.parametrize("cls", ALL_METHODS, ids=IDS)
@settings(max_examples=15, deadline=None)
@given(data=st.data(), channel=st.integers(0, 0xFFFF))
def test_pamqp_decodes_ours(cls: type[spec.Method], data: st.DataObject, channel: int) -> None:
    # pamqp only validates when constructing, so it can decode the whole wire domain;
    # the tables are kept to values pamqp reads without its own quirks.
    method = data.draw(methods(cls, pamqp_safe=True))
    encoded = encode_method(channel, method)
    consumed, pamqp_channel, obj = pamqp.frame.unmarshal(encoded)
    assert consumed == len(encoded)
    assert pamqp_channel == channel
    assert obj.index == (cls.CLASS_ID << 16) | cls.METHOD_ID
    assert pamqp_fields(cls, obj) == our_fields(method)


@pytest.mark.parametrize("cls", ALL_METHODS, ids=IDS)
@settings(max_examples=15, deadline=None)
@given(data=st.data(), channel=st.integers(0, 0xFFFF))
def test_we_decode_pamqp(cls: type[spec.Method], data: st.DataObject, channel: int) -> None:
    method = data.draw(methods(cls, pamqp_safe=True))
    obj = to_pamqp(method)
    encoded = pamqp.frame.marshal(obj, channel)
    frame = decode_one(encoded)
    assert frame.channel == channel
    assert type(frame.method) is cls
    # Compare with pamqp's own reading of its bytes: pamqp writes floats as 32-bit 'f'.
    _, _, reread = pamqp.frame.unmarshal(encoded)
    assert our_fields(frame.method) == pamqp_fields(cls, reread)


def test_known_bytes() -> None:
    # basic.qos(prefetch_count=10, global=True) as RabbitMQ's clients send it.
    assert encode_method(1, spec.BasicQos(prefetch_count=10, global_=True)) == (
        b"\x01\x00\x01\x00\x00\x00\x0b\x00\x3c\x00\x0a\x00\x00\x00\x00\x00\x0a\x01\xce"
    )
    # Nine bits spill into a second octet; queue.declare has five, exchange.declare five.
    frame = decode_one(encode_method(0, spec.ExchangeDeclare(exchange="e", durable=True, nowait=True)))
    assert frame.method == spec.ExchangeDeclare(exchange="e", durable=True, nowait=True)


def test_encode_rejects_values_the_wire_cannot_carry() -> None:
    with pytest.raises(ValueError):
        encode_method(1, spec.QueueDeclare(queue="q" * 256))
    with pytest.raises(ValueError):
        encode_method(1, spec.BasicAck(delivery_tag=2**64))
    with pytest.raises(ValueError):
        encode_method(1, spec.ConnectionTune(channel_max=70000))
