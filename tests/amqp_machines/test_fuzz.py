"""The connection never raises: random and mutated byte streams yield only events and a proper close."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import commands as pc
from pamqp import exceptions as pexceptions
from pamqp import frame as pframe
from pamqp import header as pheader

from broker.amqp import spec
from broker.amqp.connection import (
    ConnectionClosed,
    ConnectionState,
    Event,
    MethodReceived,
    PublishReceived,
    TxCommitted,
)

from .peer import marshal, new_connection, parse, publish_frames

EVENT_TYPES = Event.__args__  # type: ignore[attr-defined]


def _session_parts() -> list[bytes]:
    """A valid client session touching most of the protocol, one client write per part."""
    return [
        b"AMQP\x00\x00\x09\x01",
        marshal(
            pc.Connection.StartOk(
                client_properties={"capabilities": {"authentication_failure_close": True}},
                mechanism="PLAIN",
                response="\0guest\0guest",
            )
        ),
        marshal(pc.Connection.TuneOk(channel_max=16, frame_max=4096, heartbeat=10)),
        marshal(pc.Connection.Open(virtual_host="/")),
        marshal(pc.Channel.Open(), channel=1),
        marshal(pc.Channel.Open(), channel=2),
        marshal(pc.Basic.Qos(prefetch_count=3), channel=1),
        marshal(pc.Confirm.Select(), channel=1),
        marshal(pc.Basic.Consume(queue="q", consumer_tag="c"), channel=1),
        publish_frames(1, b"hello" * 300, properties=pc.Basic.Properties(headers={"a": 1}, delivery_mode=2), chunk=500),
        marshal(pc.Queue.Declare(queue="q", arguments={"x-max-length": 10}), channel=2),
        marshal(pc.Tx.Select(), channel=2),
        publish_frames(2, b"tx"),
        marshal(pc.Tx.Commit(), channel=2),
        ACK,
        marshal(pc.Channel.Close(reply_code=200, reply_text="", class_id=0, method_id=0), channel=1),
        marshal(pc.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0)),
    ]


# Acks a delivery the node makes in answer to basic.consume, so it must come in a later read.
ACK = marshal(pc.Basic.Ack(delivery_tag=1), channel=1)
PARTS = _session_parts()
SESSION = b"".join(PARTS)
# The same without the one frame that waits for the node: any cut of it gives the same events.
PIPELINED = b"".join(p for p in PARTS if p != ACK)


def _check(chunks: list[bytes], now_steps: list[float] | None = None, react: bool = True) -> list[Any]:
    conn = new_connection()
    events: list[Any] = []
    out = bytearray()
    now = 0.0
    for i, chunk in enumerate(chunks):
        new = conn.receive_data(chunk)
        events += new
        if react:
            _react(conn, new)
        if now_steps:
            now += now_steps[i % len(now_steps)]
            events += conn.tick(now)
        out += conn.data_to_send()
    events += conn.connection_lost()
    out += conn.data_to_send()
    for event in events:
        assert isinstance(event, EVENT_TYPES), event
    closed = [e for e in events if isinstance(e, ConnectionClosed)]
    assert len(closed) == 1, closed
    assert events[-1] is closed[0], "nothing follows ConnectionClosed"
    assert closed[0].code != spec.INTERNAL_ERROR, closed[0]
    assert conn.state is ConnectionState.CLOSED
    # Whatever we wrote is well-formed AMQP (checked by pamqp), a connection.close at most once,
    # and nothing but close-ok after it.
    data = bytes(out)
    if data.startswith(b"AMQP"):
        assert data == spec.PROTOCOL_HEADER
        return events
    frames = _parse_tolerant(data)
    closes = [i for i, (_, f) in enumerate(frames) if isinstance(f, pc.Connection.Close)]
    assert len(closes) <= 1
    if closes:
        after = [f for _, f in frames[closes[0] + 1 :]]
        assert all(isinstance(f, pc.Connection.CloseOk) for f in after), after
    return events


def _parse_tolerant(data: bytes) -> list[tuple[int, Any]]:
    """pamqp's parse, except that pamqp insists on UTF-8 in short strings while AMQP (and
    RabbitMQ) echo back whatever octets the client sent: such frames are checked for
    framing only."""
    out: list[tuple[int, Any]] = []
    while data:
        assert len(data) >= 8 and data[0] in (1, 2, 3, 8), data[:16]
        size = int.from_bytes(data[3:7], "big")
        assert data[7 + size] == spec.FRAME_END
        frame, data = data[: size + 8], data[size + 8 :]
        try:
            out += parse(frame)
        except pexceptions.UnmarshalingException as exc:
            assert isinstance(exc.__cause__, UnicodeDecodeError), exc
            out.append((int.from_bytes(frame[1:3], "big"), None))
    return out


def _react(conn: Any, events: list[Any]) -> None:
    """A minimal node: answers what the machines hand over, driven only by events."""
    for e in events:
        if isinstance(e, PublishReceived) and e.seq is not None:
            conn.confirm(e.channel, e.seq)
        elif isinstance(e, TxCommitted):
            conn.tx_commit_ok(e.channel)
        elif isinstance(e, MethodReceived) and isinstance(e.method, spec.BasicConsume):
            conn.send_method(e.channel, spec.BasicConsumeOk(consumer_tag=e.method.consumer_tag))
            conn.deliver(e.channel, e.method.consumer_tag, "m1", "", "q", b"\x00\x00", b"x")
            conn.deliver(e.channel, e.method.consumer_tag, "m2", "", "q", b"\x00\x00", b"y" * 5000)
        elif isinstance(e, MethodReceived) and isinstance(e.method, spec.QueueDeclare):
            conn.send_method(e.channel, spec.QueueDeclareOk(queue=e.method.queue))


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])] or [b""]


def test_valid_session_closes_cleanly() -> None:
    events = _check(PARTS)
    closed = events[-1]
    assert (closed.code, closed.text, closed.by_client) == (200, "bye", True)
    names = [type(e).__name__ for e in events]
    assert names.count("PublishReceived") == 1 and names.count("TxCommitted") == 1
    assert names.count("Acked") == 1 and names.count("ChannelClosed") == 2
    # Channel 1 closed with the second delivery still unacked.
    assert ("m2",) in [getattr(e, "unacked", None) for e in events]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=0, max_value=len(PIPELINED)), max_size=30))
def test_chunking_does_not_change_the_events(cuts: list[int]) -> None:
    # No simulated node here: its answers would land at different points of the stream.
    whole = _check([PIPELINED], react=False)
    split = _check(_split(PIPELINED, cuts), react=False)
    assert [repr(e) for e in split] == [repr(e) for e in whole]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=len(SESSION) - 1),
            st.sampled_from(["flip", "delete", "insert", "zero", "ff"]),
            st.integers(min_value=0, max_value=255),
        ),
        min_size=1,
        max_size=6,
    ),
    st.lists(st.integers(min_value=0, max_value=len(SESSION)), max_size=8),
    st.lists(st.floats(min_value=0, max_value=15), max_size=4),
)
def test_mutated_sessions(mutations: list[tuple[int, str, int]], cuts: list[int], steps: list[float]) -> None:
    data = bytearray(SESSION)
    for pos, kind, value in mutations:
        pos %= max(len(data), 1)
        if not data:
            break
        if kind == "flip":
            data[pos] ^= value or 1
        elif kind == "delete":
            del data[pos : pos + 1 + value % 8]
        elif kind == "insert":
            data[pos:pos] = bytes([value]) * (1 + value % 5)
        elif kind == "zero":
            data[pos] = 0
        else:
            data[pos] = 0xFF
    _check(_split(bytes(data), cuts), steps)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000), st.lists(st.integers(min_value=0, max_value=2000), max_size=10))
def test_random_bytes_after_the_header(noise: bytes, cuts: list[int]) -> None:
    _check(_split(b"AMQP\x00\x00\x09\x01" + noise, cuts))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_on_an_open_connection(noise: bytes) -> None:
    prefix = SESSION[: SESSION.index(marshal(pc.Basic.Qos(prefetch_count=3), channel=1))]
    _check([prefix, noise])


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_from_the_start(noise: bytes) -> None:
    _check([noise])


def test_pamqp_reads_our_start_frame() -> None:
    conn = new_connection()
    conn.receive_data(pheader.ProtocolHeader().marshal())
    used, channel, start = pframe.unmarshal(conn.data_to_send())
    assert isinstance(start, pc.Connection.Start) and channel == 0
