"""Peer links over in-memory streams and real loopback TCP: handshake, messages, calls, limits."""

from __future__ import annotations

import struct

import msgpack
import pytest
import trio
import trio.testing

from cluster import peer
from cluster.peer import HandshakeFailed, HandshakeRefused, PeerLink, Request

COOKIE = "ABCDEFGHIJKLMNOPQRST"


class RecordingStream(trio.abc.Stream):
    """Passes everything through and keeps a copy of every byte sent."""

    def __init__(self, inner: trio.abc.Stream, log: bytearray) -> None:
        self.inner, self.log = inner, log

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.log += data
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def link_pair(
    connector_cookie: str = COOKIE, acceptor_cookie: str = COOKIE, max_frame_size: int = peer.DEFAULT_FRAME_MAX
) -> tuple[PeerLink | BaseException, PeerLink | HandshakeRefused, bytearray]:
    left, right = trio.testing.memory_stream_pair()
    wire = bytearray()
    left, right = RecordingStream(left, wire), RecordingStream(right, wire)
    results: dict[str, object] = {}

    async def connect() -> None:
        try:
            results["c"] = await peer.open_peer_link(
                left, cookie=connector_cookie, local_name="c@h", remote_name="a@h", max_frame_size=max_frame_size
            )
        except HandshakeFailed as exc:
            results["c"] = exc

    async def accept() -> None:
        results["a"] = await peer.accept_peer(right, cookie=acceptor_cookie, local_name="a@h", max_frame_size=max_frame_size)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(connect)
        nursery.start_soon(accept)
    return results["c"], results["a"], wire  # type: ignore[return-value]


async def test_handshake_and_messages_both_ways() -> None:
    c, a, _ = await link_pair()
    assert isinstance(c, PeerLink) and isinstance(a, PeerLink)
    assert c.peer_name == "a@h" and a.peer_name == "c@h"
    await c.send({"hello": [1, 2, 3], "body": b"\x00\xff"})
    assert await a.receive() == {"hello": [1, 2, 3], "body": b"\x00\xff"}
    await a.send("back")
    assert await c.receive() == "back"
    stats = c.statistics()
    assert stats.frames_sent == 1 and stats.frames_received == 1


async def test_wrong_cookie_refused_and_closed() -> None:
    c, a, _ = await link_pair(connector_cookie="ZZZZZZZZZZZZZZZZZZZZ")
    assert isinstance(a, HandshakeRefused)
    assert a.reason == "authentication failed" and a.peer_name == "c@h" and not a.by_peer
    assert isinstance(c, HandshakeFailed)
    assert c.refusal.reason == "authentication failed" and c.refusal.by_peer and c.refusal.cookie_differs


@pytest.mark.parametrize("connector_cookie", [COOKIE, "WRONGCOOKIEWRONGCOOK"])
async def test_cookie_never_on_the_wire(connector_cookie: str) -> None:
    c, a, wire = await link_pair(connector_cookie=connector_cookie)
    if isinstance(c, PeerLink):
        await c.send("payload")
        await a.receive()  # type: ignore[union-attr]
    assert len(wire) > 0
    for secret in {COOKIE, connector_cookie}:
        assert secret.encode() not in wire
        assert secret.encode().hex().encode() not in wire


async def test_call_reply_matching_out_of_order() -> None:
    c, a, _ = await link_pair()
    assert isinstance(c, PeerLink) and isinstance(a, PeerLink)
    results: dict[int, object] = {}

    async def server() -> None:
        held = []
        for _ in range(3):
            req = await a.receive()
            assert isinstance(req, Request)
            held.append(req)
        for req in reversed(held):  # answer in the opposite order
            await a.reply(req, {"echo": req.args["n"], "method": req.method})

    async def client(n: int) -> None:
        results[n] = await peer.call(c, "echo", {"n": n})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        for n in range(3):
            nursery.start_soon(client, n)
    assert results == {n: {"echo": n, "method": "echo"} for n in range(3)}


async def test_call_while_another_task_is_receiving_messages() -> None:
    c, a, _ = await link_pair()
    assert isinstance(c, PeerLink) and isinstance(a, PeerLink)
    got: list[object] = []

    async def c_receiver() -> None:
        got.append(await c.receive())

    async def a_server() -> None:
        req = await a.receive()
        assert isinstance(req, Request)
        await a.reply(req, "pong")
        await a.send("a message")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(c_receiver)
        nursery.start_soon(a_server)
        await trio.testing.wait_all_tasks_blocked()
        assert await c.call("ping") == "pong"
    assert got == ["a message"]


async def test_remote_error_and_late_reply_after_cancel(autojump_clock: trio.testing.MockClock) -> None:
    c, a, _ = await link_pair()
    assert isinstance(c, PeerLink) and isinstance(a, PeerLink)
    with trio.move_on_after(1):
        await c.call("slow", {})
    slow = await a.receive()
    assert isinstance(slow, Request) and slow.method == "slow"
    await a.reply(slow, "too late")  # nobody waits for it any more

    async def server() -> None:
        req = await a.receive()
        await a.reply_error(req, "no such command: bogus")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        with pytest.raises(peer.RemoteError, match="no such command"):
            await c.call("bogus", {})
    assert c.statistics().calls_waiting == 0


async def test_oversize_frame_after_handshake_refused() -> None:
    c, a, _ = await link_pair(max_frame_size=1024)
    assert isinstance(c, PeerLink) and isinstance(a, PeerLink)
    with pytest.raises(peer.FrameTooLarge):
        await c.send(b"x" * 2000)  # refused before anything is sent
    # a misbehaving peer announcing a huge frame is cut off on the header
    await c.stream.send_all(struct.pack(">I", 10_000_000))
    with pytest.raises(peer.FrameTooLarge):
        await a.receive()


async def test_oversize_frame_during_handshake() -> None:
    left, right = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(left.send_all, struct.pack(">I", peer.HANDSHAKE_FRAME_MAX + 1))
        outcome = await peer.accept_peer(right, cookie=COOKIE, local_name="a@h")
    assert isinstance(outcome, HandshakeRefused) and "limit" in outcome.reason


async def test_handshake_timeout(autojump_clock: trio.testing.MockClock) -> None:
    left, right = trio.testing.memory_stream_pair()
    outcome = await peer.accept_peer(right, cookie=COOKIE, local_name="a@h", timeout=5)
    assert outcome == HandshakeRefused("handshake timed out", kind=peer.RefusalKind.TIMEOUT)
    await left.aclose()


async def test_peer_closing_mid_handshake() -> None:
    left, right = trio.testing.memory_stream_pair()
    await left.aclose()
    outcome = await peer.accept_peer(right, cookie=COOKIE, local_name="a@h")
    assert isinstance(outcome, HandshakeRefused) and outcome.by_peer


async def test_message_pipelined_with_welcome_is_not_lost() -> None:
    left, right = trio.testing.memory_stream_pair()

    async def eager_acceptor() -> None:
        link = await peer.accept_peer(right, cookie=COOKIE, local_name="a@h")
        assert isinstance(link, PeerLink)
        await link.send("first")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(eager_acceptor)
        c = await peer.open_peer_link(left, cookie=COOKIE, local_name="c@h", remote_name="a@h")
        assert await c.receive() == "first"


async def test_receive_after_peer_close_raises() -> None:
    c, a, _ = await link_pair()
    assert isinstance(c, PeerLink) and isinstance(a, PeerLink)
    await a.aclose()
    with pytest.raises(peer.PeerClosed):
        await c.receive()


async def serve_one_peer(cookie: str, outcomes: list[object], task_status=trio.TASK_STATUS_IGNORED) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        link = await peer.accept_peer(stream, cookie=cookie, local_name="a@h")
        outcomes.append(link)
        if isinstance(link, PeerLink):
            while True:
                try:
                    req = await link.receive()
                except peer.PeerClosed:
                    return
                await link.reply(req, {"method": req.method, "args": req.args})

    await trio.serve_tcp(handler, 0, host="127.0.0.1", task_status=task_status)


async def test_over_real_loopback_tcp() -> None:
    outcomes: list[object] = []
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(serve_one_peer, COOKIE, outcomes)
        port = listeners[0].socket.getsockname()[1]

        link = await peer.connect_peer("127.0.0.1", port, cookie=COOKIE, local_name="ctl@h", remote_name="a@h", timeout=5)
        assert link.peer_name == "a@h"
        assert await peer.call(link, "cluster_status", {"x": 1}) == {"method": "cluster_status", "args": {"x": 1}}
        await link.aclose()

        with pytest.raises(HandshakeFailed, match="authentication failed"):
            await peer.connect_peer(
                "127.0.0.1", port, cookie="NOPENOPENOPENOPENOPE", local_name="ctl@h", remote_name="a@h", timeout=5
            )
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert isinstance(outcomes[0], PeerLink) and outcomes[0].peer_name == "ctl@h"
    refused = outcomes[1]
    assert isinstance(refused, HandshakeRefused) and refused.reason == "authentication failed"
    assert refused.peer_name == "ctl@h" and refused.peer_address and refused.peer_address.startswith("127.0.0.1:")


async def test_connect_to_closed_port_raises_oserror() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()
    with pytest.raises(OSError):
        await peer.connect_peer("127.0.0.1", port, cookie=COOKIE, local_name="c@h", remote_name=None, timeout=5)


async def test_send_batch_delivers_in_order_and_refuses_oversize_whole() -> None:
    c, a, _ = await link_pair(max_frame_size=1024)
    assert isinstance(c, PeerLink) and isinstance(a, PeerLink)
    await c.send_batch([{"n": i} for i in range(5)])
    assert [await a.receive() for _ in range(5)] == [{"n": i} for i in range(5)]
    before = c.statistics().bytes_sent
    with pytest.raises(peer.FrameTooLarge):
        await c.send_batch(["small", b"x" * 2000])
    assert c.statistics().bytes_sent == before  # nothing of the batch went out
    await c.send_batch([])
    assert c.statistics().frames_sent == 5


async def test_send_cut_short_closes_the_link() -> None:
    send_stream, _receive_stream = trio.testing.memory_stream_one_way_pair()
    link = PeerLink(trio.StapledStream(send_stream, trio.testing.MemoryReceiveStream()), "a@h", "c@h")
    stalled = trio.Event()

    async def stall() -> None:  # the bytes are handed over but the write never completes
        stalled.set()
        await trio.sleep_forever()

    send_stream.send_all_hook = stall
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.send, "x")
        await stalled.wait()
        nursery.cancel_scope.cancel()
    with pytest.raises(trio.ClosedResourceError):
        await link.send("y")


# --------------------------------------------------------------------------- chunked messages


async def peer_link_pair(max_message_size: int = peer.DEFAULT_MESSAGE_MAX) -> tuple[PeerLink, PeerLink]:
    """A connector and acceptor of purpose PEER over memory streams."""
    left, right = trio.testing.memory_stream_pair()
    results: dict[str, object] = {}

    async def connect() -> None:
        results["c"] = await peer.open_peer_link(left, cookie=COOKIE, local_name="c@h", remote_name="a@h",
                                                 purpose=peer.Purpose.PEER)

    async def accept() -> None:
        results["a"] = await peer.accept_peer(right, cookie=COOKIE, local_name="a@h",
                                              max_message_size=max_message_size,
                                              purposes=frozenset({peer.Purpose.PEER}))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(connect)
        nursery.start_soon(accept)
    c, a = results["c"], results["a"]
    assert isinstance(c, PeerLink) and isinstance(a, PeerLink)
    return c, a


def chunk_frames(obj: object, message_id: int, chunk_size: int) -> list[bytes]:
    writer = peer.ChunkWriter(peer.message_payload(msgpack.packb(obj)), message_id, chunk_size)
    frames = []
    while not writer.done:
        frames.append(writer.next_frame())
    return frames


async def test_a_chunked_message_is_delivered_whole_after_the_frames_between_its_chunks() -> None:
    c, a = await peer_link_pair()
    big = {"snapshot": bytes(range(256)) * 40}
    frames = chunk_frames(big, 1, 1000)
    assert len(frames) == 11
    small = peer.frame_of(peer.message_payload(msgpack.packb("small")))
    await c.send_frames(frames[0] + small + b"".join(frames[1:5]) + small, 7)
    assert await a.receive() == "small"
    assert await a.receive() == "small"
    assert a.statistics().bytes_reassembling == 5000
    await c.send_frames(b"".join(frames[5:]), 6)
    assert await a.receive() == big
    assert a.statistics().bytes_reassembling == 0 and a.statistics().frames_received == 13


async def test_a_chunked_message_beyond_the_limit_is_refused_on_its_first_chunk() -> None:
    c, a = await peer_link_pair(max_message_size=10_000)
    within = chunk_frames(b"w" * 9_000, 1, 4096)
    await c.send_frames(b"".join(within), len(within))
    assert await a.receive() == b"w" * 9_000
    beyond = chunk_frames(b"x" * 20_000, 2, 4096)
    await c.send_frames(beyond[0], 1)  # the rest need not come: the total is announced
    with pytest.raises(peer.MessageTooLarge, match=r"chunked message of 200\d\d bytes, the limit is 10000"):
        await a.receive()
    with pytest.raises(trio.ClosedResourceError):  # the link is closed
        await a.send("anything")


async def test_a_control_link_reassembles_nothing_beyond_its_frame_limit() -> None:
    c, a, _ = await link_pair(max_frame_size=1024)  # purpose CONTROL
    assert isinstance(c, PeerLink) and isinstance(a, PeerLink)
    frames = chunk_frames(b"x" * 2000, 1, 512)
    await c.send_frames(frames[0], 1)
    with pytest.raises(peer.MessageTooLarge, match="the limit is 1024"):
        await a.receive()


async def test_a_link_closed_mid_message_delivers_none_of_it_and_keeps_nothing() -> None:
    c, a = await peer_link_pair()
    frames = chunk_frames(b"t" * 50_000, 1, 4096)
    await c.send_frames(b"".join(frames[:6]), 6)
    await c.send("whole")
    assert await a.receive() == "whole"
    assert a.statistics().bytes_reassembling == 6 * 4096
    await c.aclose()
    with pytest.raises(peer.PeerClosed):
        await a.receive()
    assert a.statistics().bytes_reassembling == 0


_NESTED = msgpack.packb(["c", 2, 1, b"x"])


@pytest.mark.parametrize("frame", [
    ["c", 1, 0, b""],  # announces nothing
    ["c", 1, 10, b"x" * 11],  # more than announced
    ["c", 1, 10, "text"],  # not bytes
    ["c", 1, 3, b"\xc1\xc1\xc1"],  # whole, but not msgpack
    ["c", 1, len(_NESTED), _NESTED],  # a chunk inside a chunk
])
async def test_malformed_chunks_close_the_link(frame: list[object]) -> None:
    c, a = await peer_link_pair()
    await c.send_frames(peer.encode_frame(frame), 1)
    with pytest.raises(peer.MalformedFrame):
        await a.receive()
    assert a.statistics().bytes_reassembling == 0
