"""PeerTransport over real loopback TCP: two nodes' peer ports (control and peer purposes on
one port each), Raft batches and calls both ways, a node with another cookie, a peer of
another protocol version, and leveretctl's control requests on the same port."""

from __future__ import annotations

import random
from functools import partial
from typing import Any

import pytest
import trio

from cluster import peer
from cluster.control import control_call, serve_control
from cluster.portmapper import mapped_dial
from cluster.raft.messages import Append, InstallSnapshot, PeerBatch, VoteReply
from cluster.transport import PeerTransport, PeerUnreachable, Replied, tcp_dial
from storage.interface import LogEntry, Snapshot

COOKIE = "LOOPBACKCOOKIELOOPBA"


async def _control(method: str, args: Any) -> Any:
    return {"control": method}


async def _node(nursery: trio.Nursery, name: str, cookie: str = COOKIE, host: str = "127.0.0.1",
                **options: Any) -> tuple[PeerTransport, int]:
    transport = PeerTransport(name, cookie, rng=random.Random(1), initial_backoff=0.05, max_backoff=0.5, **options)
    port = await nursery.start(partial(serve_control, _control, cookie=cookie, node_name=name, host=host,
                                       port=0, peer_links=transport.serve_inbound))

    async def whoami(src: str, args: Any) -> Any:
        return {"me": name, "you": src, "args": args}

    transport.on_call("whoami", whoami)
    await nursery.start(transport.run)
    return transport, port


async def test_two_nodes_exchange_raft_batches_and_calls_and_still_serve_control() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            a, a_port = await _node(nursery, "a@localhost")
            b, b_port = await _node(nursery, "b@localhost")
            a.set_peers({"b@localhost": tcp_dial("127.0.0.1", b_port)})
            b.set_peers({"a@localhost": tcp_dial("127.0.0.1", a_port)})
            append = Append("meta", 3, "a@localhost", "b@localhost", 0, 0,
                            (LogEntry(1, 3, b"declare"), LogEntry(2, 3, b"\x00" * 1000)), 2)
            a.send(PeerBatch("a@localhost", "b@localhost", 11, (append,)))
            got = await b.received.receive()
            assert got == PeerBatch("a@localhost", "b@localhost", 11, (append,))
            reply = VoteReply("meta", 3, "b@localhost", "a@localhost", granted=True)
            b.send(PeerBatch("b@localhost", "a@localhost", 12, (reply,)))
            assert (await a.received.receive()).messages == (reply,)
            assert await a.call("b@localhost", "whoami", [1]) == Replied(
                {"me": "b@localhost", "you": "a@localhost", "args": [1]})
            assert await b.call("a@localhost", "whoami", None) == Replied(
                {"me": "a@localhost", "you": "b@localhost", "args": None})
            assert a.reachable() == {"b@localhost"} and b.reachable() == {"a@localhost"}
            stats = a.statistics()["b@localhost"]
            assert stats.connected and stats.bytes_sent > 1000 and stats.frames_received >= 1
            assert stats.inbound_links == 1  # b dialled a too
            # leveretctl's requests are served on the same port as the peers
            for port, name in ((a_port, "a@localhost"), (b_port, "b@localhost")):
                assert await control_call("127.0.0.1", port, name, "status", {}, cookie=COOKIE) == {
                    "ok": True, "result": {"control": "status"}}
            nursery.cancel_scope.cancel()


async def test_a_node_with_another_cookie_gets_an_outcome_saying_so() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            _, a_port = await _node(nursery, "a@localhost")
            stranger, _ = await _node(nursery, "x@localhost", cookie="ANOTHERCOOKIEANOTHER")
            stranger.set_peers({"a@localhost": tcp_dial("127.0.0.1", a_port)})
            outcome = await stranger.call("a@localhost", "whoami", None)
            assert isinstance(outcome, PeerUnreachable) and outcome.cookie_differs
            assert outcome.reason == ("the cookie differs: authentication failed (rejected by the remote node), "
                                      "please check the cookie")
            assert stranger.reachable() == frozenset()
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("version", [1, 2])  # 2: before chunked messages
async def test_a_peer_of_another_protocol_version_is_refused_with_both_versions_named(
        version: int, caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            _, a_port = await _node(nursery, "a@localhost")
            stream = await trio.open_tcp_stream("127.0.0.1", a_port)
            hello = {"type": "hello", "version": version, "purpose": "peer", "name": "old@localhost", "to": None,
                     "nonce": b"n" * peer.NONCE_LEN}
            await stream.send_all(peer.encode_frame(hello))
            decoder = peer.FrameDecoder(peer.HANDSHAKE_FRAME_MAX)
            while (frame := decoder.next_frame()) is peer.NEED_DATA:
                data = await stream.receive_some()
                assert data, "closed without saying why"
                decoder.feed(data)
            assert frame == {"type": "refused", "kind": "version",
                             "reason": f"unsupported peer protocol version {version} (this node speaks "
                                       f"{peer.PROTOCOL_VERSION})"}
            assert await stream.receive_some() == b""  # and closed
            while not _lines(caplog, "leveret.peer"):
                await trio.sleep(0.01)  # the node logs right after closing
            nursery.cancel_scope.cancel()
    [line] = _lines(caplog, "leveret.peer")
    assert line.startswith("connection attempt from node 'old@localhost' (127.0.0.1:")
    assert line.endswith(f"refused: unsupported peer protocol version {version} (this node speaks "
                         f"{peer.PROTOCOL_VERSION})")


def _lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


async def test_the_connecting_node_logs_the_refusal_too(caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            # a node whose peer port serves leveretctl only (no transport wired)
            port = await nursery.start(partial(serve_control, _control, cookie=COOKIE, node_name="a@localhost",
                                               host="127.0.0.1", port=0))
            b, _ = await _node(nursery, "b@localhost")
            b.set_peers({"a@localhost": tcp_dial("127.0.0.1", port)})
            outcome = await b.call("a@localhost", "whoami", None)
            assert isinstance(outcome, PeerUnreachable) and outcome.refusal is peer.RefusalKind.PURPOSE
            while not _lines(caplog, "leveret.peer"):
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    lines = {r.name: r.getMessage() for r in caplog.records if r.levelname == "WARNING"}
    assert lines["leveret.transport"] == (
        "peer link to node 'a@localhost' refused: unknown or unserved connection purpose 'peer' "
        "(this node accepts: control)")
    assert lines["leveret.peer"].startswith("connection attempt from node 'b@localhost' (127.0.0.1:")


async def test_a_node_with_an_address_dials_its_peers_and_their_mappers_from_that_address() -> None:
    """A firewall rule between 127.0.0.11 and 127.0.0.12 must separate exactly those two nodes:
    the connections node 12 opens leave from 127.0.0.12, not from the kernel's pick (127.0.0.1)."""
    seen: dict[str, list[str]] = {"mapper": [], "peer": []}

    async def fake_mapper(peer_port: int, stream: trio.SocketStream) -> None:
        seen["mapper"].append(stream.socket.getpeername()[0])
        decoder = peer.FrameDecoder(1024)
        while (request := decoder.next_frame()) is peer.NEED_DATA:
            decoder.feed(await stream.receive_some())
        assert request == {"op": "lookup", "name": "a"}
        await stream.send_all(peer.encode_frame({"ok": True, "port": peer_port}))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            a, _ = await _node(nursery, "a@127.0.0.11", host="127.0.0.11")

            async def serve_inbound(link: peer.PeerLink) -> None:  # a's peer port, noting who dialled
                seen["peer"].append(link.stream.socket.getpeername()[0])  # type: ignore[attr-defined]
                await a.serve_inbound(link)

            port = await nursery.start(partial(serve_control, _control, cookie=COOKIE, node_name="a@127.0.0.11",
                                               host="127.0.0.11", port=0, peer_links=serve_inbound))
            [mapper] = await nursery.start(partial(trio.serve_tcp, partial(fake_mapper, port), 0,
                                                   host="127.0.0.11"))
            b, _ = await _node(nursery, "b@127.0.0.12", host="127.0.0.12", local_address="127.0.0.12")
            b.set_peers({"a@127.0.0.11": mapped_dial("a@127.0.0.11", mapper_port=mapper.socket.getsockname()[1])})
            assert await b.call("a@127.0.0.11", "whoami", None) == Replied(
                {"me": "a@127.0.0.11", "you": "b@127.0.0.12", "args": None})
            # and with no address of its own, the kernel picks (on loopback, 127.0.0.1)
            c, _ = await _node(nursery, "c@127.0.0.13", host="127.0.0.13")
            c.set_peers({"a@127.0.0.11": tcp_dial("127.0.0.11", port)})
            assert isinstance(await c.call("a@127.0.0.11", "whoami", None), Replied)
            nursery.cancel_scope.cancel()
    assert seen == {"mapper": ["127.0.0.12"], "peer": ["127.0.0.12", "127.0.0.1"]}


async def test_a_10mb_raft_batch_crosses_real_tcp_while_casts_sent_after_it_arrive_first() -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            a, a_port = await _node(nursery, "a@localhost")
            b, b_port = await _node(nursery, "b@localhost")
            arrivals: list[Any] = []
            b.on_cast("note", lambda src, payload: arrivals.append(payload))
            a.set_peers({"b@localhost": tcp_dial("127.0.0.1", b_port)})
            b.set_peers({"a@localhost": tcp_dial("127.0.0.1", a_port)})
            assert isinstance(await a.call("b@localhost", "whoami", None), Replied)
            data = random.Random(5).randbytes(10 * 1024 * 1024)
            big = PeerBatch("a@localhost", "b@localhost", 11,
                            (InstallSnapshot("q", 3, "a@localhost", "b@localhost", Snapshot(9, 3, data)),))
            a.send(big)
            for n in range(5):
                assert a.cast("b@localhost", "note", n) is None
            got = await b.received.receive()
            arrivals.append("snapshot")
            assert got == big
            assert arrivals[:6] == [0, 1, 2, 3, 4, "snapshot"]
            stats = b.statistics()["a@localhost"]
            assert stats.frames_received >= 40 and stats.bytes_reassembling == 0
            nursery.cancel_scope.cancel()
