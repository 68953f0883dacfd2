"""The Leveret port mapper: which peer port each node on this host listens on.

RabbitMQ names a node `rabbit@host` and finds its distribution port by asking
epmd on that host (TCP 4369). Leveret does the same with its own mapper on TCP
4370 (`port_mapper_port`, `LEVERET_PORT_MAPPER_PORT`; never 4369, where
RabbitMQ's epmd may run beside it), so that several nodes can share one host on
distinct peer ports and still be named by their bare names everywhere.

As with epmd:
- a node registers its name (the part before '@', epmd's "alive" name) and
  peer port when it starts, and stays registered while that connection stays
  open: when the node dies the kernel closes it and the entry disappears;
- registration is taken only from loopback (a node registers with the mapper
  of its own host); lookups need no authentication (epmd has none, and a port
  number is no secret: the peer port itself demands the cookie);
- the first node on a host starts the mapper as a daemon process of its own
  (detached, new session), which outlives any one node. Starters may race:
  each binds first and only then detaches, so the loser's bind fails and it
  exits quietly, having never served.
A name the mapper does not know, or a mapper that does not answer, resolves to
the default peer port 25672; `leveretctl --port` takes precedence over both.

Wire: `cluster.peer` frames (4-byte length, msgpack), at most 1 KiB, one
reply per request:
    {"op": "register", "name": n, "port": p} -> {"ok": true} | {"ok": false, "error": text}
    {"op": "lookup", "name": n}              -> {"ok": true, "port": p | None}
    {"op": "names"}                          -> {"ok": true, "names": {n: p}}   (epmd -names)
    {"op": "status"}                         -> {"ok": true, "pid": pid}
A connection that has not registered is closed after IDLE_TIMEOUT without a
request, so strangers cannot hold sockets open.

Run it as `python -m cluster.portmapper [--port 4370] [--host H] [--detach]`.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final

import trio

from cluster.logtext import RefusalLog, peer_text
from cluster.peer import NEED_DATA, FrameDecoder, PeerWireError, encode_frame

log = logging.getLogger("leveret.portmapper")

DEFAULT_PORT_MAPPER_PORT: Final = 4370
DEFAULT_PEER_PORT: Final = 25672
FRAME_MAX: Final = 1024  # a request
REPLY_MAX: Final = 2 * 1024 * 1024  # the longest reply: every name (MAX_NAMES of NAME_MAX characters)
IDLE_TIMEOUT: Final = 10.0
MAX_NAMES: Final = 4096
MAX_CONNECTIONS: Final = 1024
NAME_MAX: Final = 255  # as epmd's limit on node names


def alive_name(node_name: str) -> str:
    """The name a node is registered under: the part before '@' (epmd's alive name)."""
    return node_name.split("@", 1)[0]


def node_host(node_name: str) -> str:
    """The host whose mapper knows `node_name`: the part after '@' ("localhost" without one)."""
    return node_name.split("@", 1)[1] if "@" in node_name else "localhost"


def is_loopback(address: str | None) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


# --------------------------------------------------------------------------- the map (pure)


class PortMap:
    """Names to ports, each entry owned by the connection that registered it."""

    def __init__(self, max_names: int = MAX_NAMES) -> None:
        self._entries: dict[str, tuple[int, object]] = {}
        self._max_names = max_names

    def handle(self, request: Any, owner: object, from_loopback: bool) -> dict[str, Any]:
        """One request's reply. `owner` identifies the connection; `from_loopback` whether it
        came from this host."""
        op = request.get("op") if isinstance(request, dict) else None
        if op == "lookup":
            name = request.get("name")
            if not isinstance(name, str):
                return _error("lookup needs a name")
            entry = self._entries.get(alive_name(name))
            return {"ok": True, "port": entry[0] if entry else None}
        if op == "names":
            return {"ok": True, "names": {name: port for name, (port, _) in self._entries.items()}}
        if op == "status":
            return {"ok": True, "pid": os.getpid()}
        if op == "register":
            return self._register(request, owner, from_loopback)
        return _error(f"unknown request '{peer_text(op, 40)}'")

    def _register(self, request: dict[str, Any], owner: object, from_loopback: bool) -> dict[str, Any]:
        if not from_loopback:
            return _error("registration is accepted only from this host")
        name, port = request.get("name"), request.get("port")
        if not isinstance(name, str) or not 0 < len(name) <= NAME_MAX or "@" in name:
            return _error("register needs a name of 1 to 255 characters without '@'")
        if type(port) is not int or not 0 < port < 65536:
            return _error("register needs a port between 1 and 65535")
        if any(o is owner for _, o in self._entries.values()):
            return _error("this connection has registered a name already")
        held = self._entries.get(name)
        if held is not None:
            # epmd refuses a name that a live node holds: two nodes must not share a name.
            return _error(f"the name '{peer_text(name)}' is registered by a running node (port {held[0]})")
        if len(self._entries) >= self._max_names:
            return _error("too many names registered")
        self._entries[name] = (port, owner)
        return {"ok": True}

    def release(self, owner: object) -> str | None:
        """The connection closed: its entry goes (the name, if it had one)."""
        for name, (_, o) in self._entries.items():
            if o is owner:
                del self._entries[name]
                return name
        return None

    def holds(self, owner: object) -> bool:
        return any(o is owner for _, o in self._entries.values())

    def names(self) -> dict[str, int]:
        return {name: port for name, (port, _) in self._entries.items()}


def _error(text: str) -> dict[str, Any]:
    return {"ok": False, "error": text}


# --------------------------------------------------------------------------- the server (trio shell)


class PortMapperServer:
    def __init__(self, *, idle_timeout: float = IDLE_TIMEOUT, max_connections: int = MAX_CONNECTIONS) -> None:
        self.map = PortMap()
        self._idle_timeout = idle_timeout
        self._max_connections = max_connections
        self._connections = 0
        self._refusals = RefusalLog(log)

    async def serve(self, listeners: Sequence[trio.SocketListener]) -> None:
        await trio.serve_listeners(self._serve_connection, listeners)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        if self._connections >= self._max_connections:
            await trio.aclose_forcefully(stream)
            return
        self._connections += 1
        owner = object()
        try:
            address = stream.socket.getpeername()[0]
        except OSError:
            address = None
        decoder = FrameDecoder(FRAME_MAX)
        try:
            while True:
                # A registered node keeps its connection open and silent for as long as it lives.
                timeout = float("inf") if self.map.holds(owner) else self._idle_timeout
                with trio.move_on_after(timeout):
                    request = await _read_frame(stream, decoder)
                    reply = self.map.handle(request, owner, is_loopback(address))
                    if reply.get("ok") and isinstance(request, dict) and request.get("op") == "register":
                        log.info("node '%s' registered with peer port %s", peer_text(request["name"]),
                                 request["port"])
                    elif not reply.get("ok"):
                        self._refusals.warning(f"refused {address}", "port mapper request from %s refused: %s",
                                               address, reply["error"])
                    await stream.send_all(encode_frame(reply, max_size=REPLY_MAX))
                    continue
                return  # idle
        except (PeerWireError, EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._connections -= 1
            name = self.map.release(owner)
            if name is not None:
                log.info("node '%s' unregistered (its connection closed)", peer_text(name))
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)


async def _read_frame(stream: trio.abc.Stream, decoder: FrameDecoder) -> Any:
    """The next frame; EOFError when the peer closed."""
    while (frame := decoder.next_frame()) is NEED_DATA:
        data = await stream.receive_some(FRAME_MAX)
        if not data:
            raise EOFError
        decoder.feed(data)
    return frame


def bind_listening_sockets(port: int, host: str | None = None) -> list[socket.socket]:
    """Bound, listening sockets for `host` (all IPv4 and IPv6 addresses when None). Raises
    OSError(EADDRINUSE) when another process serves the port."""
    if host:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        families = [(info[0], info[4]) for info in infos[:1]]
    else:
        families = [(socket.AF_INET, ("0.0.0.0", port)), (socket.AF_INET6, ("::", port))]
    sockets: list[socket.socket] = []
    try:
        for family, address in families:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            # Only lets a restarted mapper bind past TIME_WAIT: on Linux two processes still
            # cannot both bind a port one of them listens on, which is what settles a race.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if family == socket.AF_INET6 and not host and exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                    sockets.pop().close()  # no IPv6 on this host: IPv4 alone
                    continue
                raise
            sock.listen(128)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def serve_port_mapper(sockets: Sequence[socket.socket], *, idle_timeout: float = IDLE_TIMEOUT,
                            task_status: trio.TaskStatus[PortMapperServer] = trio.TASK_STATUS_IGNORED) -> None:
    server = PortMapperServer(idle_timeout=idle_timeout)
    listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(sock)) for sock in sockets]
    task_status.started(server)
    await server.serve(listeners)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.portmapper",
                                     description="Leveret port mapper: node names to peer ports on this host")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT_MAPPER_PORT)
    parser.add_argument("--host", default=None, help="address to listen on (default: all)")
    parser.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT,
                        help="seconds an unregistered connection may stay silent")
    parser.add_argument("--detach", action="store_true",
                        help="once the port is bound, serve from a daemon process in a new session and return")
    options = parser.parse_args(argv)
    try:
        sockets = bind_listening_sockets(options.port, options.host)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return 0  # another mapper serves this port: it is the one, quietly
        print(f"port mapper: cannot listen on port {options.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if options.detach and os.fork() != 0:
        os._exit(0)  # the parent: the port is ours and the daemon serves it
    if options.detach:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.chdir("/")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(levelname)s] %(name)s: %(message)s")
    try:
        trio.run(partial(serve_port_mapper, sockets, idle_timeout=options.idle_timeout))
    except KeyboardInterrupt:
        pass
    return 0


# --------------------------------------------------------------------------- clients


async def request(host: str, port: int, message: dict[str, Any], *, timeout: float = 2.0,
                  local_address: str | None = None) -> dict[str, Any]:
    """One request on a fresh connection (leaving from `local_address` when given). Raises
    OSError or trio.TooSlowError when the mapper does not answer, PeerWireError when it
    answers garbage."""
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(host, port, local_address=local_address)
        try:
            await stream.send_all(encode_frame(message, max_size=FRAME_MAX))
            try:
                reply = await _read_frame(stream, FrameDecoder(REPLY_MAX))
            except EOFError:
                raise ConnectionResetError(errno.ECONNRESET, "the port mapper closed the connection") from None
        finally:
            await trio.aclose_forcefully(stream)
    if not isinstance(reply, dict):
        raise PeerWireError(f"port mapper reply is not a map: {reply!r:.80}")
    return reply


async def lookup(host: str, name: str, *, mapper_port: int = DEFAULT_PORT_MAPPER_PORT,
                 timeout: float = 2.0, local_address: str | None = None) -> int | None:
    """The peer port the mapper on `host` has for `name`; None if it does not know the name.
    Raises OSError / trio.TooSlowError / PeerWireError when the mapper does not answer."""
    reply = await request(host, mapper_port, {"op": "lookup", "name": alive_name(name)}, timeout=timeout,
                          local_address=local_address)
    port = reply.get("port")
    return port if type(port) is int and 0 < port < 65536 else None


async def resolve_peer_port(node_name: str, *, mapper_port: int = DEFAULT_PORT_MAPPER_PORT,
                            default_port: int = DEFAULT_PEER_PORT, timeout: float = 2.0,
                            local_address: str | None = None) -> int:
    """The peer port of `node_name`: its host's mapper's answer, else `default_port` (a name the
    mapper does not know, or no mapper answering)."""
    try:
        port = await lookup(node_host(node_name), node_name, mapper_port=mapper_port, timeout=timeout,
                            local_address=local_address)
    except (OSError, trio.TooSlowError, PeerWireError):
        return default_port
    return port if port is not None else default_port


async def resolve_control_port(node_name: str, explicit_port: int | None, *,
                               mapper_port: int = DEFAULT_PORT_MAPPER_PORT,
                               default_port: int = DEFAULT_PEER_PORT) -> int:
    """The port leveretctl dials: `--port` when given, else as `resolve_peer_port`."""
    if explicit_port is not None:
        return explicit_port
    return await resolve_peer_port(node_name, mapper_port=mapper_port, default_port=default_port)


def mapped_dial(node_name: str, *, mapper_port: int = DEFAULT_PORT_MAPPER_PORT,
                default_port: int = DEFAULT_PEER_PORT) -> Any:
    """A `cluster.transport.Dial` for `node_name`: asks its host's mapper on every dial, so a node
    that restarted on another port is found again. Both connections leave from the dial's
    `local_address` (the node's own address) when it has one."""

    async def dial(local_address: str | None) -> trio.abc.Stream:
        port = await resolve_peer_port(node_name, mapper_port=mapper_port, default_port=default_port,
                                       local_address=local_address)
        return await trio.open_tcp_stream(node_host(node_name), port, local_address=local_address)

    return dial


def spawn_port_mapper(port: int, host: str | None = None) -> int:
    """Start a detached mapper on `port` (blocking: run it in a thread). Returns the launcher's exit
    status: 0 whether this one serves or another already did (the bind decides), else why not."""
    package_root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "cluster.portmapper", "--port", str(port), "--detach"]
    if host:
        command += ["--host", host]
    return subprocess.run(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, start_new_session=True, timeout=30, cwd="/").returncode


@dataclass
class Registration:
    """A node's entry in its host's mapper, kept for as long as `run` runs.

    `run` connects to the mapper on loopback (starting one when none answers and `start_mapper`),
    registers, and holds the connection open; if the mapper goes away it registers again with
    backoff. `task_status.started()` comes after the first attempt, registered or not: a node
    without a mapper still serves whoever dials its port directly.
    """

    node_name: str
    peer_port: int
    mapper_port: int = DEFAULT_PORT_MAPPER_PORT
    start_mapper: bool = True
    retry_interval: float = 1.0
    registered: bool = False
    last_error: str | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        started = False
        refusals = RefusalLog(log, interval=60)
        while True:
            stream = await self._register()
            if not started:
                task_status.started()
                started = True
            if isinstance(stream, str):
                self.last_error = stream
                refusals.warning("register", "node '%s' is not registered with the port mapper on port %d: %s",
                                 peer_text(self.node_name), self.mapper_port, stream)
                await trio.sleep(self.retry_interval)
                continue
            self.registered, self.last_error = True, None
            try:
                while await stream.receive_some(FRAME_MAX):
                    pass  # the mapper says nothing more; EOF means it went away
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                self.registered = False
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(stream)
            self.last_error = "the port mapper closed the registration"

    async def _register(self) -> trio.abc.Stream | str:
        try:
            stream = await self._connect()
        except (OSError, trio.TooSlowError) as exc:
            return f"no port mapper answers: {exc}"
        try:
            with trio.fail_after(5):
                await stream.send_all(encode_frame({"op": "register", "name": alive_name(self.node_name),
                                                    "port": self.peer_port}, max_size=FRAME_MAX))
                reply = await _read_frame(stream, FrameDecoder(REPLY_MAX))
        except (OSError, EOFError, PeerWireError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            await trio.aclose_forcefully(stream)
            return f"registration failed: {exc or type(exc).__name__}"
        if not (isinstance(reply, dict) and reply.get("ok")):
            await trio.aclose_forcefully(stream)
            error = reply.get("error") if isinstance(reply, dict) else reply
            return f"registration refused: {peer_text(error)}"
        return stream

    async def _connect(self) -> trio.abc.Stream:
        try:
            with trio.fail_after(2):
                return await trio.open_tcp_stream("127.0.0.1", self.mapper_port)
        except OSError:
            if not self.start_mapper:
                raise
        # None answers: start one, as a RabbitMQ node starts epmd, and wait until it listens.
        status = await trio.to_thread.run_sync(spawn_port_mapper, self.mapper_port)
        if status != 0:
            raise OSError(f"the port mapper could not start (exit status {status})")
        with trio.fail_after(5):
            while True:
                try:
                    return await trio.open_tcp_stream("127.0.0.1", self.mapper_port)
                except OSError:
                    await trio.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
