"""The peer wire: framing, the mutual cookie handshake, peer links and request/reply calls.

Cluster peers and the `leveretctl` control client speak this on the same
port. A frame is a 4-byte big-endian length followed by that many bytes of
msgpack. Frames are bounded: while the peer is unauthenticated to
HANDSHAKE_FRAME_MAX (a stranger cannot make us buffer much), afterwards to the
link's `max_frame_size`.

Handshake (both sides prove knowledge of the shared cookie; the cookie itself
never crosses the wire). C connects to A:

    C -> A  hello      {version, purpose, name: C, to: A or None, nonce: Nc}
    A -> C  challenge  {version, name: A, nonce: Na}
    C -> A  proof      {mac: HMAC(cookie, transcript("connector", purpose, C, A, Nc, Na))}
    A -> C  welcome    {mac: HMAC(cookie, transcript("acceptor",  purpose, C, A, Nc, Na))}

Either side answers anything wrong with `refused {reason, kind}` and closes;
`kind` (a `RefusalKind`) lets the other side tell a differing cookie from an
incompatible version without parsing text, so `join_cluster` can say "the
cookie differs". Fresh nonces from both sides defeat replay; the role inside
the transcript stops a proof from being reflected back as the other side's;
and, as in Erlang distribution, the connector proves first, so a stranger
learns nothing about the cookie from the acceptor. The transcript is
msgpack-encoded, so its fields cannot be shifted into each other; the purpose
is inside it, so a proof made for a control link cannot open a peer link.
The handshake is a pure state machine (`ConnectorHandshake`,
`AcceptorHandshake`: frame in, reply frames and maybe an outcome out); the
trio functions below only move bytes.

`purpose` says what the connector is: a `leveretctl` control client
(`Purpose.CONTROL`) or a cluster node (`Purpose.PEER`). The acceptor is told
which purposes it serves and refuses the others before anyone proves
anything; `cluster.peerport` hands each authenticated link to the handler of
its purpose. `version` is checked first of all: a node of another protocol
version is refused with both versions named.

After the handshake every frame is an envelope:
    ["m", obj]                      a message (`PeerLink.send` / `receive`)
    ["q", id, method, args]         a request (`call`), delivered as `Request`
    ["r", id, ok, value]            its reply, matched to the waiting caller by id
    ["x", reason]                   the sender found a protocol error and closes the link
                                    (`receive` / `call` raise ProtocolViolation with the reason)
    ["c", id, total, bytes]         a chunk of a larger envelope (below)
Replies are routed by whichever task is reading the link at the time, so a
`call` works with or without a separate receive loop.

Chunks. One huge frame would hold up everything behind it on the link, so a
sender may cut an envelope's encoding (`total` bytes) into chunk frames of
message `id` (`ChunkWriter`, `CHUNK_SIZE` each) and write other frames between
them; the receiver appends the pieces of each id in arrival order and, once it
holds `total` bytes, decodes them and routes the envelope as if it had come in
one frame (`Reassembler`). Nothing of a message is delivered before it is
whole, and what a link was reassembling is dropped with the link. The receiver
bounds the bytes of unfinished messages by the link's `max_message_size`,
checked on the announced `total` before anything is buffered, and closes a
link that would exceed it as it closes one announcing an oversized frame
(`MessageTooLarge`). A control link's bound is its frame limit: chunks let
nobody make a node buffer more than before; `cluster.transport` chunks on
peer links (`CHUNK_SIZE`, up to `DEFAULT_MESSAGE_MAX`).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import secrets
import struct
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Final

import msgpack
import trio

# 2: the hello names its purpose, refusals carry a kind, the "x" envelope.
# 3: large envelopes travel as "c" chunk frames, reassembled by the receiver.
PROTOCOL_VERSION: Final = 3
HANDSHAKE_FRAME_MAX: Final = 64 * 1024
DEFAULT_FRAME_MAX: Final = 64 * 1024 * 1024
# A chunk's share of an envelope: what small traffic waits behind at most.
CHUNK_SIZE: Final = 256 * 1024
# The largest envelope a peer link reassembles (a queue's snapshot may be this big).
DEFAULT_MESSAGE_MAX: Final = 1024 * 1024 * 1024
NONCE_LEN: Final = 32
AUTHENTICATION_FAILED: Final = "authentication failed"

_HEADER = struct.Struct(">I")
_TRANSCRIPT_LABEL = "leveret-peer-v2"


class Purpose(str, Enum):
    """What a connector is, as its hello says."""

    CONTROL = "control"  # leveretctl: requests and replies, one connection per command
    PEER = "peer"  # another cluster node: `cluster.transport` traffic


class RefusalKind(str, Enum):
    """Why a handshake failed, in a form the other side can act on."""

    COOKIE = "cookie"  # the cookies differ (one side could not prove it)
    VERSION = "version"  # another peer protocol version
    PURPOSE = "purpose"  # this node does not serve that kind of connection
    NAME = "name"  # the connector wanted another node
    PROTOCOL = "protocol"  # a malformed or unexpected frame
    TIMEOUT = "timeout"
    CLOSED = "closed"  # the connection closed or broke during the handshake


class PeerWireError(Exception):
    """The peer broke the wire protocol; the link is unusable."""


class FrameTooLarge(PeerWireError):
    pass


class MalformedFrame(PeerWireError):
    pass


class MessageTooLarge(PeerWireError):
    """The peer announced a chunked message beyond what this link reassembles."""


class PeerClosed(Exception):
    """The peer closed the connection."""


class HandshakeFailed(Exception):
    """`connect_peer` could not authenticate; `.refusal` says why."""

    def __init__(self, refusal: HandshakeRefused) -> None:
        super().__init__(refusal.reason)
        self.refusal = refusal


class RemoteError(Exception):
    """A `call` whose handler failed on the remote side; the message is the remote's text."""


class ProtocolViolation(PeerWireError):
    """The peer said we broke the protocol (an "x" envelope) and closed the link."""


# --------------------------------------------------------------------------
# Framing (pure).


def encode_frame(obj: Any, *, max_size: int = DEFAULT_FRAME_MAX) -> bytes:
    payload = msgpack.packb(obj, use_bin_type=True)
    if len(payload) > max_size:
        raise FrameTooLarge(f"frame of {len(payload)} bytes exceeds the limit of {max_size}")
    return _HEADER.pack(len(payload)) + payload


class NeedData:
    """Sentinel: `FrameDecoder.next_frame` needs more bytes."""


NEED_DATA: Final = NeedData()


class FrameDecoder:
    """Bytes in, decoded frames out, one at a time so the size limit can change between frames."""

    __slots__ = ("_buffer", "max_size")

    def __init__(self, max_size: int) -> None:
        self._buffer = bytearray()
        self.max_size = max_size

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_frame(self) -> Any:
        """The next decoded frame, or NEED_DATA. Raises FrameTooLarge / MalformedFrame."""
        if len(self._buffer) < _HEADER.size:
            return NEED_DATA
        (length,) = _HEADER.unpack_from(self._buffer)
        # Refuse on the header, before buffering the body.
        if length > self.max_size:
            raise FrameTooLarge(f"peer sent a frame of {length} bytes, the limit is {self.max_size}")
        end = _HEADER.size + length
        if len(self._buffer) < end:
            return NEED_DATA
        payload = bytes(self._buffer[_HEADER.size : end])
        del self._buffer[:end]
        try:
            return msgpack.unpackb(payload, raw=False, strict_map_key=False)
        except Exception as exc:  # msgpack raises several unrelated types for bad input
            raise MalformedFrame(f"undecodable frame: {exc}") from None

    @property
    def buffered(self) -> int:
        return len(self._buffer)


_CHUNK: Final = "c"
# msgpack of a two-element array and the string "m": what precedes a message's own encoding.
_PACKED_MESSAGE_HEAD: Final = b"\x92" + msgpack.packb("m")
_ARRAY_HEADER: Final = msgpack.Packer().pack_array_header


def message_payload(packed: bytes) -> bytes:
    """The encoding of the envelope ["m", obj] for an `obj` the caller msgpack-encoded."""
    return _PACKED_MESSAGE_HEAD + packed


def frame_of(payload: bytes) -> bytes:
    """`payload` (an envelope's encoding) as one frame; the caller has checked its size."""
    return _HEADER.pack(len(payload)) + payload


def message_frame_of_items(items: list[bytes], size: int) -> bytes:
    """One frame of the message [item, ...] from items the caller encoded (`size`: their total
    length), built with a single copy: the hot path of a peer link's writer."""
    array = _ARRAY_HEADER(len(items))
    return b"".join([_HEADER.pack(len(_PACKED_MESSAGE_HEAD) + len(array) + size), _PACKED_MESSAGE_HEAD, array,
                     *items])


class ChunkWriter:
    """One envelope's encoding cut into chunk frames of message `message_id`, handed out one at
    a time so that the caller can write other frames between them."""

    __slots__ = ("_payload", "_id", "_chunk_size", "_offset")

    def __init__(self, payload: bytes, message_id: int, chunk_size: int = CHUNK_SIZE) -> None:
        assert payload and chunk_size > 0
        self._payload = memoryview(payload)
        self._id = message_id
        self._chunk_size = chunk_size
        self._offset = 0

    @property
    def done(self) -> bool:
        return self._offset >= len(self._payload)

    @property
    def total(self) -> int:
        return len(self._payload)

    def next_frame(self) -> bytes:
        assert not self.done
        end = self._offset + self._chunk_size
        piece = self._payload[self._offset : end]
        self._offset = min(end, len(self._payload))
        return frame_of(msgpack.packb([_CHUNK, self._id, len(self._payload), piece], use_bin_type=True))


class Reassembler:
    """Chunk frames in, whole envelope encodings out. Holds at most `limit` bytes of unfinished
    messages, counted on their announced totals, so that a peer is refused on the first chunk
    of a message that would not fit rather than after sending most of it."""

    __slots__ = ("limit", "_parts", "_reserved")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._parts: dict[int, tuple[int, bytearray]] = {}
        self._reserved = 0

    def add(self, message_id: int, total: int, data: bytes) -> bytearray | None:
        """The whole encoding once `data` completes message `message_id`, else None. Raises
        MessageTooLarge / MalformedFrame; after either the reassembler must not be used again."""
        part = self._parts.get(message_id)
        if part is None:
            if total <= 0:
                raise MalformedFrame(f"chunked message {message_id} announces {total} bytes")
            if self._reserved + total > self.limit:
                held = f" ({self._reserved} bytes of other messages unfinished)" if self._reserved else ""
                raise MessageTooLarge(f"peer sent a chunked message of {total} bytes{held}, "
                                      f"the limit is {self.limit}")
            part = (total, bytearray())
            self._parts[message_id] = part
            self._reserved += total
        elif part[0] != total:
            raise MalformedFrame(f"chunked message {message_id} announced {part[0]} bytes, then {total}")
        buffer = part[1]
        if not data or len(buffer) + len(data) > total:
            raise MalformedFrame(f"a chunk of {len(data)} bytes does not fit message {message_id} "
                                 f"({len(buffer)} of {total} bytes received)")
        buffer += data
        if len(buffer) < total:
            return None
        del self._parts[message_id]
        self._reserved -= total
        return buffer

    def clear(self) -> None:
        self._parts.clear()
        self._reserved = 0

    @property
    def buffered(self) -> int:
        """Bytes held of unfinished messages."""
        return sum(len(buffer) for _, buffer in self._parts.values())

    @property
    def unfinished(self) -> int:
        return len(self._parts)


# --------------------------------------------------------------------------
# Handshake (pure).


@dataclass(frozen=True, slots=True)
class PeerAuthenticated:
    peer_name: str
    purpose: Purpose = Purpose.CONTROL


@dataclass(frozen=True, slots=True)
class HandshakeRefused:
    """A failed handshake, for the caller to log. `by_peer`: the other side refused us.
    `reason` and `peer_name` may come from the peer: log them through `logtext.peer_text`."""

    reason: str
    peer_name: str | None = None
    by_peer: bool = False
    peer_address: str | None = None
    kind: RefusalKind = RefusalKind.PROTOCOL

    @property
    def cookie_differs(self) -> bool:
        """The two sides hold different cookies (told by the acceptor, or found by the connector)."""
        return self.kind is RefusalKind.COOKIE


Outcome = PeerAuthenticated | HandshakeRefused
Frame = dict[str, Any]


def _transcript_mac(cookie: str, role: str, purpose: Purpose, connector: str, acceptor: str, nc: bytes,
                    na: bytes) -> bytes:
    transcript = msgpack.packb([_TRANSCRIPT_LABEL, role, purpose.value, connector, acceptor, nc, na],
                               use_bin_type=True)
    return hmac.new(cookie.encode("utf-8"), transcript, hashlib.sha256).digest()


def _refused_frame(reason: str, kind: RefusalKind) -> Frame:
    return {"type": "refused", "reason": reason, "kind": kind.value}


def _refusal_kind(value: Any) -> RefusalKind:
    try:
        return RefusalKind(value)
    except ValueError:  # an older or odd peer: nothing to act on
        return RefusalKind.PROTOCOL


def _field(frame: Any, name: str, kind: type) -> Any:
    value = frame.get(name) if isinstance(frame, dict) else None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MalformedFrame(f"handshake frame without a valid '{name}'")
    return value


class _Handshake:
    """What both sides share: the refusal paths, the greeting checks and the transcript MACs."""

    _connector: bool  # which end of the transcript this side is

    def __init__(self, cookie: str, local_name: str, nonce: bytes) -> None:
        assert cookie, "an empty cookie authenticates nobody"
        assert len(nonce) == NONCE_LEN
        self._cookie = cookie
        self._local_name = local_name
        self._nonce = nonce
        self._peer_name: str | None = None
        self._peer_nonce = b""
        self._purpose = Purpose.CONTROL
        self.outcome: Outcome | None = None

    @property
    def peer_name(self) -> str | None:
        """The name the peer announced, once it has."""
        return self._peer_name

    def receive(self, frame: Any) -> tuple[list[Frame], Outcome | None]:
        assert self.outcome is None, "the handshake is already over"
        try:
            if isinstance(frame, dict) and frame.get("type") == "refused":
                reason = frame.get("reason")
                return self._finish([], HandshakeRefused(str(reason), self._peer_name, by_peer=True,
                                                         kind=_refusal_kind(frame.get("kind"))))
            return self._step(frame)
        except MalformedFrame as exc:
            return self._refuse(f"malformed handshake frame ({exc})", RefusalKind.PROTOCOL)

    def reject(self, reason: str) -> tuple[list[Frame], HandshakeRefused]:
        """End the handshake because of something the shell found (an undecodable or oversized frame)."""
        assert self.outcome is None, "the handshake is already over"
        replies, outcome = self._refuse(reason, RefusalKind.PROTOCOL)
        assert isinstance(outcome, HandshakeRefused)
        return replies, outcome

    def _step(self, frame: Any) -> tuple[list[Frame], Outcome | None]:
        raise NotImplementedError

    def _finish(self, replies: list[Frame], outcome: Outcome | None) -> tuple[list[Frame], Outcome | None]:
        self.outcome = outcome
        return replies, outcome

    def _refuse(self, reason: str, kind: RefusalKind, tell_peer: str | None = None
                ) -> tuple[list[Frame], Outcome | None]:
        return self._finish([_refused_frame(tell_peer or reason, kind)],
                            HandshakeRefused(reason, self._peer_name, kind=kind))

    def _take_greeting(self, frame: Any) -> str | None:
        """Read the peer's hello or challenge: its version, name and nonce. A reason to refuse, or None."""
        version = _field(frame, "version", int)
        if version != PROTOCOL_VERSION:
            # The name first, if it is one, so that the refusal can say who it was.
            if isinstance(frame.get("name"), str):
                self._peer_name = frame["name"]
            return f"unsupported peer protocol version {version} (this node speaks {PROTOCOL_VERSION})"
        self._peer_name = _field(frame, "name", str)
        self._peer_nonce = _field(frame, "nonce", bytes)
        if len(self._peer_nonce) != NONCE_LEN:
            raise MalformedFrame("nonce of the wrong length")
        return None

    def _mac(self, role: str) -> bytes:
        """The MAC `role` ("connector" or "acceptor") sends; names and nonces in connector, acceptor order."""
        assert self._peer_name is not None
        if self._connector:
            return _transcript_mac(self._cookie, role, self._purpose, self._local_name, self._peer_name,
                                   self._nonce, self._peer_nonce)
        return _transcript_mac(self._cookie, role, self._purpose, self._peer_name, self._local_name,
                               self._peer_nonce, self._nonce)


class ConnectorHandshake(_Handshake):
    """The connecting side. Send `start()`, then feed every frame received to `receive`."""

    _connector = True

    def __init__(self, *, cookie: str, local_name: str, remote_name: str | None, nonce: bytes,
                 purpose: Purpose = Purpose.CONTROL) -> None:
        super().__init__(cookie, local_name, nonce)
        self._expected = remote_name
        self._purpose = purpose
        self._state = "start"

    def start(self) -> list[Frame]:
        assert self._state == "start"
        self._state = "challenge"
        hello = {"type": "hello", "version": PROTOCOL_VERSION, "purpose": self._purpose.value,
                 "name": self._local_name, "to": self._expected}
        hello["nonce"] = self._nonce
        return [hello]

    def _step(self, frame: Any) -> tuple[list[Frame], Outcome | None]:
        kind = _field(frame, "type", str)
        if self._state == "challenge" and kind == "challenge":
            if problem := self._take_greeting(frame):
                return self._refuse(problem, RefusalKind.VERSION)
            if self._expected is not None and self._peer_name != self._expected:
                return self._refuse(f"connected to node '{self._peer_name}', expected '{self._expected}'",
                                    RefusalKind.NAME)
            mac = self._mac("connector")
            self._state = "welcome"
            return [{"type": "proof", "mac": mac}], None
        if self._state == "welcome" and kind == "welcome":
            assert self._peer_name is not None
            if not hmac.compare_digest(_field(frame, "mac", bytes), self._mac("acceptor")):
                return self._refuse(f"{AUTHENTICATION_FAILED}: node '{self._peer_name}' could not prove the cookie",
                                    RefusalKind.COOKIE, tell_peer=AUTHENTICATION_FAILED)
            return self._finish([], PeerAuthenticated(self._peer_name, self._purpose))
        raise MalformedFrame(f"unexpected '{kind}' while waiting for {self._state}")


class AcceptorHandshake(_Handshake):
    """The accepting side: feed every frame received to `receive`."""

    _connector = False

    def __init__(self, *, cookie: str, local_name: str, nonce: bytes,
                 purposes: frozenset[Purpose] = frozenset({Purpose.CONTROL})) -> None:
        super().__init__(cookie, local_name, nonce)
        self._purposes = purposes
        self._state = "hello"

    @property
    def purpose(self) -> Purpose:
        """What the connector said it is (meaningful once its hello was accepted)."""
        return self._purpose

    def _step(self, frame: Any) -> tuple[list[Frame], Outcome | None]:
        kind = _field(frame, "type", str)
        if self._state == "hello" and kind == "hello":
            if problem := self._take_greeting(frame):
                return self._refuse(problem, RefusalKind.VERSION)
            purpose = _field(frame, "purpose", str)
            if purpose not in {p.value for p in self._purposes}:
                known = ", ".join(sorted(p.value for p in self._purposes))
                return self._refuse(f"unknown or unserved connection purpose '{purpose}' "
                                    f"(this node accepts: {known})", RefusalKind.PURPOSE)
            self._purpose = Purpose(purpose)
            wanted = frame.get("to")
            if wanted is not None and wanted != self._local_name:
                return self._refuse(f"peer '{self._peer_name}' wanted node '{wanted}', this is '{self._local_name}'",
                                    RefusalKind.NAME)
            self._state = "proof"
            challenge = {"type": "challenge", "version": PROTOCOL_VERSION, "name": self._local_name}
            challenge["nonce"] = self._nonce
            return [challenge], None
        if self._state == "proof" and kind == "proof":
            assert self._peer_name is not None
            if not hmac.compare_digest(_field(frame, "mac", bytes), self._mac("connector")):
                return self._refuse(AUTHENTICATION_FAILED, RefusalKind.COOKIE)
            welcome = {"type": "welcome", "mac": self._mac("acceptor")}
            return self._finish([welcome], PeerAuthenticated(self._peer_name, self._purpose))
        raise MalformedFrame(f"unexpected '{kind}' while waiting for {self._state}")


# --------------------------------------------------------------------------
# Links (trio shell).


@dataclass(frozen=True, slots=True)
class Request:
    """A `call` from the peer; answer it with `PeerLink.reply` or `PeerLink.reply_error`."""

    id: int
    method: str
    args: Any


@dataclass(slots=True)
class LinkStatistics:
    frames_sent: int = 0
    frames_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    calls_waiting: int = 0
    buffered_messages: int = 0
    bytes_reassembling: int = 0  # received chunks of messages not yet whole


_ROUTED = object()  # `_route` consumed the envelope (a reply): nothing for the reader


@dataclass(eq=False)
class PeerLink:
    """An authenticated connection to one peer.

    `send` may be called from several tasks (sends are serialised). Reading is
    done by whoever calls `receive` or is waiting in `call`; replies go to
    their callers, messages and requests to `receive`. A send that is cancelled
    or fails closes the link, since part of a frame may have gone out.
    Chunked messages are reassembled while reading, up to `max_message_size`
    bytes unfinished (by default the frame limit: see the module docstring).
    """

    stream: trio.abc.HalfCloseableStream | trio.abc.Stream
    peer_name: str
    local_name: str
    max_frame_size: int = DEFAULT_FRAME_MAX
    purpose: Purpose = Purpose.CONTROL
    _decoder: FrameDecoder = field(default_factory=lambda: FrameDecoder(DEFAULT_FRAME_MAX))
    _send_lock: trio.Lock = field(default_factory=trio.Lock)
    _read_lock: trio.Lock = field(default_factory=trio.Lock)
    _inbox: deque[Any] = field(default_factory=deque)
    _pending: set[int] = field(default_factory=set)
    _replies: dict[int, tuple[bool, Any]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _stats: LinkStatistics = field(default_factory=LinkStatistics)
    _closed: bool = False
    max_message_size: int | None = None  # None: the frame limit
    _reassembler: Reassembler = field(init=False)

    def __post_init__(self) -> None:
        self._decoder.max_size = self.max_frame_size
        self._reassembler = Reassembler(self.max_message_size or self.max_frame_size)

    def limit_messages(self, max_message_size: int) -> None:
        """Reassemble chunked messages of up to `max_message_size` bytes (unfinished ones together)."""
        self.max_message_size = self._reassembler.limit = max_message_size

    async def send(self, obj: Any) -> None:
        await self._send_envelope(["m", obj])

    async def send_frames(self, data: bytes, frames: int) -> None:
        """`frames` whole frames the caller built (`frame_of`, `message_frame_of_items`,
        `ChunkWriter`: messages encoded from pieces encoded earlier, chunks), in one write."""
        await self._write(data, frames)

    async def abort(self, reason: str) -> None:
        """Tell the peer it broke the protocol (best effort), then close the link."""
        try:
            with trio.move_on_after(1):
                await self._send_envelope(["x", reason[:1000]])
        except (trio.BrokenResourceError, trio.ClosedResourceError, FrameTooLarge):
            pass
        finally:
            self._closed = True
            self._reassembler.clear()
            await trio.aclose_forcefully(self.stream)

    async def send_batch(self, objs: Iterable[Any]) -> None:
        """Several messages in one write: one syscall instead of one per message."""
        frames = [encode_frame(["m", obj], max_size=self.max_frame_size) for obj in objs]
        if not frames:
            return
        await self._write(b"".join(frames), len(frames))

    async def receive(self) -> Any:
        """The next message (or `Request`) from the peer. Raises PeerClosed at end of stream."""
        while True:
            if self._inbox:
                await trio.lowlevel.checkpoint()
                if self._inbox:
                    return self._inbox.popleft()
                continue
            async with self._read_lock:
                if self._inbox:
                    return self._inbox.popleft()
                item = self._route(await self._read_envelope())
            if item is not _ROUTED:
                return item

    async def call(self, method: str, args: Mapping[str, Any] | None = None) -> Any:
        request_id = next(self._ids)
        self._pending.add(request_id)
        try:
            await self._send_envelope(["q", request_id, method, dict(args or {})])
            while request_id not in self._replies:
                # trio.Lock is fair: a reader that routed our reply hands the lock on to us next.
                async with self._read_lock:
                    if request_id in self._replies:
                        break
                    item = self._route(await self._read_envelope())
                    if item is not _ROUTED:
                        self._inbox.append(item)
            ok, value = self._replies.pop(request_id)
        finally:
            self._pending.discard(request_id)
            self._replies.pop(request_id, None)
        if not ok:
            raise RemoteError(value)
        return value

    async def reply(self, request: Request, result: Any) -> None:
        await self._send_envelope(["r", request.id, True, result])

    async def reply_error(self, request: Request, message: str) -> None:
        await self._send_envelope(["r", request.id, False, message])

    async def aclose(self) -> None:
        self._closed = True
        self._reassembler.clear()
        await self.stream.aclose()

    def statistics(self) -> LinkStatistics:
        return replace(self._stats, calls_waiting=len(self._pending), buffered_messages=len(self._inbox),
                       bytes_reassembling=self._reassembler.buffered)

    async def _send_envelope(self, envelope: list[Any]) -> None:
        await self._write(encode_frame(envelope, max_size=self.max_frame_size), 1)

    async def _write(self, data: bytes, frames: int) -> None:
        async with self._send_lock:
            try:
                await self.stream.send_all(data)
            except BaseException:
                # A write cut short (cancelled, or the peer went away) may have sent part of a
                # frame; nothing after it could be framed correctly, so the link is over.
                self._closed = True
                await trio.aclose_forcefully(self.stream)
                raise
        self._stats.frames_sent += frames
        self._stats.bytes_sent += len(data)

    async def _read_envelope(self) -> Any:
        """The next whole envelope: a frame's, or the last of a chunked message's."""
        while True:
            try:
                frame = self._decoder.next_frame()
                if frame is not NEED_DATA:
                    self._stats.frames_received += 1
                    if frame.__class__ is list and frame and frame[0] == _CHUNK:
                        frame = self._reassemble(frame)
                        if frame is NEED_DATA:
                            continue
                    return frame
            except PeerWireError:
                self._reassembler.clear()
                await trio.aclose_forcefully(self.stream)
                raise
            if self._closed:
                self._reassembler.clear()
                raise PeerClosed(f"link to '{self.peer_name}' is closed")
            data = await self.stream.receive_some(65536)
            if not data:
                self._reassembler.clear()  # a message cut short is never delivered, nor kept
                raise PeerClosed(f"peer '{self.peer_name}' closed the connection")
            self._stats.bytes_received += len(data)
            self._decoder.feed(data)

    def _reassemble(self, frame: list[Any]) -> Any:
        match frame:
            case [_, int(message_id), int(total), bytes(data)]:
                whole = self._reassembler.add(message_id, total, data)
            case _:
                raise MalformedFrame(f"not a chunk: {frame!r:.80}")
        if whole is None:
            return NEED_DATA
        try:
            envelope = msgpack.unpackb(whole, raw=False, strict_map_key=False)
        except Exception as exc:  # msgpack raises several unrelated types for bad input
            raise MalformedFrame(f"undecodable chunked message: {exc}") from None
        if envelope.__class__ is list and envelope and envelope[0] == _CHUNK:
            raise MalformedFrame("a chunked message that is itself a chunk")
        return envelope

    def _route(self, envelope: Any) -> Any:
        match envelope:
            case ["m", obj]:
                return obj
            case ["q", int(request_id), str(method), args]:
                return Request(request_id, method, args)
            case ["r", int(request_id), bool(ok), value]:
                if request_id in self._pending:
                    self._replies[request_id] = (ok, value)
                # else: the caller was cancelled; drop the late reply.
                return _ROUTED
            case ["x", str(reason)]:
                self._closed = True
                raise ProtocolViolation(f"peer '{self.peer_name}' closed the link: {reason}")
        raise MalformedFrame(f"not a peer envelope: {envelope!r:.80}")


async def call(link: PeerLink, method: str, args: Mapping[str, Any] | None = None) -> Any:
    """Send a request and wait for its reply (raises RemoteError if the handler failed)."""
    return await link.call(method, args)


async def _drive_handshake(
    stream: trio.abc.Stream, machine: _Handshake, decoder: FrameDecoder, first: list[Frame]
) -> Outcome:
    for frame in first:
        await stream.send_all(encode_frame(frame, max_size=HANDSHAKE_FRAME_MAX))
    while True:
        try:
            frame = decoder.next_frame()
        except PeerWireError as exc:
            replies, outcome = machine.reject(f"malformed handshake frame ({exc})")
            for reply in replies:
                await stream.send_all(encode_frame(reply, max_size=HANDSHAKE_FRAME_MAX))
            return outcome
        if frame is NEED_DATA:
            data = await stream.receive_some(HANDSHAKE_FRAME_MAX)
            if not data:
                return HandshakeRefused("connection closed during the handshake", machine.peer_name, by_peer=True,
                                        kind=RefusalKind.CLOSED)
            decoder.feed(data)
            continue
        replies, outcome = machine.receive(frame)
        for reply in replies:
            await stream.send_all(encode_frame(reply, max_size=HANDSHAKE_FRAME_MAX))
        if outcome is not None:
            return outcome


async def _handshake(
    stream: trio.abc.Stream, machine: _Handshake, decoder: FrameDecoder, first: list[Frame], timeout: float
) -> Outcome:
    """Run either side's handshake within `timeout`; the stream is closed unless it authenticated."""
    try:
        with trio.move_on_after(timeout) as scope:
            outcome = await _drive_handshake(stream, machine, decoder, first)
        if scope.cancelled_caught:
            outcome = HandshakeRefused("handshake timed out", machine.peer_name, kind=RefusalKind.TIMEOUT)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        outcome = HandshakeRefused("connection lost during the handshake", machine.peer_name, by_peer=True,
                                   kind=RefusalKind.CLOSED)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    if isinstance(outcome, HandshakeRefused):
        await trio.aclose_forcefully(stream)
    return outcome


async def open_peer_link(
    stream: trio.abc.Stream,
    *,
    cookie: str,
    local_name: str,
    remote_name: str | None,
    timeout: float = 10.0,
    max_frame_size: int = DEFAULT_FRAME_MAX,
    purpose: Purpose = Purpose.CONTROL,
    max_message_size: int | None = None,
) -> PeerLink:
    """Run the connector side of the handshake on an open stream. Raises HandshakeFailed.
    `max_message_size`: what the link reassembles (default: `DEFAULT_MESSAGE_MAX` on a peer
    link, the frame limit on a control link)."""
    if max_message_size is None and purpose is Purpose.PEER:
        max_message_size = DEFAULT_MESSAGE_MAX
    machine = ConnectorHandshake(
        cookie=cookie, local_name=local_name, remote_name=remote_name, nonce=secrets.token_bytes(NONCE_LEN),
        purpose=purpose,
    )
    decoder = FrameDecoder(HANDSHAKE_FRAME_MAX)
    outcome = await _handshake(stream, machine, decoder, machine.start(), timeout)
    if isinstance(outcome, HandshakeRefused):
        raise HandshakeFailed(outcome)
    return PeerLink(stream, outcome.peer_name, local_name, max_frame_size, purpose, decoder,
                    max_message_size=max_message_size)


async def connect_peer(
    host: str,
    port: int,
    *,
    cookie: str,
    local_name: str,
    remote_name: str | None,
    timeout: float = 10.0,
    max_frame_size: int = DEFAULT_FRAME_MAX,
    purpose: Purpose = Purpose.CONTROL,
) -> PeerLink:
    """Open TCP to a peer and authenticate. Raises OSError (unreachable), trio.TooSlowError
    (no TCP connection within `timeout`) or HandshakeFailed."""
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(host, port)
    return await open_peer_link(
        stream,
        cookie=cookie,
        local_name=local_name,
        remote_name=remote_name,
        timeout=timeout,
        max_frame_size=max_frame_size,
        purpose=purpose,
    )


def address_of(stream: trio.abc.Stream) -> str | None:
    try:
        host, port, *_ = stream.socket.getpeername()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return None
    return f"{host}:{port}"


async def accept_peer(
    stream: trio.abc.Stream,
    *,
    cookie: str,
    local_name: str,
    timeout: float = 10.0,
    max_frame_size: int = DEFAULT_FRAME_MAX,
    purposes: frozenset[Purpose] = frozenset({Purpose.CONTROL}),
    max_message_size: int = DEFAULT_MESSAGE_MAX,
) -> PeerLink | HandshakeRefused:
    """Run the acceptor side for connectors of `purposes` (the link's `purpose` says which
    one came). On refusal the stream is closed and the refusal returned for logging. A peer
    link reassembles chunked messages up to `max_message_size`, a control link none beyond
    its frame limit."""
    machine = AcceptorHandshake(cookie=cookie, local_name=local_name, nonce=secrets.token_bytes(NONCE_LEN),
                                purposes=purposes)
    decoder = FrameDecoder(HANDSHAKE_FRAME_MAX)
    address = address_of(stream)  # read now: the stream is closed on a refusal
    outcome = await _handshake(stream, machine, decoder, [], timeout)
    if isinstance(outcome, HandshakeRefused):
        return replace(outcome, peer_address=address)
    limit = max_message_size if outcome.purpose is Purpose.PEER else None  # control links: frames only
    return PeerLink(stream, outcome.peer_name, local_name, max_frame_size, outcome.purpose, decoder,
                    max_message_size=limit)
