"""The AMQP listener: per client connection one reader task and one writer task.

The reader feeds whatever one `receive_some` returned to the connection
machine (which parses every frame of it in one loop) and handles the events
before reading again, so a client that publishes faster than the node can
take its messages is slowed by TCP itself: nothing unbounded sits between a
socket and the queues. The writer drains the machine's coalesced output with
one `send_all` per wake-up, however many deliveries, confirms and replies
were queued since the last one.

A reader that has just handled a read also writes, itself, the output it gave
connections whose writer is parked (deliveries to a consumer, confirms): one
non-blocking write of the socket, before yielding, instead of waiting for the
writer task's turn in the next scheduler pass (~40 µs of a delivery's latency
at low load); bursts over `DIRECT_WRITE_MAX` are left to the writer. Whatever the socket does not take is kept for the writer, which
is woken as before; while a writer is sending, nobody else writes its socket.

Under a resource alarm a connection that has published, or has begun a publish whose
content is still arriving, is not read from (RabbitMQ's rule): at most the one read
that carried the basic.publish is held of a body the alarm stops, whatever size the
header declares.

A connection whose handshake failed (a refused login above all) gets its answer and
its close only after `failed_auth_delay` seconds, RabbitMQ's brake on password
guessing (?SILENT_CLOSE_DELAY); nothing of it is read meanwhile, and at most
`failed_auth_delay_max_connections` wait at once (`FailedHandshakes`): beyond that
they are answered and closed at once, so a flood of failures cannot pile sockets up.
"""

from __future__ import annotations

import logging
import os
from functools import partial

import trio

from broker.amqp.connection import ConnectionState
from broker.session import Session

log = logging.getLogger("leveret.connection")

# Longest pause of a publisher whose queue's consumers fall behind, per read.
FLOW_PAUSE_MAX = 0.05
RECEIVE_SIZE = 256 * 1024
# Larger outputs are left to the writer task: a burst that the socket would take only
# in part gains nothing from an early write and costs a copy of the rest.
DIRECT_WRITE_MAX = 64 * 1024


# How long a closed connection's writer may take to flush its last output.
FLUSH_TIMEOUT = 5.0


class FailedHandshakes:
    """The connections whose handshake failed that are waiting out the delay."""

    __slots__ = ("delay", "limit", "waiting")

    def __init__(self, delay: float, limit: int) -> None:
        self.delay = delay
        self.limit = limit
        self.waiting = 0

    async def wait(self) -> None:
        """The delay, unless `limit` connections already wait (then none)."""
        if self.delay <= 0 or self.waiting >= self.limit:
            return
        self.waiting += 1
        try:
            await trio.sleep(self.delay)
        finally:
            self.waiting -= 1


class _ReaderWaits:
    """Cancels what the reader waits on (the socket, a resource alarm), never its
    handling of a batch of events: every event of a batch, down to the machine's
    ConnectionClosed, must reach the session, or a closed connection would leave
    its exclusive queues, consumers and unacked deliveries behind."""

    __slots__ = ("_scope", "stopped")

    def __init__(self) -> None:
        self._scope: trio.CancelScope | None = None
        self.stopped = False

    def cancel(self) -> None:
        self.stopped = True
        if self._scope is not None:
            self._scope.cancel()

    def scope(self) -> trio.CancelScope:
        self._scope = trio.CancelScope()
        if self.stopped:
            self._scope.cancel()
        return self._scope


class _Output:
    """A connection's way out: wakes its writer task, and lets a reader write for it
    while that task is parked (see the module docstring)."""

    __slots__ = ("conn", "session", "fd", "_event", "_set", "parked", "carry")

    def __init__(self, session: Session, fd: int) -> None:
        self.conn = session.conn
        self.session = session
        self.fd = fd
        self._event = trio.Event()
        self._set = False
        self.parked = False  # the writer task waits in `wait`: its socket is free
        self.carry = b""  # written by nobody yet: the writer sends it first

    def set(self) -> None:
        # Called for every delivery and confirm: only the first since the last wake-up
        # needs the event, and a reader may write the output before the writer runs.
        if not self._set:
            self._set = True
            self._event.set()
            if len(_written_by_readers) < _MAX_PARKED_OUTPUTS:  # only a shortcut: the writer is woken anyway
                _written_by_readers.append(self)

    async def wait(self) -> None:
        self.parked = True
        try:
            await self._event.wait()
        finally:
            self.parked = False
        self._event = trio.Event()
        self._set = False

    def write_now(self) -> None:
        """One non-blocking write of the pending output, if the writer task is parked."""
        if (not self.parked or self.carry or self.conn.state is ConnectionState.CLOSED
                or self.conn.pending_output > DIRECT_WRITE_MAX):
            return
        data = self.conn.data_to_send()
        if not data:
            return
        try:
            sent = os.write(self.fd, data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = 0  # the writer's own send will meet the error and end the connection
        if sent < len(data):
            self.carry = data[sent:]
        else:
            self.session.output_drained()


# Outputs set since the last reader flush (see `_Output.set`).
_written_by_readers: list[_Output] = []
_MAX_PARKED_OUTPUTS = 10_000


def _write_parked_outputs() -> None:
    global _written_by_readers
    outputs, _written_by_readers = _written_by_readers, []
    for output in outputs:
        output.write_now()


def raise_open_files_limit() -> tuple[int, int]:
    """Every client holds a socket: lift the soft limit on open files to the hard one
    (tens of thousands of connections need it; RabbitMQ asks the same of its host).
    Returns (soft limit before, soft limit now)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return (0, 0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit still has the kernel's nr_open ceiling; ask for a
    # million, which every Linux since 2.6.25 allows by default.
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return (soft, soft)
        return (soft, target)
    return (soft, soft)


async def serve_amqp(node: "Node", host: str, port: int,  # type: ignore[name-defined]  # noqa: F821
                     *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    before, now = raise_open_files_limit()
    if now != before:
        log.info("open file limit raised from %d to %d (the hard limit): room for about %d connections",
                 before, now, max(now - 100, 0))
    else:
        log.info("open file limit %d: room for about %d connections", now, max(now - 100, 0))
    listeners = await trio.open_tcp_listeners(port, host=host or None)
    bound = listeners[0].socket.getsockname()[1]
    task_status.started(bound)
    failed = FailedHandshakes(node.settings.failed_auth_delay, node.settings.failed_auth_delay_max_connections)
    await trio.serve_listeners(partial(_serve_connection, node, failed), listeners)


async def _serve_connection(node: "Node", failed: FailedHandshakes,  # type: ignore[name-defined]  # noqa: F821
                            stream: trio.SocketStream) -> None:
    sock = stream.socket
    try:
        peer = sock.getpeername()[:2]
        local = sock.getsockname()[:2]
    except OSError:
        return
    session = Session(node, node.next_connection_id(peer), peer, local)
    node.all_sessions.add(session)
    output = _Output(session, sock.fileno())
    session.on_output = output.set
    conn = session.conn
    try:
        writer_done = trio.Event()
        reader_waits = _ReaderWaits()
        async with trio.open_nursery() as nursery:

            async def write_then_stop_reading() -> None:
                await _write(session, stream, output, writer_done, failed)
                # The machine closed on its own (missed heartbeats, closing timeout) or the
                # socket broke: a reader waiting on a silent client would otherwise hold the
                # socket open forever.
                reader_waits.cancel()

            nursery.start_soon(write_then_stop_reading)
            await _read(session, stream, reader_waits)
            # The peer is gone or the machine closed: let the writer flush (close-ok,
            # connection.close) and finish, then stop.
            output.set()
            with trio.move_on_after(FLUSH_TIMEOUT + failed.delay):
                await writer_done.wait()
            nursery.cancel_scope.cancel()
    finally:
        node.all_sessions.discard(session)
        if not session.closed:
            session.handle_sync(conn.connection_lost())
        with trio.CancelScope(shield=True):
            with trio.move_on_after(1):
                await stream.aclose()


async def _read(session: Session, stream: trio.SocketStream, waits: _ReaderWaits) -> None:
    conn = session.conn
    node = session.node
    while conn.state is not ConnectionState.CLOSED:
        data = b""
        with waits.scope():
            if node.alarms and (session.publishing or conn.receiving_content()):
                # A resource alarm: stop reading from publishers until it clears (RabbitMQ's
                # flow control), one in the middle of a message included, before its body;
                # the connection machine pauses its heartbeat monitor meanwhile.
                await session.held_by_alarm()
                continue
            congested = session.congested
            if congested is not None:
                session.congested = None
                if congested.congested:
                    log.debug("publisher flow: pausing connection %s for queue '%s'", session.id, congested.name)
                    # Bounded: a consumer on this very connection needs its acks read.
                    await congested.pause_publisher(FLOW_PAUSE_MAX)
            if session.publishing and node.writer_lagging():
                # The disk is behind (paging, persisting): publishers wait for the writer
                # rather than piling batches up in memory.
                await node.wait_for_writer()
                continue
            try:
                data = await stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                data = b""
        if not data:
            session.handle_sync(conn.connection_lost())
            return
        try:
            await session.handle(conn.receive_data(data))
            _write_parked_outputs()
        except Exception:
            log.exception("connection %s: internal error", session.id)
            session.force_close(541, "INTERNAL_ERROR - internal error")
            return


async def _write(session: Session, stream: trio.SocketStream, output: _Output, done: trio.Event,
                 failed: FailedHandshakes) -> None:
    conn = session.conn
    try:
        while True:
            await output.wait()
            if conn.handshake_failed:
                # The answer (connection.close for a refused login) waits too, or the
                # delay would slow nobody down.
                await failed.wait()
            data = conn.data_to_send()
            if output.carry:
                data, output.carry = output.carry + data, b""
            if data:
                await stream.send_all(data)
                # Room in the socket again: queues may push more deliveries.
                session.output_drained()
            if conn.state is ConnectionState.CLOSED and not conn.pending_output:
                return
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        return
    finally:
        done.set()
