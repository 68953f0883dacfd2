"""A connection's output written early by a reader, and what the socket does not take."""

from __future__ import annotations

import socket
from typing import Any

import trio
import trio.testing

from broker import server
from broker.amqp.connection import ConnectionState


class FakeConn:
    """The part of the connection machine the output path uses: queued octets."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.state = ConnectionState.OPEN
        self.handshake_failed = False

    @property
    def pending_output(self) -> int:
        return len(self.out)

    def data_to_send(self) -> bytes:
        data = bytes(self.out)
        self.out.clear()
        return data


class FakeSession:
    def __init__(self) -> None:
        self.conn: Any = FakeConn()
        self.drained = 0

    def output_drained(self) -> None:
        self.drained += 1


def tiny_socketpair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.setblocking(False)
    return a, b


def read_all(sock: socket.socket, want: int) -> bytes:
    sock.setblocking(True)
    sock.settimeout(5)
    got = bytearray()
    while len(got) < want:
        got += sock.recv(65536)
    return bytes(got)


async def test_a_reader_writes_for_a_parked_writer_and_leaves_the_rest_to_it() -> None:
    node_end, client_end = tiny_socketpair()
    session = FakeSession()
    output = server._Output(session, node_end.fileno())  # type: ignore[arg-type]
    session.on_output = output.set  # type: ignore[attr-defined]
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(node_end))
    done = trio.Event()
    chunks = [bytes([n]) * 20_000 for n in range(1, 5)]  # each under DIRECT_WRITE_MAX, more than the buffers
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server._write, session, stream, output, done, server.FailedHandshakes(3.0, 10))
        await trio.testing.wait_all_tasks_blocked()
        assert output.parked
        session.conn.out += chunks[0]
        output.set()
        server._write_parked_outputs()
        # Written before the writer task ran: the socket took what fits, the rest is kept for it.
        assert output.carry and len(output.carry) < len(chunks[0])
        # More output meanwhile; then the writer sends the rest first, in order.
        for chunk in chunks[1:]:
            session.conn.out += chunk
            output.set()
        received = await trio.to_thread.run_sync(read_all, client_end, sum(map(len, chunks)))
        assert received == b"".join(chunks)
        assert output.carry == b""
        nursery.cancel_scope.cancel()
    client_end.close()
    node_end.close()


async def test_large_outputs_and_busy_writers_are_left_to_the_writer_task() -> None:
    node_end, client_end = tiny_socketpair()
    session = FakeSession()
    output = server._Output(session, node_end.fileno())  # type: ignore[arg-type]
    session.conn.out += b"x" * (server.DIRECT_WRITE_MAX + 1)
    output.parked = True
    output.write_now()
    assert session.conn.pending_output == server.DIRECT_WRITE_MAX + 1  # untouched: too large
    session.conn.out.clear()
    session.conn.out += b"small"
    output.parked = False  # the writer task is sending: nobody else writes its socket
    output.write_now()
    assert session.conn.pending_output == 5
    output.parked = True
    output.write_now()
    assert session.conn.pending_output == 0 and session.drained == 1
    assert read_all(client_end, 5) == b"small"
    client_end.close()
    node_end.close()
