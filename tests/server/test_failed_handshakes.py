"""A failed handshake is answered and closed only after the delay, and only so many wait."""

from __future__ import annotations

import socket

import trio
import trio.testing

from broker import server
from broker.amqp.connection import ConnectionState

from .test_output import FakeConn, FakeSession


async def _writer(failed: server.FailedHandshakes, nursery: trio.Nursery) -> tuple[FakeSession, socket.socket, trio.Event]:
    node_end, client_end = socket.socketpair()
    session = FakeSession()
    conn: FakeConn = session.conn
    output = server._Output(session, node_end.fileno())  # type: ignore[arg-type]
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(node_end))
    done = trio.Event()
    nursery.start_soon(server._write, session, stream, output, done, failed)
    await trio.testing.wait_all_tasks_blocked()
    # The machine refused the login: its connection.close is queued and it is closed.
    conn.out += b"close"
    conn.state = ConnectionState.CLOSED
    conn.handshake_failed = True
    output.set()
    client_end.setblocking(False)
    return session, client_end, done


def _received(sock: socket.socket) -> bytes:
    try:
        return sock.recv(100)
    except BlockingIOError:
        return b""


async def test_the_answer_waits_for_the_delay(autojump_clock: trio.testing.MockClock) -> None:
    failed = server.FailedHandshakes(3.0, 10)
    async with trio.open_nursery() as nursery:
        _session, client, done = await _writer(failed, nursery)
        await trio.sleep(2.9)
        assert _received(client) == b"" and failed.waiting == 1
        await trio.sleep(0.2)
        await done.wait()
        assert _received(client) == b"close" and failed.waiting == 0


async def test_past_the_limit_the_answer_is_at_once(autojump_clock: trio.testing.MockClock) -> None:
    failed = server.FailedHandshakes(3.0, 2)
    async with trio.open_nursery() as nursery:
        writers = [await _writer(failed, nursery) for _ in range(4)]
        await trio.sleep(0.1)
        answered = [_received(client) for _s, client, _d in writers]
        assert answered == [b"", b"", b"close", b"close"]
        assert failed.waiting == 2
        await trio.sleep(3.0)
        assert [_received(client) for _s, client, _d in writers[:2]] == [b"close", b"close"]


async def test_no_delay_when_set_to_zero(autojump_clock: trio.testing.MockClock) -> None:
    failed = server.FailedHandshakes(0.0, 10)
    async with trio.open_nursery() as nursery:
        _session, client, done = await _writer(failed, nursery)
        await done.wait()
        assert _received(client) == b"close"
        assert trio.current_time() == 0
