"""Node-to-node traffic over peer links: Raft batches, casts and calls, one frame per peer per cycle.

`PeerTransport` is the Raft driver's `Transport` (`send(PeerBatch)`,
`received`) over real links, and carries the other traffic nodes exchange:
one-way casts by kind (`cast`, handlers per kind on the receiving side) and
request/reply calls by method (`call`, handlers per method), whose failures
are values (`PeerUnreachable`, `CallTimedOut`, `RemoteFailure`,
`Undeliverable`), never exceptions.

Links. Each node dials every peer it knows for its own outbound traffic and
serves the links the others dial to it (accepted on the peer port with
purpose PEER, handed to `serve_inbound`). Between A and B there are thus two
links: A→B carries A's Raft batches, casts and call requests, and B's replies
to those calls; B→A the reverse. No tie-break is needed, a restart on either
side replaces only the link that side dialled, and a reply always travels on
the link its request came by, so a node that the callee does not know (one
that is joining) still gets its answer.

Frames. After the handshake every message is a list of items
    ["raft", <PeerBatch.to_wire()>]
    ["cast", kind, payload]
    ["call", id, method, args]
    ["reply", id, ok, value]       acceptor → connector only
    ["ping"] / ["pong"]            liveness; the connector pings, the acceptor answers
Items are msgpack-encoded when queued, so an unencodable payload fails its
cast or call at once and the writer only joins bytes. Each peer has one
outbox and one writer task: per cycle the writer takes everything queued
since its last write and writes it as ONE frame (several only if that would
exceed the frame limit). A driver cycle that sends to every peer therefore
costs one write per peer, however many groups and casts it carried.

Large items. An item over `chunk_size` (256 KiB; a Raft snapshot, a cast of
big messages) travels alone, as a message cut into chunk frames
(`cluster.peer`) written one per cycle between the small items, so a
heartbeat or another group's append waits behind one chunk, not a whole
snapshot (`cluster.outbound`). Casts and calls keep their order among
themselves (a cast queued after a large one waits for its last chunk); Raft
batches, pings and replies overtake. A Raft batch holding a large message is
split so that its other groups' messages go at once. Items up to
`max_message_size` (1 GiB) are carried; the receiving side of a link
reassembles no more than that and closes a link whose peer announces more,
logging one line, as for a frame over the frame limit. A link that breaks
mid-way delivers nothing of the item in chunks and keeps none of it.

Outbox. Bounded by bytes: small items by `max_outbox_bytes`, large ones by
`max_message_size`. When it is full a Raft batch is
dropped (Raft retries) and a cast or call fails at once with `Undeliverable`.
While a peer's dial is failing (state `backoff`), casts and calls fail at once
with `PeerUnreachable` rather than wait for a timeout: a caller forwarding to
the metadata leader is better served by an answer now. What was queued when a
dial fails is failed the same way (calls) or counted as dropped (casts, Raft
batches). Items queued but not yet written when a link breaks wait for the
next link; calls already written are failed (`PeerUnreachable`: the request
may or may not have been carried out) and casts already written may be lost:
casts are at most once.

Source address. With `local_address` (the node's `node_ip_address`) every
dial, to a peer's mapper and to its peer port, leaves from that address, so a
firewall rule between two addresses separates exactly those two nodes.

Reconnect. A failed dial waits `initial_backoff` doubled per consecutive
failure up to `max_backoff`, scaled by a jitter factor in [0.5, 1) drawn from
the injected `rng`, so that a cluster restarting together does not dial in
lock-step. A refused handshake (another cookie, another version) is logged
once per interval as one clear line and retried at the same pace: an operator
may fix the cookie.

Liveness. A partition does not close TCP connections. The connector adds a
ping to its outbound batch every `heartbeat_interval`; the acceptor answers
each with a pong. Either side closes a link on which nothing arrived for
`link_timeout`, and a write that takes longer than that also ends the link.
`reachable()` (peers whose outbound link is up) is what cluster_status lists
as running nodes; the others are partitioned or down.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

import msgpack
import trio

from cluster.logtext import RefusalLog, peer_text
from cluster.outbound import Item as _Item
from cluster.outbound import Outbox
from cluster.peer import (
    CHUNK_SIZE,
    DEFAULT_FRAME_MAX,
    DEFAULT_MESSAGE_MAX,
    FrameTooLarge,
    HandshakeFailed,
    HandshakeRefused,
    LinkStatistics,
    MessageTooLarge,
    PeerClosed,
    PeerLink,
    PeerWireError,
    Purpose,
    RefusalKind,
    open_peer_link,
)
from cluster.peerport import describe_refusal
from cluster.raft.messages import PeerBatch

log = logging.getLogger("leveret.transport")


class Dial(Protocol):
    """Opens a stream to one peer (TCP in a node, a simulated link in tests), leaving from
    `local_address` when it is not None. Raises OSError."""

    def __call__(self, local_address: str | None, /) -> Awaitable[trio.abc.Stream]: ...


CastHandler = Callable[[str, Any], None]
"""(sender node, payload): runs in the link's reader task, in arrival order; must not block."""

CallHandler = Callable[[str, Any], Awaitable[Any]]
"""(caller node, args) -> result (msgpack-encodable); an exception becomes a `RemoteFailure`."""

PeerState = Literal["connecting", "up", "backoff"]

ERROR_TEXT_MAX: Final = 4096  # characters of a remote failure's text

# Item tags on the wire.
_RAFT: Final = "raft"
_CAST: Final = "cast"
_CALL: Final = "call"
_REPLY: Final = "reply"
_PING: Final = "ping"
_PONG: Final = "pong"
# What keeps its order on a link: a call must arrive after the casts queued before it.
_ORDERED: Final = frozenset({_CAST, _CALL})


# --------------------------------------------------------------------------- outcomes


@dataclass(frozen=True, slots=True)
class Replied:
    """A call's answer."""

    value: Any


@dataclass(frozen=True, slots=True)
class PeerUnreachable:
    """No link to `node`, or it broke before the reply (then the request may have been carried
    out). `refusal` says why when the peer refused the handshake (e.g. another cookie)."""

    node: str
    reason: str
    refusal: RefusalKind | None = None
    # The request had been written when the link broke: the peer may have carried it out.
    maybe_delivered: bool = False

    @property
    def cookie_differs(self) -> bool:
        return self.refusal is RefusalKind.COOKIE


@dataclass(frozen=True, slots=True)
class CallTimedOut:
    node: str
    method: str
    timeout: float


@dataclass(frozen=True, slots=True)
class RemoteFailure:
    """The peer answered with an error: its handler raised, it has no handler for the method, or
    it is busy. `text` is the peer's: log it through `peer_text`."""

    node: str
    method: str
    text: str


@dataclass(frozen=True, slots=True)
class Undeliverable:
    """Never queued: the outbox is full, or the payload cannot be encoded or exceeds the frame limit."""

    node: str
    reason: str


CallOutcome = Replied | PeerUnreachable | CallTimedOut | RemoteFailure | Undeliverable
CastError = PeerUnreachable | Undeliverable


@dataclass(frozen=True, slots=True)
class PeerStatistics:
    """One peer as this node sees it (traffic counts both directions' links)."""

    node: str
    state: PeerState
    connected: bool
    last_error: str | None
    refusal: RefusalKind | None
    reconnects: int
    frames_sent: int
    frames_received: int
    bytes_sent: int
    bytes_received: int
    queued_items: int
    queued_bytes: int
    raft_batches_dropped: int
    casts_dropped: int
    calls_waiting: int
    inbound_links: int
    bytes_reassembling: int = 0  # received chunks of messages not yet whole, on the live links


# --------------------------------------------------------------------------- pieces


class _Waiter:
    __slots__ = ("event", "method", "value")

    def __init__(self, method: str) -> None:
        self.event = trio.Event()
        self.method = method
        self.value: CallOutcome | None = None

    def resolve(self, value: CallOutcome) -> None:
        if not self.event.is_set():
            self.value = value
            self.event.set()


class _Outbox(Outbox):
    """An `Outbox` whose `wake` is a trio event its link's writer waits on."""

    __slots__ = ()
    wake: trio.Event

    def __init__(self, limit: float, *, large_limit: float, chunk_size: int, max_frame_items_bytes: int) -> None:
        super().__init__(limit, large_limit=large_limit, ordered_tags=_ORDERED, chunk_size=chunk_size,
                         max_frame_items_bytes=max_frame_items_bytes, new_wake=trio.Event)


def _add_traffic(total: LinkStatistics, link: LinkStatistics) -> None:
    total.frames_sent += link.frames_sent
    total.frames_received += link.frames_received
    total.bytes_sent += link.bytes_sent
    total.bytes_received += link.bytes_received


@dataclass(eq=False, slots=True)
class _Peer:
    """This node's side of one peer: its outbox, its outbound link and the calls waiting on it."""

    name: str
    dial: Dial
    outbox: _Outbox
    state: PeerState = "connecting"
    link: PeerLink | None = None
    last_error: str | None = None
    refusal: RefusalKind | None = None
    reconnects: int = 0
    ever_connected: bool = False
    raft_batches_dropped: int = 0
    casts_dropped: int = 0
    calls: dict[int, _Waiter] = field(default_factory=dict)  # queued or written
    written: set[int] = field(default_factory=set)  # call ids whose request went out on the live link
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


class _ProtocolError(Exception):
    """The peer sent something this protocol does not allow; the link is aborted with this reason."""


class _Oversized(str):
    """Why a link ended: the peer sent more than a frame or message limit allows (the link
    closed itself, as `cluster.peer` does on the header)."""


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


# --------------------------------------------------------------------------- the transport


class PeerTransport:
    """Raft batches, casts and calls between this node and its peers (see the module docstring).

    Non-blocking (`send`, `cast`, `set_peers`, `statistics`, `reachable`) are plain functions;
    `call`, `run` and `serve_inbound` are async. Nothing is dialled before `run` starts.
    """

    def __init__(
        self,
        name: str,
        cookie: str,
        *,
        rng: random.Random | None = None,
        max_outbox_bytes: int = 64 * 1024 * 1024,
        max_frame_size: int = DEFAULT_FRAME_MAX,
        max_message_size: int = DEFAULT_MESSAGE_MAX,
        chunk_size: int = CHUNK_SIZE,
        local_address: str | None = None,
        received_buffer: int = 1024,
        connect_timeout: float = 5.0,
        handshake_timeout: float = 5.0,
        heartbeat_interval: float = 1.0,
        link_timeout: float = 4.0,
        initial_backoff: float = 0.1,
        max_backoff: float = 5.0,
        max_calls_in_progress: int = 1024,
    ) -> None:
        assert heartbeat_interval < link_timeout, "a link must hear a ping before it gives up"
        self.name = name
        self._cookie = cookie
        self._rng = rng or random.Random()
        self._max_outbox_bytes = max_outbox_bytes
        self._max_frame_size = max_frame_size
        # A frame is [b"m", [items...]]: leave room for the envelope and the array header.
        self._max_batch_bytes = max_frame_size - 16
        self._max_message_size = max_message_size
        self._max_item_bytes = max_message_size - 16  # an item alone, in chunks
        self._chunk_size = min(chunk_size, self._max_batch_bytes)
        # An address to leave from; all addresses (or none given) leave it to the kernel.
        self._local_address = None if local_address in (None, "", "0.0.0.0", "::") else local_address
        self._connect_timeout = connect_timeout
        self._handshake_timeout = handshake_timeout
        self._heartbeat_interval = heartbeat_interval
        self._link_timeout = link_timeout
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._max_calls_in_progress = max_calls_in_progress
        self._peers: dict[str, _Peer] = {}
        self._cast_handlers: dict[str, CastHandler] = {}
        self._call_handlers: dict[str, CallHandler] = {}
        self._call_ids = itertools.count(1)
        self._received_send, self._received = trio.open_memory_channel[PeerBatch](received_buffer)
        self._traffic: dict[str, LinkStatistics] = {}  # per peer, of the links that have closed
        self._inbound: dict[str, set[PeerLink]] = {}
        self._raft_received_dropped = 0
        self._nursery: trio.Nursery | None = None
        # On trio's clock, so that a simulation's MockClock also drives the rate limit.
        self._log = RefusalLog(log, clock=lambda: trio.current_time())
        self._connectivity_changed = trio.Event()

    # ------------------------------------------------------------------ the Raft driver's Transport

    def send(self, batch: PeerBatch) -> None:
        """Queue `batch` for its destination without blocking; dropped when it cannot go (Raft retries)."""
        if batch.dst == self.name:
            self._deliver_raft(batch)
            return
        peer = self._peers.get(batch.dst)
        if peer is None:
            return
        for packed in _raft_items(batch, self._chunk_size):
            if len(packed) > self._max_item_bytes:
                self._log.warning(f"raft-too-large {peer.name}", "a Raft batch of %d bytes for node '%s' exceeds "
                                  "the peer message limit and was dropped", len(packed), peer_text(peer.name))
                peer.raft_batches_dropped += 1
            elif peer.state == "backoff" or not peer.outbox.put((_RAFT, packed, 0)):
                peer.raft_batches_dropped += 1

    @property
    def received(self) -> trio.MemoryReceiveChannel[PeerBatch]:
        """Raft batches other nodes sent to this one (bounded: beyond it batches are dropped)."""
        return self._received

    # ------------------------------------------------------------------ casts and calls

    def on_cast(self, kind: str, handler: CastHandler) -> None:
        """Handle casts of `kind` that arrive here (one handler per kind; a second replaces it)."""
        self._cast_handlers[kind] = handler

    def on_call(self, method: str, handler: CallHandler) -> None:
        """Answer calls of `method` that arrive here (one handler per method)."""
        self._call_handlers[method] = handler

    def cast(self, node: str, kind: str, payload: Any) -> CastError | None:
        """Queue a one-way message to `node`: None once queued (delivery is at most once), else
        why it was not."""
        peer = self._peers.get(node)
        if peer is None:
            return PeerUnreachable(node, "not a peer of this node")
        if peer.state == "backoff":
            return self._unreachable(peer)
        try:
            packed = _pack([_CAST, kind, payload])
        except (TypeError, ValueError, OverflowError) as exc:
            return Undeliverable(node, f"the payload cannot be encoded: {exc}")
        return self._queue(peer, (_CAST, packed, 0))

    async def call(self, node: str, method: str, args: Any = None, *, timeout: float = 10.0) -> CallOutcome:
        """Ask `node` to run `method`'s handler with `args`; its answer or why there is none."""
        peer = self._peers.get(node)
        if peer is None:
            return PeerUnreachable(node, "not a peer of this node")
        if peer.state == "backoff":
            await trio.lowlevel.checkpoint()
            return self._unreachable(peer)
        call_id = next(self._call_ids)
        try:
            packed = _pack([_CALL, call_id, method, args])
        except (TypeError, ValueError, OverflowError) as exc:
            await trio.lowlevel.checkpoint()
            return Undeliverable(node, f"the arguments cannot be encoded: {exc}")
        if (refused := self._queue(peer, (_CALL, packed, call_id))) is not None:
            await trio.lowlevel.checkpoint()
            return refused
        waiter = _Waiter(method)
        peer.calls[call_id] = waiter
        try:
            with trio.move_on_after(timeout):
                await waiter.event.wait()
        finally:
            peer.calls.pop(call_id, None)
            peer.written.discard(call_id)
            if waiter.value is None:
                peer.outbox.withdraw(call_id)  # if still queued, it never goes out: nobody would wait
        if waiter.value is None:
            return CallTimedOut(node, method, timeout)
        return waiter.value

    def _queue(self, peer: _Peer, item: _Item) -> Undeliverable | None:
        if len(item[1]) > self._max_item_bytes:
            return Undeliverable(peer.name, f"{len(item[1])} bytes exceed the peer message limit")
        if not peer.outbox.put(item):
            queued = peer.outbox.large_size if peer.outbox.is_large(item) else peer.outbox.size
            return Undeliverable(peer.name, f"outbox full ({queued} bytes queued for the node)")
        return None

    def _new_outbox(self, limit: float, large_limit: float) -> _Outbox:
        return _Outbox(limit, large_limit=large_limit, chunk_size=self._chunk_size,
                       max_frame_items_bytes=self._max_batch_bytes)

    def _unreachable(self, peer: _Peer) -> PeerUnreachable:
        return PeerUnreachable(peer.name, peer.last_error or "not connected", peer.refusal)

    # ------------------------------------------------------------------ membership and connectivity

    def set_peers(self, peers: Mapping[str, Dial]) -> None:
        """The nodes to dial, by name, and how to reach each. Peers no longer listed are dropped
        (their queued casts and waiting calls fail); a known peer keeps its link and outbox."""
        for name in [n for n in self._peers if n not in peers]:
            peer = self._peers.pop(name)
            self._set_state(peer, "backoff")
            peer.scope.cancel()
            self._fail_queued(peer, "no longer a peer of this node")
            self._fail_written(peer, "no longer a peer of this node")
        for name, dial in peers.items():
            if name == self.name:
                continue
            peer = self._peers.get(name)
            if peer is not None:
                peer.dial = dial
                continue
            peer = _Peer(name, dial, self._new_outbox(self._max_outbox_bytes, self._max_message_size))
            self._peers[name] = peer
            if self._nursery is not None:
                self._nursery.start_soon(self._run_peer, peer)

    def peers(self) -> frozenset[str]:
        return frozenset(self._peers)

    def reachable(self) -> frozenset[str]:
        """Peers whose outbound link is up now."""
        return frozenset(name for name, peer in self._peers.items() if peer.state == "up")

    async def wait_connectivity_change(self) -> frozenset[str]:
        """Wait until a peer's link comes up or goes down; the peers reachable then."""
        await self._connectivity_changed.wait()
        return self.reachable()

    def _set_state(self, peer: _Peer, state: PeerState) -> None:
        if (peer.state == "up") != (state == "up"):
            self._connectivity_changed.set()
            self._connectivity_changed = trio.Event()
        peer.state = state

    def statistics(self) -> dict[str, PeerStatistics]:
        out = {}
        for name, peer in self._peers.items():
            traffic = LinkStatistics()
            _add_traffic(traffic, self._traffic.get(name, LinkStatistics()))
            for link in [*self._inbound.get(name, ()), *([peer.link] if peer.link is not None else [])]:
                live = link.statistics()
                _add_traffic(traffic, live)
                traffic.bytes_reassembling += live.bytes_reassembling
            out[name] = PeerStatistics(
                node=name, state=peer.state, connected=peer.state == "up", last_error=peer.last_error,
                refusal=peer.refusal, reconnects=peer.reconnects, frames_sent=traffic.frames_sent,
                frames_received=traffic.frames_received, bytes_sent=traffic.bytes_sent,
                bytes_received=traffic.bytes_received, queued_items=len(peer.outbox),
                queued_bytes=peer.outbox.size + peer.outbox.large_size,
                raft_batches_dropped=peer.raft_batches_dropped,
                casts_dropped=peer.casts_dropped, calls_waiting=len(peer.calls),
                inbound_links=len(self._inbound.get(name, ())), bytes_reassembling=traffic.bytes_reassembling)
        return out

    @property
    def raft_batches_dropped_on_receipt(self) -> int:
        """Batches that arrived while the driver's `received` buffer was full."""
        return self._raft_received_dropped

    # ------------------------------------------------------------------ outbound: one task per peer

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Dial and feed every peer until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for peer in self._peers.values():
                    nursery.start_soon(self._run_peer, peer)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    async def _run_peer(self, peer: _Peer) -> None:
        failures = 0
        with peer.scope:
            try:
                while True:
                    outcome = await self._dial(peer)
                    if isinstance(outcome, PeerLink):
                        failures = 0
                        await self._use_link(peer, outcome)
                        delay = self._initial_backoff
                    else:
                        self._dial_failed(peer, outcome)
                        delay = min(self._max_backoff, self._initial_backoff * 2 ** failures)
                        failures += 1
                    await trio.sleep(delay * (0.5 + 0.5 * self._rng.random()))
                    self._set_state(peer, "connecting")
            finally:
                self._set_state(peer, "backoff")
                self._fail_queued(peer, "the transport stopped")
                self._fail_written(peer, "the transport stopped")

    async def _dial(self, peer: _Peer) -> PeerLink | str | HandshakeRefused:
        try:
            with trio.fail_after(self._connect_timeout):
                stream = await peer.dial(self._local_address)
        except trio.TooSlowError:
            return f"no connection within {self._connect_timeout:g} s"
        except OSError as exc:
            return f"cannot connect: {exc.strerror or exc}"
        try:
            return await open_peer_link(stream, cookie=self._cookie, local_name=self.name, remote_name=peer.name,
                                        timeout=self._handshake_timeout, max_frame_size=self._max_frame_size,
                                        purpose=Purpose.PEER, max_message_size=self._max_message_size)
        except HandshakeFailed as exc:
            return exc.refusal

    def _dial_failed(self, peer: _Peer, why: str | HandshakeRefused) -> None:
        if isinstance(why, HandshakeRefused) and why.kind in (RefusalKind.TIMEOUT, RefusalKind.CLOSED):
            why = f"the handshake did not complete: {peer_text(why.reason)}"  # not refused: unreachable
        if isinstance(why, HandshakeRefused):
            text, peer.refusal = describe_refusal(why), why.kind
            self._log.warning(f"refused {why.kind.value} {peer.name}",
                              "peer link to node '%s' refused: %s", peer_text(peer.name), text)
        else:
            text, peer.refusal = why, None
            self._log.log(logging.INFO, f"unreachable {peer.name}", "node '%s' is unreachable: %s",
                          peer_text(peer.name), text)
        self._set_state(peer, "backoff")
        peer.last_error = text
        self._fail_queued(peer, text)

    async def _use_link(self, peer: _Peer, link: PeerLink) -> None:
        if peer.ever_connected:
            peer.reconnects += 1
        peer.ever_connected = True
        peer.link, peer.last_error, peer.refusal = link, None, None
        self._set_state(peer, "up")
        log.info("peer link to node '%s' up", peer_text(peer.name))
        heard = [trio.current_time()]
        why = "the transport stopped"
        try:
            why = await self._until_link_ends(link, "to", self._watch(heard), self._write_outbound(peer, link),
                                              self._read_replies(peer, link, heard))
        finally:
            peer.link = None
            self._set_state(peer, "connecting")
            peer.last_error = why
            self._count_dropped(peer, peer.outbox.link_lost())  # their first chunks went on this link
            _add_traffic(self._traffic.setdefault(peer.name, LinkStatistics()), link.statistics())
            self._fail_written(peer, f"the link broke before the reply ({why}); the request may have been "
                                     "carried out")
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(link.stream)
        log.info("peer link to node '%s' down: %s", peer_text(peer.name), peer_text(why))

    async def _write_outbound(self, peer: _Peer, link: PeerLink) -> None:
        next_ping = trio.current_time()
        outbox = peer.outbox
        while True:
            with trio.move_on_at(next_ping):
                await outbox.wake.wait()
            # Write after write until nothing waits: a large item goes a chunk per write, with
            # what was queued meanwhile (pings included) in the same write.
            while True:
                if trio.current_time() >= next_ping:
                    outbox.put(_PING_ITEM, always=True)  # rides in this write
                    next_ping = trio.current_time() + self._heartbeat_interval
                write = outbox.next_write()
                if write is None:
                    break
                for tag, _, call_id in write.started:
                    if tag == _CALL:
                        peer.written.add(call_id)
                with trio.fail_after(self._link_timeout):
                    await link.send_frames(write.data, write.frames)

    async def _write_all(self, link: PeerLink, outbox: _Outbox) -> None:
        while (write := outbox.next_write()) is not None:
            with trio.fail_after(self._link_timeout):
                await link.send_frames(write.data, write.frames)

    async def _read_replies(self, peer: _Peer, link: PeerLink, heard: list[float]) -> None:
        while True:
            message = await link.receive()
            heard[0] = trio.current_time()
            for item in _items(message):
                match item:
                    case [str(_REPLY), int(call_id), bool(ok), value]:
                        waiter = peer.calls.get(call_id)
                        if waiter is not None:
                            peer.written.discard(call_id)
                            waiter.resolve(Replied(value) if ok else RemoteFailure(peer.name, waiter.method,
                                                                                   str(value)))
                    case [str(_PONG)]:
                        pass
                    case _:
                        raise _ProtocolError(f"unexpected item on an outbound link: {item!r:.80}")

    async def _watch(self, heard: list[float]) -> str:
        """Returns (ending the link) once nothing arrived on it for `link_timeout`."""
        while True:
            deadline = heard[0] + self._link_timeout
            if trio.current_time() >= deadline:
                return f"nothing received for {self._link_timeout:g} s"
            await trio.sleep_until(deadline)

    async def _until_link_ends(self, link: PeerLink, direction: str, *tasks: Awaitable[Any]) -> str:
        """Run a link's tasks until the first one ends; why it ended. A protocol error is logged
        and told to the peer before the link closes."""
        ended: list[str | _ProtocolError] = []

        async def guard(task: Awaitable[Any]) -> None:
            try:
                result = await task
                ended.append(result if isinstance(result, str) else "closed")
            except (FrameTooLarge, MessageTooLarge) as exc:
                ended.append(_Oversized(exc))
            except (PeerClosed, PeerWireError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                ended.append(str(exc) or type(exc).__name__)
            except trio.TooSlowError:
                ended.append(f"a write took longer than {self._link_timeout:g} s")
            except _ProtocolError as exc:
                ended.append(exc)
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            for task in tasks:
                nursery.start_soon(guard, task)
        why = ended[0] if ended else "closed"
        if isinstance(why, _Oversized):
            self._log.warning(f"oversized {link.peer_name}", "peer link %s node '%s' closed: %s", direction,
                              peer_text(link.peer_name), why)
            return str(why)
        if isinstance(why, _ProtocolError):
            self._log.warning(f"protocol {link.peer_name}", "peer link %s node '%s' aborted: %s", direction,
                              peer_text(link.peer_name), peer_text(why))
            with trio.CancelScope(shield=True):
                await link.abort(str(why))
            return f"protocol error: {why}"
        return why

    def _fail_queued(self, peer: _Peer, reason: str) -> None:
        """Everything still in the outbox is given up: Raft batches and casts counted, calls answered."""
        items = peer.outbox.take_all()
        self._count_dropped(peer, items)
        for tag, _, call_id in items:
            if tag == _CALL and (waiter := peer.calls.get(call_id)) is not None:
                waiter.resolve(PeerUnreachable(peer.name, reason, peer.refusal))

    @staticmethod
    def _count_dropped(peer: _Peer, items: list[_Item]) -> None:
        for tag, _, _ in items:
            if tag == _RAFT:
                peer.raft_batches_dropped += 1
            elif tag == _CAST:
                peer.casts_dropped += 1

    def _fail_written(self, peer: _Peer, reason: str) -> None:
        for call_id in peer.written:
            if (waiter := peer.calls.get(call_id)) is not None:
                waiter.resolve(PeerUnreachable(peer.name, reason, maybe_delivered=True))
        peer.written.clear()

    # ------------------------------------------------------------------ inbound: links other nodes dialled

    async def serve_inbound(self, link: PeerLink) -> None:
        """Serve one authenticated link a peer dialled (the peer port's PEER handler) until it ends."""
        link.limit_messages(self._max_message_size)
        links = self._inbound.setdefault(link.peer_name, set())
        links.add(link)
        replies = self._new_outbox(math.inf, math.inf)  # bounded by max_calls_in_progress: one reply per call
        heard = [trio.current_time()]
        in_progress = [0]
        try:
            async with trio.open_nursery() as handlers:
                why = await self._until_link_ends(link, "from", self._watch(heard),
                                                  self._write_replies(link, replies),
                                                  self._read_inbound(link, replies, heard, in_progress, handlers))
                handlers.cancel_scope.cancel()  # their replies have no link to go by
            log.debug("peer link from node '%s' ended: %s", peer_text(link.peer_name), peer_text(why))
        finally:
            links.discard(link)
            if not links:
                del self._inbound[link.peer_name]
            _add_traffic(self._traffic.setdefault(link.peer_name, LinkStatistics()), link.statistics())

    async def _write_replies(self, link: PeerLink, replies: _Outbox) -> None:
        while True:
            await replies.wake.wait()
            await self._write_all(link, replies)

    async def _read_inbound(self, link: PeerLink, replies: _Outbox, heard: list[float], in_progress: list[int],
                            nursery: trio.Nursery) -> None:
        src = link.peer_name
        while True:
            message = await link.receive()
            heard[0] = trio.current_time()
            for item in _items(message):
                match item:
                    case [str(_RAFT), wire]:
                        self._deliver_raft(_raft_batch(wire, src, self.name))
                    case [str(_CAST), str(kind), payload]:
                        self._dispatch_cast(src, kind, payload)
                    case [str(_CALL), int(call_id), str(method), args]:
                        handler = self._call_handlers.get(method)
                        if handler is None:
                            replies.put(_error_reply(call_id, f"node '{self.name}' has no handler for '{method}'"))
                        elif in_progress[0] >= self._max_calls_in_progress:
                            replies.put(_error_reply(call_id, f"node '{self.name}' is busy: "
                                                              f"{in_progress[0]} calls in progress"))
                        else:
                            in_progress[0] += 1
                            nursery.start_soon(self._answer, handler, src, call_id, method, args, replies,
                                               in_progress)
                    case [str(_PING)]:
                        replies.put(_PONG_ITEM)
                    case _:
                        raise _ProtocolError(f"unexpected item on an inbound link: {item!r:.80}")

    def _dispatch_cast(self, src: str, kind: str, payload: Any) -> None:
        handler = self._cast_handlers.get(kind)
        if handler is None:
            self._log.warning(f"cast-kind {src}", "node '%s' sent a cast of unknown kind '%s'; ignored",
                              peer_text(src), peer_text(kind))
            return
        try:
            handler(src, payload)
        except Exception:
            # One bad cast must not cut the link that carries the others (and Raft).
            log.exception("cast handler for '%s' from node '%s' failed", peer_text(kind), peer_text(src))

    async def _answer(self, handler: CallHandler, src: str, call_id: int, method: str, args: Any,
                      replies: _Outbox, in_progress: list[int]) -> None:
        try:
            try:
                result = await handler(src, args)
            except Exception as exc:
                log.debug("call '%s' from node '%s' failed", peer_text(method), peer_text(src), exc_info=True)
                replies.put(_error_reply(call_id, f"{type(exc).__name__}: {exc}"))
                return
            try:
                item = _reply(call_id, True, result)
            except (TypeError, ValueError, OverflowError) as exc:
                replies.put(_error_reply(call_id, f"the reply could not be encoded: {exc}"))
                return
            if len(item[1]) > self._max_item_bytes:
                item = _error_reply(call_id, f"the reply of {len(item[1])} bytes exceeds the peer message limit")
            replies.put(item)
        finally:
            in_progress[0] -= 1

    def _deliver_raft(self, batch: PeerBatch) -> None:
        try:
            self._received_send.send_nowait(batch)
        except trio.WouldBlock:
            self._raft_received_dropped += 1  # the driver is behind: Raft retries


def _reply(call_id: int, ok: bool, value: Any) -> _Item:
    return (_REPLY, _pack([_REPLY, call_id, ok, value]), 0)


def _error_reply(call_id: int, text: str) -> _Item:
    # Bounded: an exception's text may be anything, and a reply beyond the frame limit would cut the link.
    return _reply(call_id, False, text if len(text) <= ERROR_TEXT_MAX else text[:ERROR_TEXT_MAX] + "...")


_PING_ITEM: Final = (_PING, _pack([_PING]), 0)
_PONG_ITEM: Final = (_PONG, _pack([_PONG]), 0)


def _raft_items(batch: PeerBatch, chunk_size: int) -> list[bytes]:
    """`batch` encoded as one item, or, when it is large and holds several messages, as one item
    for its small messages and one for each large one (a snapshot): the others need not wait
    for the snapshot's chunks. Raft takes messages in any order."""
    packed = _pack([_RAFT, batch.to_wire()])
    if len(packed) <= chunk_size or len(batch.messages) < 2:
        return [packed]
    small, large = [], []
    for message in batch.messages:
        alone = _pack([_RAFT, PeerBatch(batch.src, batch.dst, batch.incarnation, (message,)).to_wire()])
        if len(alone) > chunk_size:
            large.append(alone)
        else:
            small.append(message)
    if not large:
        return [packed]
    rest = [_pack([_RAFT, PeerBatch(batch.src, batch.dst, batch.incarnation, tuple(small)).to_wire()])] if small else []
    return rest + large


def _items(message: Any) -> list[Any]:
    if not isinstance(message, list):
        raise _ProtocolError(f"a frame that is not a list of items: {message!r:.80}")
    return message


def _raft_batch(wire: Any, src: str, dst: str) -> PeerBatch:
    """Decode a Raft batch, refusing one that claims another sender or another receiver: a peer
    speaks only for itself (the handshake proved its name, not anyone else's)."""
    try:
        batch = PeerBatch.from_wire(wire)
    except Exception as exc:  # a malformed batch raises whatever unpacking it hits
        raise _ProtocolError(f"malformed Raft batch: {type(exc).__name__}: {exc}") from None
    if batch.src != src or batch.dst != dst:
        raise _ProtocolError(f"a Raft batch from '{batch.src}' to '{batch.dst}' on the link from '{src}'")
    return batch


def tcp_dial(host: str, port: int) -> Dial:
    """A `Dial` to a fixed address."""

    async def dial(local_address: str | None) -> trio.abc.Stream:
        return await trio.open_tcp_stream(host, port, local_address=local_address)

    return dial
