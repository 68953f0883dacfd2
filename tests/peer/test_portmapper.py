"""The port mapper: the name table (pure), the daemon on real loopback ports (started on free
ports, always killed by pid), registration lifetimes, racing starters and the fallback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import trio

from cluster import portmapper
from cluster.portmapper import DEFAULT_PEER_PORT, PortMap, Registration

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- the table


def test_register_lookup_and_release_with_the_connection() -> None:
    table = PortMap()
    node, other = object(), object()
    assert table.handle({"op": "register", "name": "c1", "port": 25001}, node, True) == {"ok": True}
    assert table.handle({"op": "lookup", "name": "c1@localhost"}, other, False) == {"ok": True, "port": 25001}
    assert table.handle({"op": "lookup", "name": "c2"}, other, False) == {"ok": True, "port": None}
    assert table.handle({"op": "names"}, other, False) == {"ok": True, "names": {"c1": 25001}}
    assert table.release(other) is None
    assert table.release(node) == "c1"
    assert table.handle({"op": "lookup", "name": "c1"}, other, False) == {"ok": True, "port": None}


def test_registration_refusals() -> None:
    table = PortMap(max_names=2)
    a, b, c, d = object(), object(), object(), object()
    assert table.handle({"op": "register", "name": "c1", "port": 1}, a, False) == {
        "ok": False, "error": "registration is accepted only from this host"}
    assert table.handle({"op": "register", "name": "c1", "port": 1}, a, True) == {"ok": True}
    assert table.handle({"op": "register", "name": "c1", "port": 2}, b, True) == {
        "ok": False, "error": "the name 'c1' is registered by a running node (port 1)"}
    assert table.handle({"op": "register", "name": "c9", "port": 2}, a, True)["error"] == (
        "this connection has registered a name already")
    for bad in ({"name": "x@h", "port": 1}, {"name": "", "port": 1}, {"name": "n" * 256, "port": 1},
                {"name": "x", "port": 0}, {"name": "x", "port": 65536}, {"name": "x", "port": True},
                {"name": 5, "port": 1}):
        assert not table.handle({"op": "register", **bad}, c, True)["ok"]
    assert table.handle({"op": "register", "name": "c2", "port": 2}, b, True) == {"ok": True}
    assert table.handle({"op": "register", "name": "c3", "port": 3}, c, True)["error"] == "too many names registered"
    assert table.handle({"op": "frobnicate\n"}, d, True) == {"ok": False, "error": "unknown request 'frobnicate\\n'"}
    assert not table.handle(["not", "a", "map"], d, True)["ok"]
    assert not table.handle({"op": "lookup", "name": 7}, d, True)["ok"]


@pytest.mark.parametrize(("address", "loopback"), [
    ("127.0.0.1", True), ("127.3.2.1", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("10.0.0.1", False), ("::ffff:10.0.0.1", False), ("fe80::1%eth0", False), (None, False), ("junk", False)])
def test_loopback_addresses(address: str | None, loopback: bool) -> None:
    assert portmapper.is_loopback(address) is loopback


def test_names() -> None:
    assert portmapper.alive_name("c1@localhost") == "c1" and portmapper.alive_name("c1") == "c1"
    assert portmapper.node_host("c1@127.0.0.11") == "127.0.0.11" and portmapper.node_host("c1") == "localhost"


# --------------------------------------------------------------------------- the daemon


def _mapper_pids(port: int) -> list[int]:
    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "cluster.portmapper" in cmdline and str(port) in cmdline:
            pids.append(proc.info["pid"])
    return pids


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture
def mapper_port() -> Iterator[int]:
    """A free port for a mapper; whatever mapper processes serve it are killed by pid afterwards."""
    port = free_port()
    yield port
    for pid in _mapper_pids(port):
        _kill(pid)


def _start_foreground(port: int, *options: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "cluster.portmapper", "--port", str(port), "--host", "127.0.0.1",
                             *options],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode
            time.sleep(0.05)
    _kill(proc.pid)
    raise TimeoutError("the port mapper did not listen")


async def _until(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not await predicate():
            await trio.sleep(0.02)


async def test_a_node_stays_registered_while_its_connection_is_open(mapper_port: int) -> None:
    proc = _start_foreground(mapper_port)
    try:
        registration = Registration("c1@localhost", 25001, mapper_port=mapper_port, start_mapper=False)
        async with trio.open_nursery() as nursery:
            await nursery.start(registration.run)
            assert registration.registered
            assert await portmapper.lookup("127.0.0.1", "c1@localhost", mapper_port=mapper_port) == 25001
            assert await portmapper.resolve_peer_port("c1@127.0.0.1", mapper_port=mapper_port) == 25001
            # a second node may not take a name a running node holds
            twin = Registration("c1@elsewhere", 25002, mapper_port=mapper_port, start_mapper=False)
            async with trio.open_nursery() as inner:
                await inner.start(twin.run)
                assert not twin.registered and "registered by a running node" in (twin.last_error or "")
                inner.cancel_scope.cancel()
            nursery.cancel_scope.cancel()  # the node stops: its connection closes

        async def gone() -> bool:
            return await portmapper.lookup("127.0.0.1", "c1", mapper_port=mapper_port) is None

        await _until(gone)
        # an unknown name falls back to the default peer port, and --port wins over everything
        assert await portmapper.resolve_peer_port("c1@127.0.0.1", mapper_port=mapper_port) == DEFAULT_PEER_PORT
        assert await portmapper.resolve_control_port("c1@127.0.0.1", 5999, mapper_port=mapper_port) == 5999
        assert await portmapper.resolve_control_port("c1@127.0.0.1", None, mapper_port=mapper_port) == 25672
    finally:
        _kill(proc.pid)


async def test_no_mapper_answering_falls_back_to_the_default_port() -> None:
    port = free_port()
    assert await portmapper.resolve_peer_port("c1@127.0.0.1", mapper_port=port, default_port=25999) == 25999
    with pytest.raises(OSError):
        await portmapper.lookup("127.0.0.1", "c1", mapper_port=port)


async def test_a_silent_stranger_is_disconnected_but_a_registered_node_is_not(mapper_port: int) -> None:
    proc = _start_foreground(mapper_port, "--idle-timeout", "0.5")
    try:
        registration = Registration("c1@localhost", 25001, mapper_port=mapper_port, start_mapper=False)
        async with trio.open_nursery() as nursery:
            await nursery.start(registration.run)
            stranger = await trio.open_tcp_stream("127.0.0.1", mapper_port)
            with trio.fail_after(10):
                assert await stranger.receive_some() == b""
            await trio.sleep(1)
            assert registration.registered  # silent too, and still there
            assert await portmapper.lookup("127.0.0.1", "c1", mapper_port=mapper_port) == 25001
            nursery.cancel_scope.cancel()
        # an oversized request is cut off on its header
        big = await trio.open_tcp_stream("127.0.0.1", mapper_port)
        await big.send_all((portmapper.FRAME_MAX + 1).to_bytes(4, "big"))
        with trio.fail_after(10):
            assert await big.receive_some() == b""
        assert proc.poll() is None  # and the mapper still serves
        assert await portmapper.lookup("127.0.0.1", "nobody", mapper_port=mapper_port) is None
    finally:
        _kill(proc.pid)


async def test_the_first_node_starts_a_detached_mapper_that_outlives_it(mapper_port: int) -> None:
    registration = Registration("c1@localhost", 25001, mapper_port=mapper_port)
    async with trio.open_nursery() as nursery:
        await nursery.start(registration.run)
        assert registration.registered, registration.last_error
        status = await portmapper.request("127.0.0.1", mapper_port, {"op": "status"})
        nursery.cancel_scope.cancel()
    daemon = psutil.Process(status["pid"])
    try:
        assert daemon.pid != os.getpid() and daemon.ppid() != os.getpid()  # detached, not our child
        assert os.getsid(daemon.pid) != os.getsid(0)  # in a session of its own
        assert await portmapper.request("127.0.0.1", mapper_port, {"op": "names"}) == {"ok": True, "names": {}}
    finally:
        _kill(daemon.pid)


def test_racing_starters_leave_one_mapper_serving(mapper_port: int) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "cluster.portmapper", "--port", str(mapper_port), "--detach"]
    starters = [subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, start_new_session=True) for _ in range(4)]
    outputs = [proc.communicate(timeout=30) for proc in starters]
    assert [proc.returncode for proc in starters] == [0, 0, 0, 0]
    assert outputs == [(b"", b"")] * 4  # the losers exit quietly
    deadline = time.monotonic() + 10
    while len(pids := _mapper_pids(mapper_port)) != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(pids) == 1
    status = trio.run(portmapper.request, "127.0.0.1", mapper_port, {"op": "status"})
    assert status == {"ok": True, "pid": pids[0]}


async def test_a_node_registers_again_when_its_mapper_is_replaced(mapper_port: int) -> None:
    proc = _start_foreground(mapper_port)
    registration = Registration("c1@localhost", 25001, mapper_port=mapper_port, start_mapper=False,
                                retry_interval=0.05)
    async with trio.open_nursery() as nursery:
        await nursery.start(registration.run)
        assert registration.registered
        _kill(proc.pid)
        proc.wait()

        async def unregistered() -> bool:
            return not registration.registered

        await _until(unregistered)
        proc = await trio.to_thread.run_sync(_start_foreground, mapper_port)
        try:
            async def known() -> bool:
                return await portmapper.lookup("127.0.0.1", "c1", mapper_port=mapper_port) == 25001

            await _until(known)
        finally:
            _kill(proc.pid)
        nursery.cancel_scope.cancel()
