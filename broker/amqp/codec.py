"""Bytes ⇄ AMQP 0-9-1 frames: the frame decoder, method/content encoders, field tables, properties.

Pure: no sockets, no clocks. `FrameDecoder.feed` takes whatever bytes arrived and
returns every complete frame plus, at most, one error; the connection machine
decides what a frame means in its state.

Error reporting. `feed` never raises: it returns `(frames, error)` where `frames`
are the frames that parsed cleanly before the first malformed one and `error`
is an `AMQPFrameError` or None. After an error the decoder has lost sync with the
peer, so the error is sticky: every later `feed` returns `([], same_error)`. The
codes and texts follow RabbitMQ (`rabbit_reader.erl`, `rabbit_framing`):

- unknown frame type, a method frame shorter than its class/method ids, a header
  frame shorter than 14 octets (class, weight, body size, first flag word), a
  heartbeat with a payload →
  501 "FRAME_ERROR - type T, all octets = <<...>>: unknown_frame"
- frame-end octet not 0xCE →
  501 "FRAME_ERROR - type T, all octets = <<...>>: {invalid_frame_end_marker,E}"
- payload larger than frame_max (RabbitMQ tolerates payloads up to frame_max,
  i.e. 8 octets over the negotiated limit, because many clients are off by the
  frame overhead; so do we) →
  501 "FRAME_ERROR - type T, all octets = <<>>: {frame_too_large,Size,FrameMax-8}"
- method arguments that do not parse (truncated, trailing octets) →
  501 "FRAME_ERROR - cannot decode <<...>>", carrying the class and method id
  (RabbitMQ's `rabbit_misc:frame_error/2`).
- a field table (in method arguments or in the headers property) whose contents do
  not parse, or malformed content properties → 502 SYNTAX_ERROR. RabbitMQ crashes
  the channel with an internal error here; 502 is the spec's code for an invalid
  field value.
- unknown class/method id pair → 540 NOT_IMPLEMENTED.

Field tables follow RabbitMQ, not pamqp, where the two differ: integers are written
as 'I' (signed 32) or 'l' (signed 64) — pamqp picks the smallest of b/s/u/I/i/l;
floats as 'd' (pamqp writes 'f'); 'D' decimals carry an unsigned 32-bit value
(pamqp writes it signed); 'L' decodes as signed 64 (the RabbitMQ errata); bytes as
'x'. On input we also accept 'U' as a signed 16-bit integer (the 0-9-1 spec's
letter; RabbitMQ itself rejects it). 'T' decodes to an aware UTC `datetime` when
the value fits one, else to `Timestamp`, an int that encodes back as 'T'; 'l' decodes
to `Long`, an int that encodes back as 'l'. Short
strings in method arguments must be UTF-8 (501 "Malformed UTF-8 in shortstr", as
RabbitMQ 3.10 asserts), except basic.publish's exchange and routing key, which
RabbitMQ takes as any octets; those, long strings, table strings and properties
decode with surrogateescape, so any octets round-trip exactly.
The `timestamp` content property stays a plain int (seconds), like RabbitMQ.
Other pamqp differences the tests work around: pamqp reads "longlong" arguments
(delivery tags) as signed, and treats an empty-string property as absent.

`raw_properties` on a HeaderFrame are the received octets, so a delivery reuses
them verbatim; `encode_deliver` and friends take those octets, never a
BasicProperties, on the hot path.
"""

from __future__ import annotations

import datetime as _dt
import struct
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Union

from cluster.nesting import MAX_TABLE_DEPTH

from . import spec
from .spec import BasicProperties, Method

__all__ = [
    "AMQPFrameError",
    "BodyFrame",
    "Frame",
    "FrameDecoder",
    "HEARTBEAT",
    "HeaderFrame",
    "HeartbeatFrame",
    "MethodFrame",
    "PublishFrame",
    "Long",
    "Timestamp",
    "decode_properties",
    "decode_table",
    "encode_basic_ack",
    "encode_basic_nack",
    "encode_content",
    "encode_deliver",
    "encode_get_ok",
    "encode_method",
    "encode_properties",
    "encode_table",
]

HEARTBEAT = b"\x08\x00\x00\x00\x00\x00\x00\xce"


class AMQPFrameError(Exception):
    """A malformed frame, as the reply RabbitMQ would close the connection with."""

    def __init__(self, code: int, text: str, channel: int = 0, class_id: int = 0, method_id: int = 0) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.channel = channel
        self.class_id = class_id
        self.method_id = method_id

    # Errors are values: two reports of the same fault compare equal.
    def _key(self) -> tuple[int, str, int, int, int]:
        return (self.code, self.text, self.channel, self.class_id, self.method_id)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AMQPFrameError):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"AMQPFrameError(code={self.code}, text={self.text!r}, channel={self.channel}, "
            f"class_id={self.class_id}, method_id={self.method_id})"
        )


class Timestamp(int):
    """A field-table 'T' value too large for `datetime` (e.g. milliseconds sent as seconds)."""

    __slots__ = ()


class Long(int):
    """A field-table 'l' value: encodes back as 'l' whatever its size, so a re-encoded table
    (a dead-lettered copy) keeps the client's types, and values RabbitMQ types as long
    (x-death counts) reach typed clients (Java's Long) as long."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class MethodFrame:
    channel: int
    method: Method


@dataclass(frozen=True, slots=True)
class HeaderFrame:
    channel: int
    class_id: int
    body_size: int
    properties: BasicProperties
    # Property flags + property list exactly as received, reused verbatim on delivery.
    raw_properties: bytes


@dataclass(frozen=True, slots=True)
class BodyFrame:
    channel: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class HeartbeatFrame:
    channel: int


@dataclass(slots=True)
class PublishFrame:
    """basic.publish, its content header and its single body frame, parsed as one
    (only by a decoder made with `fuse_publishes=True`): the shape of nearly every
    publish. It also has the HeaderFrame's fields, so it can stand in for the header.
    Not frozen: one is made per message, and a frozen record costs four times more."""

    channel: int
    method: spec.BasicPublish
    class_id: int
    body_size: int
    properties: BasicProperties
    raw_properties: bytes
    payload: bytes

    def frames(self) -> list["Frame"]:
        """The three frames this stands for, as an unfused decoder returns them."""
        header = HeaderFrame(self.channel, self.class_id, self.body_size, self.properties, self.raw_properties)
        frames: list[Frame] = [MethodFrame(self.channel, self.method), header]
        if self.body_size:
            frames.append(BodyFrame(self.channel, self.payload))
        return frames


Frame = Union[MethodFrame, HeaderFrame, BodyFrame, HeartbeatFrame, PublishFrame]


# --- precompiled structs -----------------------------------------------------------------

_U8 = struct.Struct(">B")
_I8 = struct.Struct(">b")
_U16 = struct.Struct(">H")
_I16 = struct.Struct(">h")
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_F32 = struct.Struct(">f")
_F64 = struct.Struct(">d")
_DECIMAL = struct.Struct(">BI")
_FRAME_HEAD = struct.Struct(">BHI")  # type, channel, payload size
_METHOD_HEAD = struct.Struct(">BHIHH")  # frame head + class id + method id
_CONTENT_HEAD = struct.Struct(">BHIHHQ")  # frame head + class id + weight + body size
_HEADER_PAYLOAD = struct.Struct(">HHQ")
_QB = struct.Struct(">QB")

_FRAME_END = spec.FRAME_END
_FRAME_END_BYTE = b"\xce"
_METHOD_KEY_PUBLISH = (60 << 16) | 40
_METHOD_KEY_ACK = (60 << 16) | 80

# Largest 'T' value a datetime can hold (9999-12-31T23:59:59Z).
_MAX_DATETIME_SECONDS = 253402300799
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


# --- Erlang-style rendering for RabbitMQ's error texts -------------------------------------


_ERLANG_ESCAPES = {8: "\\b", 9: "\\t", 10: "\\n", 11: "\\v", 12: "\\f", 13: "\\r", 27: "\\e", 34: '\\"', 92: "\\\\"}


def _erlang_binary(data: bytes, printable: bool = True) -> str:
    """Render octets as Erlang does: ~tp shows <<"text">> when the octets are printable
    ASCII (with escapes), else <<1,2,3>>; ~w (printable=False) always lists the octets."""
    if not data:
        return "<<>>"
    if printable and all(32 <= b < 127 or b in _ERLANG_ESCAPES for b in data):
        return '<<"' + "".join(_ERLANG_ESCAPES.get(b) or chr(b) for b in data) + '">>'
    return "<<" + ",".join(str(b) for b in data) + ">>"


def _snippet(payload: bytes) -> str:
    if len(payload) <= 16:
        return f"all octets = {_erlang_binary(payload)}"
    return f"first 16 octets = {_erlang_binary(payload[:16])}"


def _frame_error(frame_type: int, channel: int, payload: bytes, reason: str) -> AMQPFrameError:
    return AMQPFrameError(
        spec.FRAME_ERROR,
        spec.reply_text(spec.FRAME_ERROR, f"type {frame_type}, {_snippet(payload)}: {reason}"),
        channel,
    )


class _Malformed(Exception):
    """Internal: arguments or a table did not parse; becomes an AMQPFrameError at the frame level."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


# --- field tables --------------------------------------------------------------------------


def _shortstr_at(buf: Any, offset: int) -> tuple[str, int]:
    length = buf[offset]
    end = offset + 1 + length
    if end > len(buf):
        raise IndexError("short string overruns its buffer")
    return str(buf[offset + 1 : end], "utf-8", "surrogateescape"), end


def _field_value(buf: Any, offset: int, limit: int, depth: int) -> tuple[Any, int]:
    """Decode one typed field value at `offset`; `limit` is the end of the enclosing table/array,
    `depth` its level of nesting (the outermost table is 1)."""
    kind = buf[offset]
    offset += 1
    if kind == 0x53:  # 'S'
        length = _U32.unpack_from(buf, offset)[0]
        start = offset + 4
        end = start + length
        if end > limit:
            raise _Malformed(spec.SYNTAX_ERROR, "long string overruns its field table")
        return str(buf[start:end], "utf-8", "surrogateescape"), end
    if kind == 0x49:  # 'I'
        return _I32.unpack_from(buf, offset)[0], offset + 4
    if kind == 0x74:  # 't'
        return buf[offset] != 0, offset + 1
    if kind == 0x6C or kind == 0x4C:  # 'l', 'L': both signed 64 (RabbitMQ errata)
        return Long(_I64.unpack_from(buf, offset)[0]), offset + 8
    if kind == 0x46:  # 'F'
        return _table_at(buf, offset, limit, depth + 1)
    if kind == 0x41:  # 'A'
        if depth >= MAX_TABLE_DEPTH:
            raise _Malformed(spec.SYNTAX_ERROR, _TOO_DEEP)
        length = _U32.unpack_from(buf, offset)[0]
        start = offset + 4
        end = start + length
        if end > limit:
            raise _Malformed(spec.SYNTAX_ERROR, "array overruns its field table")
        items = []
        pos = start
        while pos < end:
            value, pos = _field_value(buf, pos, end, depth + 1)
            items.append(value)
        if pos != end:
            raise _Malformed(spec.SYNTAX_ERROR, "array value overruns its array")
        return items, end
    if kind == 0x62:  # 'b'
        return _I8.unpack_from(buf, offset)[0], offset + 1
    if kind == 0x42:  # 'B'
        return buf[offset], offset + 1
    if kind == 0x73 or kind == 0x55:  # 's', 'U': signed 16
        return _I16.unpack_from(buf, offset)[0], offset + 2
    if kind == 0x75:  # 'u'
        return _U16.unpack_from(buf, offset)[0], offset + 2
    if kind == 0x69:  # 'i'
        return _U32.unpack_from(buf, offset)[0], offset + 4
    if kind == 0x64:  # 'd'
        return _F64.unpack_from(buf, offset)[0], offset + 8
    if kind == 0x66:  # 'f'
        return _F32.unpack_from(buf, offset)[0], offset + 4
    if kind == 0x44:  # 'D'
        scale, value = _DECIMAL.unpack_from(buf, offset)
        return Decimal(value).scaleb(-scale), offset + 5
    if kind == 0x54:  # 'T'
        seconds = _U64.unpack_from(buf, offset)[0]
        if seconds <= _MAX_DATETIME_SECONDS:
            return _EPOCH + _dt.timedelta(seconds=seconds), offset + 8
        return Timestamp(seconds), offset + 8
    if kind == 0x78:  # 'x'
        length = _U32.unpack_from(buf, offset)[0]
        start = offset + 4
        end = start + length
        if end > limit:
            raise _Malformed(spec.SYNTAX_ERROR, "byte array overruns its field table")
        return bytes(buf[start:end]), end
    if kind == 0x56:  # 'V'
        return None, offset
    raise _Malformed(spec.SYNTAX_ERROR, f"unknown field type {kind!r} ({chr(kind)!r}) in field table")


# Tables nest by recursion; a peer nesting them hundreds deep (a few octets per level)
# would exhaust Python's stack here, and every value stored would strain whatever walks
# it later (listings, equality, re-encoding). Past MAX_TABLE_DEPTH levels of tables and
# arrays it is a syntax error (cluster/nesting.py); RabbitMQ has no such limit.
_TOO_DEEP = "field tables nested too deeply"


def _table_at(buf: Any, offset: int, limit: int, depth: int = 1) -> tuple[dict[str, Any], int]:
    if depth > MAX_TABLE_DEPTH:
        raise _Malformed(spec.SYNTAX_ERROR, _TOO_DEEP)
    length = _U32.unpack_from(buf, offset)[0]
    pos = offset + 4
    end = pos + length
    if end > limit:
        raise _Malformed(spec.SYNTAX_ERROR, "field table overruns its container")
    table: dict[str, Any] = {}
    while pos < end:
        key_length = buf[pos]
        key_end = pos + 1 + key_length
        if key_end >= end:
            raise _Malformed(spec.SYNTAX_ERROR, "field name overruns its field table")
        key = str(buf[pos + 1 : key_end], "utf-8", "surrogateescape")
        table[key], pos = _field_value(buf, key_end, end, depth)
    if pos != end:
        raise _Malformed(spec.SYNTAX_ERROR, "field value overruns its field table")
    return table, end


def decode_table(buf: bytes | bytearray | memoryview, offset: int = 0) -> tuple[dict[str, Any], int]:
    """Decode the field table (u32 length + fields) at `offset`; returns (table, offset after it).

    Raises AMQPFrameError(502 SYNTAX_ERROR) when the table does not parse.
    """
    try:
        return _table_at(buf, offset, len(buf))
    except _Malformed as exc:
        raise AMQPFrameError(exc.code, spec.reply_text(exc.code, exc.detail)) from None
    except (IndexError, struct.error):
        raise AMQPFrameError(
            spec.SYNTAX_ERROR, spec.reply_text(spec.SYNTAX_ERROR, "truncated field table")
        ) from None


def _encode_value(value: Any, out: list[bytes]) -> None:
    # bool before int: bool is an int subclass.
    if isinstance(value, str):
        data = value.encode("utf-8", "surrogateescape")
        out.append(b"S" + _U32.pack(len(data)))
        out.append(data)
    elif value is True or value is False:
        out.append(b"t\x01" if value else b"t\x00")
    elif isinstance(value, Timestamp):
        out.append(b"T" + _U64.pack(value))
    elif isinstance(value, Long):
        out.append(b"l" + _I64.pack(value))
    elif isinstance(value, int):
        if -0x80000000 <= value <= 0x7FFFFFFF:
            out.append(b"I" + _I32.pack(value))
        elif -0x8000000000000000 <= value <= 0x7FFFFFFFFFFFFFFF:
            out.append(b"l" + _I64.pack(value))
        else:
            raise ValueError(f"integer {value} does not fit a signed 64-bit field value")
    elif isinstance(value, dict):
        out.append(b"F")
        out.append(encode_table(value))
    elif isinstance(value, (list, tuple)):
        items: list[bytes] = []
        for item in value:
            _encode_value(item, items)
        body = b"".join(items)
        out.append(b"A" + _U32.pack(len(body)))
        out.append(body)
    elif value is None:
        out.append(b"V")
    elif isinstance(value, float):
        out.append(b"d" + _F64.pack(value))
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        out.append(b"x" + _U32.pack(len(data)))
        out.append(data)
    elif isinstance(value, Decimal):
        out.append(b"D" + _encode_decimal(value))
    elif isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        seconds = int(value.timestamp())
        if seconds < 0:
            raise ValueError(f"timestamp {value} is before the epoch")
        out.append(b"T" + _U64.pack(seconds))
    else:
        raise TypeError(f"cannot encode {type(value).__name__} in a field table: {value!r}")


def _encode_decimal(value: Decimal) -> bytes:
    sign, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int):
        raise ValueError(f"cannot encode {value} as an AMQP decimal")
    mantissa = int("".join(map(str, digits)) or "0")
    if exponent > 0:
        mantissa *= 10**exponent
        exponent = 0
    scale = -exponent
    if sign and mantissa:
        raise ValueError(f"RabbitMQ decimals are unsigned: {value}")
    if scale > 255 or mantissa > 0xFFFFFFFF:
        raise ValueError(f"decimal {value} does not fit scale u8 / value u32")
    return _DECIMAL.pack(scale, mantissa)


def encode_table(d: dict[str, Any]) -> bytes:
    """A field table: u32 length then (shortstr name, type letter, value) per entry."""
    out: list[bytes] = []
    for key, value in d.items():
        name = key.encode("utf-8", "surrogateescape")
        if len(name) > 255:
            raise ValueError(f"field name longer than 255 octets: {key!r}")
        out.append(_U8.pack(len(name)) + name)
        _encode_value(value, out)
    body = b"".join(out)
    return _U32.pack(len(body)) + body


# --- method arguments ----------------------------------------------------------------------


def _decode_arguments(cls: type[Method], buf: Any, pos: int, end: int) -> Method:
    """Decode `cls`'s arguments from buf[pos:end]; raises IndexError/struct.error/_Malformed."""
    values: list[Any] = []
    bits = 0
    bit_mask = 0  # 0 → the next bit starts a fresh octet
    for domain in cls.ARGUMENTS:
        if domain == "bit":
            if bit_mask == 0 or bit_mask == 0x100:
                bits = buf[pos]
                pos += 1
                bit_mask = 1
            values.append(bool(bits & bit_mask))
            bit_mask <<= 1
            continue
        bit_mask = 0
        if domain == "shortstr":
            length = buf[pos]
            start = pos + 1
            pos = start + length
            if pos > end:
                raise IndexError
            try:
                values.append(str(buf[start:pos], "utf-8"))
            except UnicodeDecodeError:
                # RabbitMQ 3.10 asserts UTF-8 in method short strings (names, tags,
                # binding keys, the vhost); only basic.publish, parsed by its own path
                # above, takes any octets as exchange and routing key.
                raise _Malformed(spec.FRAME_ERROR, "Malformed UTF-8 in shortstr") from None
        elif domain == "short":
            values.append(_U16.unpack_from(buf, pos)[0])
            pos += 2
        elif domain == "long":
            values.append(_U32.unpack_from(buf, pos)[0])
            pos += 4
        elif domain == "longlong":
            values.append(_U64.unpack_from(buf, pos)[0])
            pos += 8
        elif domain == "octet":
            values.append(buf[pos])
            pos += 1
        elif domain == "table":
            length = _U32.unpack_from(buf, pos)[0]
            if pos + 4 + length > end:
                raise IndexError
            try:
                table, pos = _table_at(buf, pos, end)
            except (IndexError, struct.error):
                raise _Malformed(spec.SYNTAX_ERROR, "truncated field value in field table") from None
            values.append(table)
        elif domain == "longstr":
            length = _U32.unpack_from(buf, pos)[0]
            start = pos + 4
            pos = start + length
            if pos > end:
                raise IndexError
            values.append(bytes(buf[start:pos]))
        else:  # pragma: no cover - spec.py asserts the domain set
            raise AssertionError(domain)
    if pos != end:
        raise IndexError("argument octets left over or overrun")
    return cls(*values)


def _encode_arguments(method: Method) -> bytes:
    out: list[bytes] = []
    bits = 0
    bit_mask = 0
    for domain, name in zip(method.ARGUMENTS, method.FIELD_NAMES):
        value = getattr(method, name)
        if domain == "bit":
            if bit_mask == 0 or bit_mask == 0x100:
                if bit_mask:
                    out.append(_U8.pack(bits))
                bits = 0
                bit_mask = 1
            if value:
                bits |= bit_mask
            bit_mask <<= 1
            continue
        if bit_mask:
            out.append(_U8.pack(bits))
            bit_mask = 0
        if domain == "shortstr":
            data = value.encode("utf-8", "surrogateescape")
            if len(data) > 255:
                raise ValueError(f"{method.NAME}.{name} is longer than 255 octets")
            out.append(_U8.pack(len(data)) + data)
        elif domain == "short":
            out.append(_U16.pack(value))
        elif domain == "long":
            out.append(_U32.pack(value))
        elif domain == "longlong":
            out.append(_U64.pack(value))
        elif domain == "octet":
            out.append(_U8.pack(value))
        elif domain == "table":
            out.append(encode_table(value or {}))
        elif domain == "longstr":
            data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)
            out.append(_U32.pack(len(data)) + data)
    if bit_mask:
        out.append(_U8.pack(bits))
    return b"".join(out)


def encode_method(channel: int, method: Method) -> bytes:
    """One complete method frame. Raises ValueError for values the wire cannot carry."""
    try:
        args = _encode_arguments(method)
        head = _METHOD_HEAD.pack(spec.FRAME_METHOD, channel, 4 + len(args), method.CLASS_ID, method.METHOD_ID)
    except struct.error as exc:
        raise ValueError(f"{method.NAME}: {exc}") from None
    return b"".join((head, args, _FRAME_END_BYTE))


# --- content properties --------------------------------------------------------------------

_PROPERTY_FIELDS = spec.BASIC_PROPERTIES
assert tuple(BasicProperties.__dataclass_fields__) == tuple(name for name, _, _ in _PROPERTY_FIELDS)


def decode_properties(raw: bytes | bytearray | memoryview) -> BasicProperties:
    """Decode property flags + property list (the header payload after class/weight/size).

    Raises AMQPFrameError(502 SYNTAX_ERROR) when the octets do not parse.
    """
    try:
        return _decode_properties(raw)
    except _Malformed as exc:
        raise AMQPFrameError(exc.code, spec.reply_text(exc.code, exc.detail)) from None
    except (IndexError, struct.error):
        raise AMQPFrameError(
            spec.SYNTAX_ERROR, spec.reply_text(spec.SYNTAX_ERROR, "malformed content properties")
        ) from None


# Property kinds as small ints: cheaper to compare than domain names in the hot loop.
_P_SHORTSTR, _P_OCTET, _P_TABLE, _P_LONGLONG = 0, 1, 2, 3
_P_KIND = {"shortstr": _P_SHORTSTR, "octet": _P_OCTET, "table": _P_TABLE, "longlong": _P_LONGLONG}
# flags word → ((index in BasicProperties, kind), ...) for the properties present.
# Publishers reuse a handful of flag patterns, so this stays tiny.
_PROPERTY_PLANS: dict[int, tuple[tuple[int, int], ...]] = {}


def _property_plan(flags: int) -> tuple[tuple[int, int], ...]:
    plan = tuple(
        (index, _P_KIND[domain]) for index, (_name, domain, bit) in enumerate(_PROPERTY_FIELDS) if flags & bit
    )
    _PROPERTY_PLANS[flags] = plan
    return plan


def _decode_properties(raw: Any) -> BasicProperties:
    end = len(raw)
    flags = _U16.unpack_from(raw, 0)[0]
    pos = 2
    # Bit 0 says another flag word follows; basic defines only 14 properties, so
    # later words can carry nothing we know and are skipped.
    word = flags
    while word & 1:
        word = _U16.unpack_from(raw, pos)[0]
        pos += 2
    flags &= 0xFFFC
    plan = _PROPERTY_PLANS.get(flags)
    if plan is None:
        plan = _property_plan(flags)
    values: list[Any] = [None] * 14
    for index, kind in plan:
        if kind == 0:
            length = raw[pos]
            start = pos + 1
            pos = start + length
            if pos > end:
                raise IndexError
            values[index] = str(raw[start:pos], "utf-8", "surrogateescape")
        elif kind == 1:
            values[index] = raw[pos]
            pos += 1
        elif kind == 2:
            values[index], pos = _table_at(raw, pos, end)
        else:
            values[index] = _U64.unpack_from(raw, pos)[0]
            pos += 8
    if pos != end:
        raise IndexError("property octets left over")
    return BasicProperties(*values)


def encode_properties(props: BasicProperties) -> bytes:
    """Property flags + property list for `props` (absent properties are None)."""
    flags = 0
    out: list[bytes] = []
    for name, domain, bit in _PROPERTY_FIELDS:
        value = getattr(props, name)
        if value is None:
            continue
        flags |= bit
        if domain == "shortstr":
            data = value.encode("utf-8", "surrogateescape")
            if len(data) > 255:
                raise ValueError(f"property {name} is longer than 255 octets")
            out.append(_U8.pack(len(data)) + data)
        elif domain == "octet":
            out.append(_U8.pack(value))
        elif domain == "table":
            out.append(encode_table(value))
        else:
            if isinstance(value, _dt.datetime):
                value = int(value.timestamp())
            out.append(_U64.pack(value))
    return _U16.pack(flags) + b"".join(out)


# --- content encoding ----------------------------------------------------------------------


def _body_frames(channel: int, body: bytes, frame_max: int, out: list[bytes]) -> None:
    """Append body frames carrying `body`, each payload at most frame_max - 8 octets (0 = no limit)."""
    size = len(body)
    if not size:
        return
    chunk = frame_max - spec.FRAME_OVERHEAD if frame_max else size
    assert chunk > 0, frame_max
    if size <= chunk:
        out.append(_FRAME_HEAD.pack(spec.FRAME_BODY, channel, size))
        out.append(body)
        out.append(_FRAME_END_BYTE)
        return
    view = memoryview(body)
    for start in range(0, size, chunk):
        piece = view[start : start + chunk]
        out.append(_FRAME_HEAD.pack(spec.FRAME_BODY, channel, len(piece)))
        out.append(piece)  # type: ignore[arg-type]  # join accepts memoryviews
        out.append(_FRAME_END_BYTE)


def encode_content(channel: int, class_id: int, raw_properties: bytes, body: bytes, frame_max: int) -> bytes:
    """Content header frame followed by body frames split to frame_max - 8 octets each."""
    out = [
        _CONTENT_HEAD.pack(spec.FRAME_HEADER, channel, 12 + len(raw_properties), class_id, 0, len(body)),
        raw_properties,
        _FRAME_END_BYTE,
    ]
    _body_frames(channel, body, frame_max, out)
    return b"".join(out)


# --- fast paths for the hot methods ---------------------------------------------------------

# Encoded consumer tags / exchange names / routing keys repeat across deliveries;
# remembering their length-prefixed form saves an encode and a concatenation per message.
_SHORTSTR_CACHE: dict[str, bytes] = {}
_SHORTSTR_CACHE_MAX = 4096


def _shortstr(value: str) -> bytes:
    encoded = _SHORTSTR_CACHE.get(value)
    if encoded is None:
        data = value.encode("utf-8", "surrogateescape")
        if len(data) > 255:
            raise ValueError(f"short string longer than 255 octets: {value[:40]!r}...")
        encoded = _U8.pack(len(data)) + data
        if len(_SHORTSTR_CACHE) >= _SHORTSTR_CACHE_MAX:
            _SHORTSTR_CACHE.clear()
        _SHORTSTR_CACHE[value] = encoded
    return encoded


def _content_frames(
    channel: int, method_args: bytes, method_id: int, raw_properties: bytes, body: bytes, frame_max: int
) -> bytes:
    size = len(body)
    head = _METHOD_HEAD.pack(spec.FRAME_METHOD, channel, 4 + len(method_args), 60, method_id)
    header = _CONTENT_HEAD.pack(spec.FRAME_HEADER, channel, 12 + len(raw_properties), 60, 0, size)
    if not size:
        return b"".join((head, method_args, b"\xce", header, raw_properties, b"\xce"))
    if not frame_max or size <= frame_max - spec.FRAME_OVERHEAD:
        return b"".join(
            (
                head,
                method_args,
                b"\xce",
                header,
                raw_properties,
                b"\xce",
                _FRAME_HEAD.pack(spec.FRAME_BODY, channel, size),
                body,
                b"\xce",
            )
        )
    out = [head, method_args, b"\xce", header, raw_properties, b"\xce"]
    _body_frames(channel, body, frame_max, out)
    return b"".join(out)


# One precompiled struct per (consumer tag, exchange, routing key, property list) length
# packs the whole method frame and header frame, plus the head of a single body
# frame, in one call. Consumers see few distinct lengths, so the cache stays small.
_DELIVER_LAYOUTS: dict[tuple[int, int, int, int], struct.Struct] = {}
_DELIVER_LAYOUTS_MAX = 1024


def _deliver_layout(key: tuple[int, int, int, int]) -> struct.Struct:
    if len(_DELIVER_LAYOUTS) >= _DELIVER_LAYOUTS_MAX:
        _DELIVER_LAYOUTS.clear()
    ct, ex, rk, raw = key
    layout = _DELIVER_LAYOUTS[key] = struct.Struct(f">BHIHH{ct}sQB{ex}s{rk}sBBHIHHQ{raw}sBBHI")
    return layout


def encode_deliver(
    channel: int,
    consumer_tag: str,
    delivery_tag: int,
    redelivered: bool,
    exchange: str,
    routing_key: str,
    raw_properties: bytes,
    body: bytes,
    frame_max: int,
) -> bytes:
    """basic.deliver method frame + content header + body frames, as one bytes."""
    ct = _shortstr(consumer_tag)
    ex = _shortstr(exchange)
    rk = _shortstr(routing_key)
    size = len(body)
    if size and (not frame_max or size <= frame_max - spec.FRAME_OVERHEAD):
        key = (len(ct), len(ex), len(rk), len(raw_properties))
        layout = _DELIVER_LAYOUTS.get(key)
        if layout is None:
            layout = _deliver_layout(key)
        try:
            head = layout.pack(
                # method frame: basic.deliver
                1, channel, 13 + key[0] + key[1] + key[2], 60, 60, ct, delivery_tag, 1 if redelivered else 0, ex, rk, 0xCE,
                # content header frame
                2, channel, 12 + key[3], 60, 0, size, raw_properties, 0xCE,
                # the head of the one body frame
                3, channel, size,
            )  # fmt: skip
        except struct.error as exc:
            raise ValueError(f"basic.deliver: {exc}") from None
        return b"".join((head, body, _FRAME_END_BYTE))
    args = b"".join((ct, _QB.pack(delivery_tag, 1 if redelivered else 0), ex, rk))
    return _content_frames(channel, args, 60, raw_properties, body, frame_max)


def encode_get_ok(
    channel: int,
    delivery_tag: int,
    redelivered: bool,
    exchange: str,
    routing_key: str,
    message_count: int,
    raw_properties: bytes,
    body: bytes,
    frame_max: int,
) -> bytes:
    """basic.get-ok method frame + content header + body frames, as one bytes."""
    args = b"".join(
        (
            _QB.pack(delivery_tag, 1 if redelivered else 0),
            _shortstr(exchange),
            _shortstr(routing_key),
            _U32.pack(message_count),
        )
    )
    return _content_frames(channel, args, 71, raw_properties, body, frame_max)


# A whole basic.ack / basic.nack frame, frame-end included: head, ids, delivery tag, bits.
_ACK_FRAME = _NACK_FRAME = struct.Struct(">BHIHHQBB")


def encode_basic_ack(channel: int, delivery_tag: int, multiple: bool) -> bytes:
    return _ACK_FRAME.pack(1, channel, 13, 60, 80, delivery_tag, 1 if multiple else 0, _FRAME_END)


def encode_basic_nack(channel: int, delivery_tag: int, multiple: bool, requeue: bool = True) -> bytes:
    bits = (1 if multiple else 0) | (2 if requeue else 0)
    return _NACK_FRAME.pack(1, channel, 13, 60, 120, delivery_tag, bits, _FRAME_END)


# --- the decoder ---------------------------------------------------------------------------


# Frame records are frozen dataclasses; their generated __init__ goes through
# object.__setattr__ per field, which costs more than the rest of decoding a small
# frame. The decoder fills the slots directly instead (same objects, same equality).
_new = object.__new__
_set_method_channel = MethodFrame.channel.__set__  # type: ignore[attr-defined]
_set_method_method = MethodFrame.method.__set__  # type: ignore[attr-defined]
_set_body_channel = BodyFrame.channel.__set__  # type: ignore[attr-defined]
_set_body_payload = BodyFrame.payload.__set__  # type: ignore[attr-defined]
_set_header_channel = HeaderFrame.channel.__set__  # type: ignore[attr-defined]
_set_header_class_id = HeaderFrame.class_id.__set__  # type: ignore[attr-defined]
_set_header_body_size = HeaderFrame.body_size.__set__  # type: ignore[attr-defined]
_set_header_properties = HeaderFrame.properties.__set__  # type: ignore[attr-defined]
_set_header_raw = HeaderFrame.raw_properties.__set__  # type: ignore[attr-defined]
_BasicProperties = BasicProperties
_BasicPublish = spec.BasicPublish

# A publisher sends the same property octets for message after message (content
# type, delivery mode); remembering their decoded values skips the property
# decoder. Each frame still gets its own BasicProperties object. Bounded, and
# property lists with headers (a mutable dict) are never remembered.
_PROPERTIES_SEEN: dict[bytes, tuple[Any, ...]] = {}
_PROPERTIES_SEEN_MAX = 256
_PROPERTY_NAMES = tuple(name for name, _, _ in spec.BASIC_PROPERTIES)


def _properties_values(props: BasicProperties) -> tuple[Any, ...]:
    return tuple(getattr(props, name) for name in _PROPERTY_NAMES)
_BasicAck = spec.BasicAck


class FrameDecoder:
    """Incremental frame parser: feed it received bytes, get back complete frames.

    `frame_max` (0 = unlimited) may be changed after connection.tune-ok; it
    applies to frames not yet parsed.

    Buffering: the octets of an incomplete frame are kept in a bytearray and only
    grown (not re-parsed) until the frame they start is complete, so a large frame
    arriving in many pieces costs linear time. Parsing then walks one immutable
    `bytes` with offsets: frame payloads are sliced out of it once each, and no
    per-frame copy of the remaining buffer is ever made. (Slicing `bytes` and
    decoding the slice is about twice as fast as doing the same through a
    memoryview, which is why the loop does not run over one.)
    """

    __slots__ = ("frame_max", "fuse_publishes", "_tail", "_need", "_error")

    def __init__(self, frame_max: int, fuse_publishes: bool = False) -> None:
        self.frame_max = frame_max
        # A basic.publish whose header and one body frame follow it in the same buffer
        # comes out as one PublishFrame (see `_fused_publish`); anything else as usual.
        self.fuse_publishes = fuse_publishes
        self._tail = bytearray()
        # Octets the buffered frame needs before parsing can make progress.
        self._need = 0
        self._error: AMQPFrameError | None = None

    @property
    def buffered(self) -> int:
        """Octets held back as the start of an incomplete frame."""
        return len(self._tail)

    @property
    def error(self) -> AMQPFrameError | None:
        return self._error

    def feed(self, data: bytes | bytearray | memoryview) -> tuple[list[Frame], AMQPFrameError | None]:
        """Parse every complete frame in the buffered octets plus `data`.

        Returns (frames, error): `frames` are the frames before the first malformed
        one; `error` is that frame's AMQPFrameError, or None. See the module doc.
        """
        if self._error is not None:
            return [], self._error
        tail = self._tail
        if tail:
            tail += data
            if len(tail) < self._need:
                return [], None
            buf = bytes(tail)
        elif type(data) is bytes:
            buf = data
        else:
            buf = bytes(data)
        frames: list[Frame] = []
        pos, need, error = self._parse(buf, frames)
        if error is not None:
            self._error = error
            self._tail = bytearray()
        elif pos < len(buf):
            with memoryview(buf) as view:
                self._tail = bytearray(view[pos:])
            self._need = need
        elif tail:
            self._tail = bytearray()
        return frames, error

    def feed_one(self, data: bytes | bytearray | memoryview) -> tuple[Frame | None, AMQPFrameError | None]:
        """Like `feed`, but parse at most one frame; the octets after it stay buffered for
        the next `feed` or `feed_one` (which may then be given b"").

        For the handshake, where each frame may change how the next is read (tune-ok sets
        frame_max) or whether it is read at all (a violation ends the connection). One
        frame header is read to find where the frame ends, so a peer streaming small
        frames costs one parse per frame, never one per octet."""
        if self._error is not None:
            return None, self._error
        tail = self._tail
        tail += data
        if len(tail) < 7 or len(tail) < self._need:
            return None, None
        end = 8 + _U32.unpack_from(tail, 3)[0]
        frames: list[Frame] = []
        pos, need, error = self._parse(bytes(tail[:end]), frames)
        if error is not None:
            self._error = error
            self._tail = bytearray()
            return None, error
        if not frames:
            self._need = need
            return None, None
        del tail[:pos]  # CPython deletes a bytearray's head without moving the rest
        self._need = 0
        return frames[0], None

    def _parse(self, buf: bytes, frames: list[Frame]) -> tuple[int, int, AMQPFrameError | None]:
        """Parse frames from buf[0:]; returns (offset of the first unparsed octet, octets
        that the frame starting there needs in all, error or None)."""
        append = frames.append
        total = len(buf)
        frame_max = self.frame_max
        head_unpack = _FRAME_HEAD.unpack_from
        u32_unpack = _U32.unpack_from
        u16_unpack = _U16.unpack_from
        qb_unpack = _QB.unpack_from
        new = _new
        fuse = self.fuse_publishes
        pos = 0
        while True:
            if total - pos < 7:
                return pos, 7, None
            frame_type, channel, size = head_unpack(buf, pos)
            if frame_max and size > frame_max:
                return pos, 0, _frame_error(
                    frame_type, channel, b"", f"{{frame_too_large,{size},{frame_max - spec.FRAME_OVERHEAD}}}"
                )
            start = pos + 7
            end = start + size
            if end >= total:
                return pos, size + 8, None
            if buf[end] != 0xCE:
                return pos, 0, _frame_error(
                    frame_type, channel, buf[start:end], f"{{invalid_frame_end_marker,{buf[end]}}}"
                )
            if frame_type == 1:
                if size < 4:
                    return pos, 0, _frame_error(frame_type, channel, buf[start:end], "unknown_frame")
                key = u32_unpack(buf, start)[0]
                try:
                    if key == _METHOD_KEY_PUBLISH:
                        # ticket short | exchange shortstr | routing-key shortstr | mandatory, immediate bits
                        p = start + 6
                        length = buf[p]
                        p += 1
                        exchange = buf[p : p + length].decode("utf-8", "surrogateescape")
                        p += length
                        length = buf[p]
                        p += 1
                        routing_key = buf[p : p + length].decode("utf-8", "surrogateescape")
                        p += length
                        bits = buf[p]
                        if p + 1 != end:
                            raise IndexError("basic.publish arguments do not fill the frame")
                        method: Method = _BasicPublish(
                            u16_unpack(buf, start + 4)[0], exchange, routing_key, bits & 1 != 0, bits & 2 != 0
                        )
                    elif key == _METHOD_KEY_ACK and size == 13:
                        tag, bits = qb_unpack(buf, start + 4)
                        method = _BasicAck(tag, bits & 1 != 0)
                    else:
                        cls = spec.METHODS.get((key >> 16, key & 0xFFFF))
                        if cls is None:
                            return pos, 0, AMQPFrameError(
                                spec.NOT_IMPLEMENTED,
                                spec.reply_text(
                                    spec.NOT_IMPLEMENTED,
                                    f"unknown method class_id {key >> 16} method_id {key & 0xFFFF}",
                                ),
                                channel,
                                key >> 16,
                                key & 0xFFFF,
                            )
                        method = _decode_arguments(cls, buf, start + 4, end)
                except _Malformed as exc:
                    return pos, 0, AMQPFrameError(
                        exc.code, spec.reply_text(exc.code, exc.detail), channel, key >> 16, key & 0xFFFF
                    )
                except (IndexError, struct.error):
                    return pos, 0, AMQPFrameError(
                        spec.FRAME_ERROR,
                        spec.reply_text(spec.FRAME_ERROR, f"cannot decode {_erlang_binary(buf[start + 4 : end], printable=False)}"),
                        channel,
                        key >> 16,
                        key & 0xFFFF,
                    )
                if fuse and key == _METHOD_KEY_PUBLISH:
                    fused = _fused_publish(buf, end + 1, total, channel, method, frame_max)  # type: ignore[arg-type]
                    if fused is not None:
                        append(fused[0])
                        pos = fused[1]
                        continue
                frame: Frame = new(MethodFrame)
                _set_method_channel(frame, channel)
                _set_method_method(frame, method)
                append(frame)
            elif frame_type == 3:
                frame = new(BodyFrame)
                _set_body_channel(frame, channel)
                _set_body_payload(frame, buf[start:end])
                append(frame)
            elif frame_type == 2:
                if size < 14:
                    # class + weight + body size (12) + the mandatory first flag word (2).
                    return pos, 0, _frame_error(frame_type, channel, buf[start:end], "unknown_frame")
                class_id, _weight, body_size = _HEADER_PAYLOAD.unpack_from(buf, start)
                raw = buf[start + 12 : end]
                cached = _PROPERTIES_SEEN.get(raw)
                if cached is not None:
                    props = _BasicProperties(*cached)
                else:
                    try:
                        props = _decode_properties(raw)
                        if props.headers is None:
                            # Without headers every value is immutable, so the values can be shared.
                            if len(_PROPERTIES_SEEN) >= _PROPERTIES_SEEN_MAX:
                                _PROPERTIES_SEEN.clear()
                            _PROPERTIES_SEEN[raw] = _properties_values(props)
                    except _Malformed as exc:
                        return pos, 0, AMQPFrameError(exc.code, spec.reply_text(exc.code, exc.detail), channel, class_id)
                    except (IndexError, struct.error):
                        return pos, 0, AMQPFrameError(
                            spec.SYNTAX_ERROR,
                            spec.reply_text(spec.SYNTAX_ERROR, f"malformed content properties {_erlang_binary(raw[:16])}"),
                            channel,
                            class_id,
                        )
                frame = new(HeaderFrame)
                _set_header_channel(frame, channel)
                _set_header_class_id(frame, class_id)
                _set_header_body_size(frame, body_size)
                _set_header_properties(frame, props)
                _set_header_raw(frame, raw)
                append(frame)
            elif frame_type == 8 and size == 0:
                append(HeartbeatFrame(channel))
            else:
                return pos, 0, _frame_error(frame_type, channel, buf[start:end], "unknown_frame")
            pos = end + 1


def _fused_publish(
    buf: bytes, pos: int, total: int, channel: int, method: Any, frame_max: int
) -> tuple[PublishFrame, int] | None:
    """The content of the basic.publish just parsed, when its header frame and a single
    body frame carrying the whole body start at `pos` and are complete and well formed:
    (PublishFrame, offset after them). None otherwise — the caller then returns the
    method frame alone and parses what follows as separate frames, so every error
    and every unusual shape (bodies in several frames, content split across reads,
    another channel's frame in between) takes the ordinary path."""
    if total - pos < 7:
        return None
    frame_type, header_channel, size = _FRAME_HEAD.unpack_from(buf, pos)
    start = pos + 7
    end = start + size
    if (frame_type != 2 or header_channel != channel or size < 14 or end >= total or buf[end] != 0xCE
            or (frame_max and size > frame_max)):
        return None
    class_id, _weight, body_size = _HEADER_PAYLOAD.unpack_from(buf, start)
    if class_id != 60:
        return None
    if body_size:
        body_at = end + 1
        if total - body_at < 7:
            return None
        frame_type, body_channel, size = _FRAME_HEAD.unpack_from(buf, body_at)
        body_end = body_at + 7 + size
        if (frame_type != 3 or body_channel != channel or size != body_size or body_end >= total
                or buf[body_end] != 0xCE or (frame_max and size > frame_max)):
            return None
        body = buf[body_at + 7 : body_end]
        after = body_end + 1
    else:
        body = b""
        after = end + 1
    raw = buf[start + 12 : end]
    cached = _PROPERTIES_SEEN.get(raw)
    if cached is not None:
        props = _BasicProperties(*cached)
    else:
        try:
            props = _decode_properties(raw)
        except (_Malformed, IndexError, struct.error):
            return None  # reported by the ordinary path, as the header frame's error
        if props.headers is None:
            if len(_PROPERTIES_SEEN) >= _PROPERTIES_SEEN_MAX:
                _PROPERTIES_SEEN.clear()
            _PROPERTIES_SEEN[raw] = _properties_values(props)
    return PublishFrame(channel, method, 60, body_size, props, raw, body), after
