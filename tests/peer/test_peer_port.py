"""The peer port's dispatch by purpose: control requests, peer links, refusals and their log lines."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from cluster import peer
from cluster.control import control_call, serve_control
from cluster.logtext import RefusalLog
from cluster.peer import HandshakeFailed, PeerLink, Purpose, RefusalKind
from cluster.peerport import serve_connection

COOKIE = "ABCDEFGHIJKLMNOPQRST"
NODE = "a@localhost"


async def _echo(method: str, args: Any) -> Any:
    return {"method": method}


async def test_control_and_peer_links_share_the_port_and_go_to_their_handlers() -> None:
    peers_seen: list[tuple[str, Purpose]] = []

    async def peer_links(link: PeerLink) -> None:
        peers_seen.append((link.peer_name, link.purpose))
        await link.send(await link.receive())  # echo one message

    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_control, _echo, cookie=COOKIE, node_name=NODE, host="127.0.0.1",
                                           port=0, peer_links=peer_links))
        with trio.fail_after(10):
            assert await control_call("127.0.0.1", port, NODE, "status", {}, cookie=COOKIE) == {
                "ok": True, "result": {"method": "status"}}
            link = await peer.connect_peer("127.0.0.1", port, cookie=COOKIE, local_name="b@localhost",
                                           remote_name=NODE, purpose=Purpose.PEER)
            await link.send("ping")
            assert await link.receive() == "ping"
            await link.aclose()
        nursery.cancel_scope.cancel()
    assert peers_seen == [("b@localhost", Purpose.PEER)]


async def test_a_peer_is_refused_where_no_transport_serves_peers() -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_control, _echo, cookie=COOKIE, node_name=NODE, host="127.0.0.1",
                                           port=0))
        with pytest.raises(HandshakeFailed) as info:
            await peer.connect_peer("127.0.0.1", port, cookie=COOKIE, local_name="b@localhost", remote_name=NODE,
                                    purpose=Purpose.PEER, timeout=10)
        nursery.cancel_scope.cancel()
    assert info.value.refusal.kind is RefusalKind.PURPOSE and info.value.refusal.by_peer
    assert "(this node accepts: control)" in info.value.refusal.reason


async def test_a_message_on_a_control_link_is_a_protocol_error_not_ignored(caplog: pytest.LogCaptureFixture) -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_control, _echo, cookie=COOKIE, node_name=NODE, host="127.0.0.1",
                                           port=0))
        with trio.fail_after(10):
            link = await peer.connect_peer("127.0.0.1", port, cookie=COOKIE, local_name="ctl\n@h", remote_name=NODE)
            await link.send({"not": "a request"})
            with pytest.raises(peer.ProtocolViolation, match="a control link carries requests only"):
                await link.receive()
        nursery.cancel_scope.cancel()
    lines = [r.getMessage() for r in caplog.records if r.name == "leveret.control"]
    assert lines == ["control client 'ctl\\n@h' sent a message instead of a request; link closed"]


async def _attempt(cookie: str, name: str, handlers: dict, refusals: RefusalLog) -> peer.HandshakeRefused | PeerLink:
    left, right = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(serve_connection, handlers, refusals, right, cookie=COOKIE, node_name=NODE))
        try:
            return await peer.open_peer_link(left, cookie=cookie, local_name=name, remote_name=NODE,
                                             purpose=Purpose.PEER)
        except HandshakeFailed as exc:
            return exc.refusal


async def test_wrong_cookie_one_clear_line_each_side_escaped_and_rate_limited(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    clock = [0.0]
    refusals = RefusalLog(logging.getLogger("leveret.peer"), interval=10, clock=lambda: clock[0])
    delivered: list[PeerLink] = []

    async def peer_links(link: PeerLink) -> None:
        delivered.append(link)

    handlers = {Purpose.PEER: peer_links}
    outcomes = [await _attempt("WRONGWRONGWRONGWRONG", "evil\r\n@h", handlers, refusals) for _ in range(3)]
    clock[0] = 11
    outcomes.append(await _attempt("WRONGWRONGWRONGWRONG", "evil\r\n@h", handlers, refusals))
    assert not delivered
    for outcome in outcomes:
        assert isinstance(outcome, peer.HandshakeRefused) and outcome.cookie_differs and outcome.by_peer
    lines = [r.getMessage() for r in caplog.records if r.name == "leveret.peer"]
    assert lines == [
        "connection attempt from node 'evil\\r\\n@h' (None) refused: the cookie differs: "
        "authentication failed (the peer could not prove this node's cookie)",
        "connection attempt from node 'evil\\r\\n@h' (None) refused: the cookie differs: "
        "authentication failed (the peer could not prove this node's cookie) "
        "(2 more like it suppressed since the last one)",
    ]
    # the right cookie goes through to the handler
    assert isinstance(await _attempt(COOKIE, "b@h", handlers, refusals), PeerLink)
    assert [link.peer_name for link in delivered] == ["b@h"]
