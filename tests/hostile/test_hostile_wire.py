"""Hostile clients on the AMQP port, each beside a well-behaved pika client that must
keep working: a publisher streaming a huge body under a memory alarm, peers streaming
frames before they log in, password guessing, and bodies over max_message_size.

Bounds are counts and sizes (bytes the node took, its resident memory, sockets closed),
never throughput figures; the few durations checked are the configured delays, with
wide margins."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pika
import pika.exceptions
import psutil
import pytest
from pamqp import body as pbody
from pamqp import commands as pc
from pamqp import frame as pframe
from pamqp import header as pheader
from pamqp import heartbeat as pheartbeat

from tests.integration.conftest import connect, get_body
from tests.integration.raw_amqp import PROTOCOL_HEADER, RawClient
from tests.support.node_process import NodeProcess

MiB = 1 << 20
CAPABILITIES = {"connection.blocked": True, "authentication_failure_close": True}
FRAME_MAX = 131072
# A run of whole body frames, sent again and again: the stream stays frame-aligned.
BODY_BLOCK = pframe.marshal(pbody.ContentBody(b"b" * (FRAME_MAX - 8)), 1) * 8


def _rss(node: NodeProcess) -> int:
    assert node.proc is not None
    return psutil.Process(node.proc.pid).memory_info().rss


def _raw(node: NodeProcess) -> RawClient:
    return RawClient(node.host, node.port)


def _start_ok(raw: RawClient, password: str = "guest") -> None:
    raw.send(PROTOCOL_HEADER)
    raw.expect(pc.Connection.Start)
    raw.send_frame(0, pc.Connection.StartOk(
        client_properties={"capabilities": CAPABILITIES}, mechanism="PLAIN",
        response=f"\0guest\0{password}", locale="en_US"))


def _logged_in(node: NodeProcess) -> RawClient:
    raw = _raw(node)
    _start_ok(raw)
    raw.expect(pc.Connection.Tune)
    raw.send_frame(0, pc.Connection.TuneOk(channel_max=16, frame_max=FRAME_MAX, heartbeat=0))
    raw.send_frame(0, pc.Connection.Open(virtual_host="/"))
    raw.expect(pc.Connection.OpenOk)
    raw.send_frame(1, pc.Channel.Open())
    raw.expect(pc.Channel.OpenOk)
    return raw


def _publish_start(raw: RawClient, declared: int, queue: str = "hostile") -> None:
    raw.send_frame(1, pc.Basic.Publish(exchange="", routing_key=queue))
    raw.send(pframe.marshal(pheader.ContentHeader(0, declared, pc.Basic.Properties()), 1))


def _push(sock: socket.socket, total: int, stall: float = 1.5) -> int:
    """Stream body frames until `total` octets are taken or the socket takes nothing for
    `stall` seconds; the octets the kernel took (the node's socket buffers included)."""
    sock.setblocking(False)
    view = memoryview(BODY_BLOCK)
    sent = 0
    last = time.monotonic()
    try:
        while sent < total and time.monotonic() - last < stall:
            offset = sent % len(BODY_BLOCK)
            try:
                n = sock.send(view[offset:])
            except BlockingIOError:
                time.sleep(0.005)
                continue
            except OSError:
                break
            sent += n
            last = time.monotonic()
    finally:
        sock.settimeout(5)
    return sent


def _round_trips(url: str, count: int) -> None:
    """A well-behaved client: `count` publish/get round trips on a queue of its own."""
    conn = connect(url)
    try:
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        for i in range(count):
            ch.basic_publish("", q, b"ping %d" % i)
            assert get_body(ch, q) == b"ping %d" % i
    finally:
        conn.close()


# --------------------------------------------------------------------- memory alarm


@pytest.fixture(scope="module")
def alarmed_node() -> Iterator[NodeProcess]:
    # A watermark of 1 MB: the memory alarm is raised from the first sample on.
    # max_message_size at RabbitMQ's ceiling, so the 500 MB and 400 MB bodies are legal.
    config = {"vm_memory_high_watermark": {"absolute": "1MB"}, "max_message_size": "512MiB"}
    with NodeProcess(name="hostile-alarm@localhost", config=config).start() as node:
        deadline = time.monotonic() + 10
        while "memory resource limit alarm set" not in node.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "memory resource limit alarm set" in node.log_text()
        yield node


def test_memory_alarm_stops_a_publisher_before_its_body(alarmed_node: NodeProcess) -> None:
    node = alarmed_node
    hostile = [_logged_in(node), _logged_in(node)]
    before = _rss(node)
    for raw, declared in zip(hostile, (500_000_000, 400_000_000)):
        _publish_start(raw, declared)
    # Each tries to send 64 MiB of its body while the node should have stopped reading.
    taken = [0, 0]
    threads = [threading.Thread(target=lambda i=i: taken.__setitem__(i, _push(hostile[i].sock, 64 * MiB)))
               for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    grown = _rss(node) - before
    # The node took at most one read past the publish method, plus what the sockets' kernel
    # buffers hold: not the 128 MiB offered (it read all 800 MB before).
    assert all(n < 16 * MiB for n in taken), taken
    assert grown < 16 * MiB, (grown, taken)
    for raw in hostile:
        frames = [f for _t, ch, f in raw.frames(timeout=2, stop_after=1)]
        assert frames and isinstance(frames[0], pc.Connection.Blocked), frames
        assert frames[0].reason == "low on memory"

    # Well-behaved clients beside them: one that does not publish is served as usual...
    conn = connect(node.url)
    try:
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        for _ in range(20):
            assert ch.queue_declare(q, passive=True).method.message_count == 0
            assert ch.basic_get(q)[0] is None
    finally:
        conn.close()
    # ... and one that publishes is blocked too, as it should be: it hears why, and the node
    # holds it (pika gives up after its blocked_connection_timeout).
    blocked: list[str] = []
    conn = connect(node.url, blocked_connection_timeout=2)
    conn.add_on_connection_blocked_callback(lambda _c, frame: blocked.append(frame.method.reason))
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"held back")
    deadline = time.monotonic() + 10
    with pytest.raises(pika.exceptions.ConnectionBlockedTimeout):
        while time.monotonic() < deadline:
            conn.process_data_events(0.2)
    assert blocked == ["low on memory"]
    for raw in hostile:
        raw.close()


# --------------------------------------------------------------------- the handshake, logins, sizes


FAILED_AUTH_DELAY = 1.5
DELAY_MAX = 3


@pytest.fixture(scope="module")
def guarded_node() -> Iterator[NodeProcess]:
    config = {"failed_auth_delay": FAILED_AUTH_DELAY, "failed_auth_delay_max_connections": DELAY_MAX,
              "max_message_size": "1MiB"}
    with NodeProcess(name="hostile-wire@localhost", config=config).start() as node:
        yield node


def test_peers_streaming_heartbeats_before_login_are_dropped_at_the_first(guarded_node: NodeProcess) -> None:
    node = guarded_node
    cpu_before = psutil.Process(node.proc.pid).cpu_times()  # type: ignore[union-attr]
    hostile = [_raw(node) for _ in range(4)]
    for raw in hostile:
        raw.send(PROTOCOL_HEADER)
        raw.expect(pc.Connection.Start)
    beat = pheartbeat.Heartbeat.marshal() * 8192
    taken = [0] * len(hostile)

    def stream(i: int) -> None:
        sock = hostile[i].sock
        sock.setblocking(False)
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            try:
                taken[i] += sock.send(beat)
            except BlockingIOError:
                time.sleep(0.005)
            except OSError:
                return  # closed by the node

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(len(hostile))]
    for t in threads:
        t.start()
    _round_trips(node.url, 50)  # the well-behaved client meanwhile
    for t in threads:
        t.join(10)
    # Every hostile socket was closed, silently, after its first heartbeat (plus the
    # failed-handshake delay): the node read no more than its buffers hold.
    for raw in hostile:
        raw.sock.settimeout(5)
        assert raw.read_until_eof(timeout=FAILED_AUTH_DELAY + 5) == b""
        assert raw.eof
        raw.close()
    assert all(n < 32 * MiB for n in taken), taken
    cpu = psutil.Process(node.proc.pid).cpu_times()  # type: ignore[union-attr]
    used = (cpu.user + cpu.system) - (cpu_before.user + cpu_before.system)
    assert used < 2.0, used  # 50 round trips and four refusals; octet-by-octet parsing took seconds


def _refused_after(raw: RawClient) -> float:
    """Seconds from start-ok to connection.close 403 (the socket then closes)."""
    started = time.monotonic()
    close = raw.expect(pc.Connection.Close, timeout=FAILED_AUTH_DELAY + 10)
    assert close.reply_code == 403
    assert close.reply_text == ("ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. "
                                "For details see the broker logfile.")
    return time.monotonic() - started


def test_a_failed_login_is_answered_after_the_delay(guarded_node: NodeProcess) -> None:
    raw = _raw(guarded_node)
    _start_ok(raw, password="wrong")
    assert _refused_after(raw) >= FAILED_AUTH_DELAY - 0.1
    assert raw.read_until_eof(timeout=5) == b"" and raw.eof
    raw.close()
    _round_trips(guarded_node.url, 5)  # a good login is never delayed


def test_delayed_logins_are_bounded(guarded_node: NodeProcess) -> None:
    guessers = [_raw(guarded_node) for _ in range(DELAY_MAX + 3)]
    for raw in guessers:
        _start_ok(raw, password="wrong")
    started = time.monotonic()
    answered: list[float] = []

    def wait_for_answer(raw: RawClient) -> None:
        raw.expect(pc.Connection.Close, timeout=FAILED_AUTH_DELAY + 10)
        answered.append(time.monotonic() - started)

    threads = [threading.Thread(target=wait_for_answer, args=(raw,)) for raw in guessers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(FAILED_AUTH_DELAY + 15)
    # DELAY_MAX of them wait; the others, past the cap, are answered and closed at once.
    assert len(answered) == len(guessers)
    late = [w for w in answered if w >= FAILED_AUTH_DELAY / 2]
    assert len(late) == DELAY_MAX, answered
    for raw in guessers:
        raw.close()
    _round_trips(guarded_node.url, 5)


def test_a_body_over_max_message_size_is_refused_at_its_header(guarded_node: NodeProcess) -> None:
    node = guarded_node
    conn = connect(node.url)
    try:
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.basic_publish("", q, b"x" * (MiB + 1))
            ch.basic_get(q)
        assert (info.value.reply_code, info.value.reply_text) == (
            406, "PRECONDITION_FAILED - message size 1048577 is larger than configured max size 1048576")
        ch = conn.channel()
        ch.basic_publish("", q, b"x" * MiB)  # the limit itself is fine
        assert get_body(ch, q) == b"x" * MiB

        # A raw client declares 200 MB and streams 64 MiB of it: refused at the header,
        # and the body is counted off unread, whatever its size.
        raw = _logged_in(node)
        before = _rss(node)
        _publish_start(raw, 200_000_000, q)
        close = raw.expect(pc.Channel.Close)
        assert (close.reply_code, close.reply_text) == (
            406, "PRECONDITION_FAILED - message size 200000000 is larger than configured max size 1048576")
        assert _push(raw.sock, 64 * MiB) == 64 * MiB  # the node keeps reading, and drops it
        assert _rss(node) - before < 24 * MiB
        raw.close()
        ch.basic_publish("", q, b"still fine")
        assert get_body(ch, q) == b"still fine"
    finally:
        conn.close()
