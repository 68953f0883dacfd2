"""Method short strings must be UTF-8, as RabbitMQ 3.10.8 asserts (checked by hand
against it): 501 "Malformed UTF-8 in shortstr". basic.publish is the exception:
RabbitMQ takes any octets as its exchange and routing key, and so does the codec."""

from __future__ import annotations

import struct

from broker.amqp import spec
from broker.amqp.codec import FrameDecoder


def frame(frame_type: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", frame_type, channel, len(payload)) + payload + b"\xce"


def shortstr(b: bytes) -> bytes:
    return bytes([len(b)]) + b


def method(class_id: int, method_id: int, args: bytes) -> bytes:
    return frame(1, 1, struct.pack(">HH", class_id, method_id) + args)


def test_queue_name_that_is_not_utf8_is_a_frame_error() -> None:
    data = method(50, 10, b"\x00\x00" + shortstr(b"q\xffx") + b"\x00" + b"\x00\x00\x00\x00")
    frames, error = FrameDecoder(0).feed(data)
    assert frames == []
    assert error is not None
    assert (error.code, error.text) == (spec.FRAME_ERROR, "FRAME_ERROR - Malformed UTF-8 in shortstr")
    assert (error.channel, error.class_id, error.method_id) == (1, 50, 10)


def test_binding_key_consumer_tag_and_get_are_checked_too() -> None:
    bind = method(50, 20, b"\x00\x00" + shortstr(b"q") + shortstr(b"amq.direct") + shortstr(b"k\xff") + b"\x00"
                  + b"\x00\x00\x00\x00")
    consume = method(60, 20, b"\x00\x00" + shortstr(b"q") + shortstr(b"t\xc3") + b"\x00" + b"\x00\x00\x00\x00")
    get = method(60, 70, b"\x00\x00" + shortstr(b"\xfe") + b"\x01")
    for data in (bind, consume, get):
        frames, error = FrameDecoder(0).feed(data)
        assert frames == [] and error is not None
        assert error.text == "FRAME_ERROR - Malformed UTF-8 in shortstr"


def test_publish_takes_any_octets_as_exchange_and_routing_key() -> None:
    publish = method(60, 40, b"\x00\x00" + shortstr(b"e\xff") + shortstr(b"k\xfe") + b"\x00")
    header = frame(2, 1, struct.pack(">HHQH", 60, 0, 0, 0))
    frames, error = FrameDecoder(0).feed(publish + header)
    assert error is None
    decoded = [f for f in frames if hasattr(f, "method")] or frames
    m = getattr(decoded[0], "method", None)
    assert m is not None and isinstance(m, spec.BasicPublish)
    assert (m.exchange.encode("utf-8", "surrogateescape"), m.routing_key.encode("utf-8", "surrogateescape")) \
        == (b"e\xff", b"k\xfe")


def test_valid_utf8_names_decode() -> None:
    data = method(50, 10, b"\x00\x00" + shortstr("qüeue-€".encode()) + b"\x00" + b"\x00\x00\x00\x00")
    frames, error = FrameDecoder(0).feed(data)
    assert error is None and frames[0].method.queue == "qüeue-€"
