"""Fuzz cases for a real node: byte streams a hostile or broken client might send.

Valid frames are built with pamqp (independent of the node's codec). A case is
a list of writes; `cases(seed, n)` yields a reproducible mix of random bytes,
valid sessions mutated at the byte level (flip, insert, delete, duplicate,
truncate) and targeted malformations after a valid handshake: wrong frame
types, oversized sizes, bad frame ends, unknown class/method ids, bad field
tables, content without a method, a body before its header, frames on channels
not open or beyond channel_max.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

from pamqp import commands as pc
from pamqp import frame as pframe
from pamqp import header as pheader

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_END = b"\xce"
FRAME_MAX = 131072  # what the fuzz client's tune-ok asks for (the node's default)


@dataclass(frozen=True)
class Case:
    kind: str
    writes: tuple[bytes, ...]
    # For targeted cases whose answer is known: the reply code of the node's
    # connection.close (None: any proper ending is fine).
    expect_code: int | None = None

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)


def method(m: object, channel: int = 0) -> bytes:
    return pframe.marshal(m, channel)


def raw_frame(frame_type: int, channel: int, payload: bytes, end: bytes = FRAME_END) -> bytes:
    return struct.pack(">BHI", frame_type, channel, len(payload)) + payload + end


def content(channel: int, body: bytes, properties: pc.Basic.Properties | None = None) -> bytes:
    header = pheader.ContentHeader(0, len(body), properties or pc.Basic.Properties())
    out = pframe.marshal(header, channel)
    if body:
        out += raw_frame(3, channel, body)
    return out


def handshake(heartbeat: int = 0) -> list[bytes]:
    return [
        PROTOCOL_HEADER,
        method(pc.Connection.StartOk(client_properties={"product": "leveret-fuzz",
                                                        "capabilities": {"authentication_failure_close": True,
                                                                         "consumer_cancel_notify": True}},
                                     mechanism="PLAIN", response="\0guest\0guest")),
        method(pc.Connection.TuneOk(channel_max=32, frame_max=FRAME_MAX, heartbeat=heartbeat)),
        method(pc.Connection.Open(virtual_host="/")),
    ]


def opened() -> list[bytes]:
    """A handshake and channel 1 open."""
    return handshake() + [method(pc.Channel.Open(), 1)]


def session(rng: random.Random) -> list[bytes]:
    """A well-formed client session over most of the protocol, ending with connection.close."""
    q = f"fuzz-{rng.randrange(1 << 30):x}"
    body = rng.randbytes(rng.choice((0, 1, 100, 5000)))
    return opened() + [
        method(pc.Basic.Qos(prefetch_count=10), 1),
        method(pc.Queue.Declare(queue=q, exclusive=True, arguments={"x-max-length": 100, "x-custom": [1, "a"]}), 1),
        method(pc.Confirm.Select(), 1),
        method(pc.Basic.Publish(exchange="", routing_key=q), 1) + content(1, body, pc.Basic.Properties(
            content_type="application/octet-stream", headers={"k": "v", "n": 7}, delivery_mode=2, priority=3)),
        method(pc.Exchange.Declare(exchange=q + "-x", exchange_type="topic"), 1),
        method(pc.Queue.Bind(queue=q, exchange=q + "-x", routing_key="a.#"), 1),
        method(pc.Basic.Publish(exchange=q + "-x", routing_key="a.b", mandatory=True), 1) + content(1, b"routed"),
        method(pc.Basic.Get(queue=q), 1),
        method(pc.Basic.Consume(queue=q, consumer_tag="ct"), 1),
        method(pc.Basic.Cancel(consumer_tag="ct"), 1),
        method(pc.Exchange.Delete(exchange=q + "-x"), 1),
        method(pc.Channel.Open(), 2),
        method(pc.Tx.Select(), 2),
        method(pc.Basic.Publish(exchange="", routing_key=q), 2) + content(2, b"tx"),
        # Nothing more on channel 2: a method pipelined behind tx.commit is refused
        # while the commit is in progress (504, as RabbitMQ while committing).
        method(pc.Tx.Commit(), 2),
        method(pc.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0)),
    ]


# ----------------------------------------------------------------------------- mutations


def mutate(rng: random.Random, data: bytes, count: int) -> bytes:
    b = bytearray(data)
    for _ in range(count):
        if not b:
            b += rng.randbytes(rng.randint(1, 16))
            continue
        op = rng.randrange(6)
        i = rng.randrange(len(b))
        if op == 0:  # flip bits
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # set a random byte
            b[i] = rng.randrange(256)
        elif op == 2:  # insert
            b[i:i] = rng.randbytes(rng.randint(1, 12))
        elif op == 3:  # delete
            del b[i:i + rng.randint(1, 12)]
        elif op == 4:  # duplicate a slice
            j = min(len(b), i + rng.randint(1, 40))
            b[j:j] = b[i:j]
        else:  # an interesting value for a size, id or length
            v = rng.choice((0, 1, 0x7F, 0x80, 0xFF, 0xCE, 0x7FFFFFFF, 0xFFFFFFFF, FRAME_MAX, FRAME_MAX + 1))
            width = rng.choice((1, 2, 4))
            b[i:i + width] = (v & ((1 << (8 * width)) - 1)).to_bytes(width, "big")
    return bytes(b)


def split(rng: random.Random, data: bytes) -> tuple[bytes, ...]:
    """Cut `data` into a few writes at random places (the node must not care)."""
    if len(data) < 2 or rng.random() < 0.5:
        return (data,)
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 4))))
    return tuple(data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)]))


# ----------------------------------------------------------------------------- targeted cases


def _table_with_bad_type() -> bytes:
    # queue.declare whose arguments table holds a value of unknown type 'Q'.
    q = b"fuzz-badtable"
    table = bytes([1]) + b"x" + b"Q" + b"\x00" * 4
    args = struct.pack(">HH", 50, 10) + struct.pack(">H", 0) + bytes([len(q)]) + q + b"\x00" + struct.pack(">I", len(table)) + table
    return raw_frame(1, 1, args)


def _table_longer_than_frame() -> bytes:
    q = b"fuzz-longtable"
    args = struct.pack(">HH", 50, 10) + struct.pack(">H", 0) + bytes([len(q)]) + q + b"\x00" + struct.pack(">I", 1000) + b"\x01x"
    return raw_frame(1, 1, args)


def _deep_table(depth: int) -> bytes:
    table = b""
    for _ in range(depth):
        inner = bytes([1]) + b"t" + b"F" + struct.pack(">I", len(table)) + table
        table = inner
    q = b"fuzz-deep"
    args = struct.pack(">HH", 50, 10) + struct.pack(">H", 0) + bytes([len(q)]) + q + b"\x00" + struct.pack(">I", len(table)) + table
    return raw_frame(1, 1, args)


def targeted() -> list[Case]:
    """Known malformations after a valid handshake and channel.open, with the reply RabbitMQ gives."""
    publish = method(pc.Basic.Publish(exchange="", routing_key="fuzz-nowhere"), 1)
    header = pframe.marshal(pheader.ContentHeader(0, 4, pc.Basic.Properties()), 1)
    # Codes as RabbitMQ 3.10.8 answers (checked by hand against it). None where it
    # differs and Leveret's own proper close is kept: for unknown class / method ids
    # and unknown field types RabbitMQ's reader crashes and drops the socket silently
    # (Leveret: 540 / 502); it has no nesting limit (Leveret: 502 past 100 levels);
    # it takes a body longer than announced and a channel number above channel_max
    # (it limits only the count of channels).
    cases = [
        ("bad frame end", raw_frame(1, 1, struct.pack(">HH", 60, 10) + b"\x00" * 7, end=b"\x00"), 501),
        ("unknown frame type 9", raw_frame(9, 1, b"abc"), 501),
        ("unknown frame type 255", raw_frame(255, 0, b""), 501),
        ("oversized frame", struct.pack(">BHI", 1, 1, FRAME_MAX + 1) + b"\x00" * 16, 501),
        ("size 2^32-1", struct.pack(">BHI", 3, 1, 0xFFFFFFFF) + b"\x00" * 16, 501),
        ("unknown class", raw_frame(1, 1, struct.pack(">HH", 999, 10)), None),
        ("unknown method", raw_frame(1, 1, struct.pack(">HH", 60, 999)), None),
        ("truncated method arguments", raw_frame(1, 1, struct.pack(">HH", 50, 10) + b"\x00"), 501),
        ("bad field table value type", _table_with_bad_type(), None),
        ("field table longer than frame", _table_longer_than_frame(), 501),
        ("field table nested 200 deep", _deep_table(200), None),
        ("field table nested 3000 deep", _deep_table(3000), None),
        ("content header without method", header, 505),
        ("body without method", raw_frame(3, 1, b"body"), 505),
        ("body before header", publish + raw_frame(3, 1, b"body"), 505),
        ("method before body", publish + header + method(pc.Basic.Qos(), 1), 505),
        ("header for another class", publish + raw_frame(2, 1, struct.pack(">HHQH", 50, 0, 4, 0)), 505),
        ("body larger than announced", publish + header + raw_frame(3, 1, b"too long"), None),
        ("heartbeat on a channel", raw_frame(8, 1, b""), 505),
        ("method on a channel not open", method(pc.Basic.Qos(), 7), 504),
        ("channel beyond channel_max", method(pc.Channel.Open(), 33), None),
        ("channel.open twice", method(pc.Channel.Open(), 1), 504),
        ("connection method on a channel", method(pc.Connection.Open(virtual_host="/"), 1), 503),
        ("channel method on channel 0", method(pc.Channel.Flow(active=True), 0), 504),
        ("exchange type in octets that are not UTF-8",
         raw_frame(1, 1, struct.pack(">HHH", 40, 10, 0) + b"\x02ex" + b"\x05t\xffype" + b"\x00" + struct.pack(">I", 0)), 501),
        ("queue name in octets that are not UTF-8",
         raw_frame(1, 1, struct.pack(">HHH", 50, 10, 0) + b"\x02q\xff" + b"\x00" + struct.pack(">I", 0)), 501),
    ]
    out = [Case(f"targeted: {name}", tuple(opened()) + (data,), code) for name, data, code in cases]
    # Before the handshake is complete RabbitMQ drops the client without a word.
    out.append(Case("targeted: garbage instead of start-ok", (PROTOCOL_HEADER, b"\x01\x00\x00garbage\xce"), None))
    out.append(Case("targeted: bad protocol header", (b"GET / HTTP/1.1\r\n\r\n",), None))
    out.append(Case("targeted: AMQP 1.0 header", (b"AMQP\x00\x01\x00\x00",), None))
    return out


# ----------------------------------------------------------------------------- the mix


def cases(seed: int, n: int) -> list[Case]:
    rng = random.Random(seed)
    out = targeted()
    while len(out) < n:
        roll = rng.random()
        if roll < 0.15:
            data = rng.randbytes(rng.randint(0, 300))
            if rng.random() < 0.5:
                data = PROTOCOL_HEADER + data
            out.append(Case("random bytes", split(rng, data)))
        elif roll < 0.25:
            # Valid frames, shuffled or from the wrong phase.
            parts = session(rng)
            rng.shuffle(parts)
            out.append(Case("shuffled session", tuple(parts[: rng.randint(1, len(parts))])))
        elif roll < 0.35:
            data = b"".join(session(rng))
            out.append(Case("valid session", split(rng, data)))
        elif roll < 0.85:
            parts = session(rng)
            keep = rng.randint(1, len(parts))
            # Mutate after the handshake more often: that is where most of the protocol is.
            start = rng.choice((0, 1, 4, 5)) if keep > 5 else 0
            prefix = b"".join(parts[:start])
            rest = mutate(rng, b"".join(parts[start:keep]), rng.randint(1, 4))
            out.append(Case("mutated session", split(rng, prefix + rest)))
        else:
            # A valid frame of a type, size or channel the node does not expect, after the handshake.
            frame_type = rng.choice((0, 1, 2, 3, 4, 7, 8, 9, 0x41, 0xFF))
            channel = rng.choice((0, 1, 2, 31, 32, 33, 65535))
            payload = rng.randbytes(rng.choice((0, 1, 4, 11, 14, 100)))
            data = raw_frame(frame_type, channel, payload, end=rng.choice((FRAME_END, FRAME_END, b"\x00")))
            out.append(Case("odd frame", tuple(opened()) + (data,)))
    return out[:n]
