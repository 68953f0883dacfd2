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
from cluster.raft.messages import Append, PeerBatch, VoteReply
from cluster.transport import PeerTransport, PeerUnreachable, Replied, tcp_dial
from storage.interface import LogEntry

COOKIE = "LOOPBACKCOOKIELOOPBA"


async def _control(method: str, args: Any) -> Any:
    return {"control": method}


async def _node(nursery: trio.Nursery, name: str, cookie: str = COOKIE) -> tuple[PeerTransport, int]:
    transport = PeerTransport(name, cookie, rng=random.Random(1), initial_backoff=0.05, max_backoff=0.5)
    port = await nursery.start(partial(serve_control, _control, cookie=cookie, node_name=name, host="127.0.0.1",
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


async def test_a_peer_of_another_protocol_version_is_refused_with_both_versions_named(
        caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            _, a_port = await _node(nursery, "a@localhost")
            stream = await trio.open_tcp_stream("127.0.0.1", a_port)
            hello = {"type": "hello", "version": 1, "purpose": "peer", "name": "old@localhost", "to": None,
                     "nonce": b"n" * peer.NONCE_LEN}
            await stream.send_all(peer.encode_frame(hello))
            decoder = peer.FrameDecoder(peer.HANDSHAKE_FRAME_MAX)
            while (frame := decoder.next_frame()) is peer.NEED_DATA:
                data = await stream.receive_some()
                assert data, "closed without saying why"
                decoder.feed(data)
            assert frame == {"type": "refused", "kind": "version",
                             "reason": f"unsupported peer protocol version 1 (this node speaks "
                                       f"{peer.PROTOCOL_VERSION})"}
            assert await stream.receive_some() == b""  # and closed
            while not _lines(caplog, "leveret.peer"):
                await trio.sleep(0.01)  # the node logs right after closing
            nursery.cancel_scope.cancel()
    [line] = _lines(caplog, "leveret.peer")
    assert line.startswith("connection attempt from node 'old@localhost' (127.0.0.1:")
    assert line.endswith(f"refused: unsupported peer protocol version 1 (this node speaks {peer.PROTOCOL_VERSION})")


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
