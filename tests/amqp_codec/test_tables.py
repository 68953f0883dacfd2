"""Field tables: every RabbitMQ type, nesting, the type letters RabbitMQ writes, and pamqp agreement."""

from __future__ import annotations

import datetime as dt
import struct
from decimal import Decimal

import pytest
from hypothesis import given, settings
from pamqp import decode as pamqp_decode
from pamqp import encode as pamqp_encode

from broker.amqp import spec
from broker.amqp.codec import AMQPFrameError, Long, Timestamp, decode_table, encode_table

from .strategies import field_tables, normalise

UTC = dt.timezone.utc


@settings(max_examples=200, deadline=None)
@given(field_tables())
def test_round_trip(table: dict) -> None:
    encoded = encode_table(table)
    decoded, end = decode_table(encoded)
    assert end == len(encoded)
    assert normalise(decoded) == normalise(table)
    # Re-encoding what we decoded gives the same octets: types survive a round trip.
    assert encode_table(decoded) == encoded


@settings(max_examples=100, deadline=None)
@given(field_tables(pamqp_safe=True))
def test_pamqp_reads_ours(table: dict) -> None:
    encoded = encode_table(table)
    _, theirs = pamqp_decode.field_table(encoded)
    assert normalise(theirs) == normalise(table)


@settings(max_examples=100, deadline=None)
@given(field_tables(pamqp_safe=True))
def test_we_read_pamqp(table: dict) -> None:
    encoded = pamqp_encode.field_table(table)
    ours, end = decode_table(encoded)
    assert end == len(encoded)
    _, theirs = pamqp_decode.field_table(encoded)
    assert normalise(ours) == normalise(theirs)


@settings(max_examples=50, deadline=None)
@given(field_tables(), field_tables())
def test_decode_at_offset(prefix: dict, table: dict) -> None:
    head = encode_table(prefix)
    body = encode_table(table)
    decoded, end = decode_table(memoryview(head + body + b"tail"), len(head))
    assert end == len(head) + len(body)
    assert normalise(decoded) == normalise(table)


def entry(name: bytes, kind: bytes, payload: bytes) -> bytes:
    body = bytes([len(name)]) + name + kind + payload
    return struct.pack(">I", len(body)) + body


def test_rabbitmq_type_letters_on_output() -> None:
    # RabbitMQ (rabbit_binary_generator) writes: 'I'/'l' integers, 'S' strings, 't' bools,
    # 'F' tables, 'A' arrays, 'V' void, 'x' bytes, 'd' doubles, 'D' decimals, 'T' timestamps.
    cases = [
        (5, b"I" + struct.pack(">i", 5)),
        (-(2**31), b"I" + struct.pack(">i", -(2**31))),
        (2**31, b"l" + struct.pack(">q", 2**31)),
        ("é", b"S\x00\x00\x00\x02" + "é".encode()),
        (True, b"t\x01"),
        (False, b"t\x00"),
        ({}, b"F\x00\x00\x00\x00"),
        ([1], b"A\x00\x00\x00\x05I\x00\x00\x00\x01"),
        (None, b"V"),
        (b"\x00\x01", b"x\x00\x00\x00\x02\x00\x01"),
        (1.5, b"d" + struct.pack(">d", 1.5)),
        (Decimal("1.25"), b"D\x02" + struct.pack(">I", 125)),
        (dt.datetime(2020, 1, 1, tzinfo=UTC), b"T" + struct.pack(">Q", 1577836800)),
        (Timestamp(2**40), b"T" + struct.pack(">Q", 2**40)),
        (Long(5), b"l" + struct.pack(">q", 5)),
    ]
    for value, wire in cases:
        assert encode_table({"k": value}) == entry(b"k", wire[:1], wire[1:]), value


def test_every_input_type_letter() -> None:
    cases = [
        (b"t", b"\x02", True),
        (b"b", b"\xff", -1),
        (b"B", b"\xff", 255),
        (b"s", b"\xff\xfe", -2),
        (b"u", b"\xff\xfe", 65534),
        (b"U", b"\xff\xfe", -2),
        (b"I", b"\xff\xff\xff\xfe", -2),
        (b"i", b"\xff\xff\xff\xfe", 2**32 - 2),
        (b"l", b"\xff" * 8, Long(-1)),
        (b"L", b"\xff" * 8, Long(-1)),  # RabbitMQ errata: 'L' is signed too
        (b"f", struct.pack(">f", 0.5), 0.5),
        (b"d", struct.pack(">d", -0.25), -0.25),
        (b"D", b"\x03" + struct.pack(">I", 12345), Decimal("12.345")),
        (b"S", b"\x00\x00\x00\x03abc", "abc"),
        (b"x", b"\x00\x00\x00\x02\x00\xff", b"\x00\xff"),
        (b"A", b"\x00\x00\x00\x03t\x01V", [True, None]),
        (b"T", struct.pack(">Q", 0), dt.datetime(1970, 1, 1, tzinfo=UTC)),
        (b"T", struct.pack(">Q", 1700000000000), Timestamp(1700000000000)),  # milliseconds stay intact
        (b"F", b"\x00\x00\x00\x03\x01aV", {"a": None}),
        (b"V", b"", None),
    ]
    for kind, payload, expected in cases:
        decoded, _ = decode_table(entry(b"key", kind, payload))
        assert decoded == {"key": expected}, kind
        assert type(decoded["key"]) is type(expected), kind


def test_small_long_keeps_its_type_through_a_round_trip() -> None:
    # A client's 'l' header re-encoded by the node (a dead-lettered copy) stays 'l'.
    wire = entry(b"n", b"l", struct.pack(">q", 7))
    decoded, _ = decode_table(wire)
    assert decoded == {"n": 7}
    assert encode_table(decoded) == wire


def test_invalid_utf8_round_trips_octet_exact() -> None:
    raw = entry(b"\xff", b"S", b"\x00\x00\x00\x02\xc3\x28")
    decoded, _ = decode_table(raw)
    assert encode_table(decoded) == raw


@pytest.mark.parametrize(
    "raw",
    [
        entry(b"k", b"Z", b""),  # unknown type letter
        entry(b"k", b"I", b"\x00\x00"),  # value cut short by the table length
        entry(b"k", b"S", b"\x00\x00\x00\x09ab"),  # string longer than its table
        struct.pack(">I", 2) + b"\x05a",  # name longer than the table
        struct.pack(">I", 10),  # table longer than the buffer
        b"\x00\x00",  # not even a length
        entry(b"k", b"A", b"\x00\x00\x00\x02I\x00"),  # array item overruns its array
        entry(b"k", b"F", b"\x00\x00\x00\x03\x01aZ"),  # nested unknown type
    ],
)
def test_malformed_tables_are_syntax_errors(raw: bytes) -> None:
    with pytest.raises(AMQPFrameError) as info:
        decode_table(raw)
    assert info.value.code == spec.SYNTAX_ERROR
    assert info.value.text.startswith("SYNTAX_ERROR - ")


def test_encode_rejects_unrepresentable_values() -> None:
    with pytest.raises(ValueError):
        encode_table({"k": 2**63})
    with pytest.raises(ValueError):
        encode_table({"k": Decimal("-1.5")})
    with pytest.raises(ValueError):
        encode_table({"k" * 256: 1})
    with pytest.raises(TypeError):
        encode_table({"k": object()})


def test_absurd_nesting_is_a_syntax_error_not_a_crash() -> None:
    # Each level is a table holding one entry (empty name, 'F') whose value is the next level.
    nested = struct.pack(">I", 0)
    for _ in range(5000):
        body = b"\x00F" + nested
        nested = struct.pack(">I", len(body)) + body
    with pytest.raises(AMQPFrameError) as info:
        decode_table(nested)
    assert info.value.code == spec.SYNTAX_ERROR
    # Inside a method frame, through the decoder, it is a value, not an exception.
    from broker.amqp.codec import FrameDecoder

    payload = struct.pack(">HH", 50, 10) + b"\x00\x00\x01q\x00" + nested
    data = struct.pack(">BHI", 1, 1, len(payload)) + payload + b"\xce"
    frames, error = FrameDecoder(0).feed(data)
    assert frames == [] and error is not None and error.code == spec.SYNTAX_ERROR
    props = struct.pack(">H", 0x2000) + nested
    header = struct.pack(">HHQ", 60, 0, 0) + props
    frames, error = FrameDecoder(0).feed(struct.pack(">BHI", 2, 1, len(header)) + header + b"\xce")
    assert frames == [] and error is not None and error.code == spec.SYNTAX_ERROR
