"""The AMQP 0-9-1 server connection as a pure state machine (h11 / h2 style).

Owns: the protocol header, connection.start / start-ok with SASL PLAIN and
AMQPLAIN, tune / tune-ok limits, connection.open with the vhost check, heartbeats,
channel multiplexing (open, close both ways, channel_max), connection.close both
ways, connection.blocked, and turning every protocol error into the reply
RabbitMQ sends (rabbit_reader.erl). Each open channel is a
`broker.amqp.channel.Channel`; the events of both machines are defined and
documented in `broker.amqp.channel` and re-exported here.

The shell (broker.server) drives it:

    conn = Connection(authenticate=..., open_vhost=...)
    events = conn.receive_data(data)      # bytes from the socket; never raises
    events += conn.tick(now)              # at least every second: heartbeats, timeouts
    sock.send_all(conn.data_to_send())    # drain the coalesced output
    if conn.state is ConnectionState.CLOSED: flush, then close the socket
    events = conn.connection_lost()       # when the peer vanished

and the node answers through: `send_method`, `send_content`, `deliver`,
`get_ok`, `can_deliver`, `cancel_consumer`, `confirm`, `reject`, `tx_commit_ok`,
`protocol_error` (a failure found by the node, e.g. 404 on queue.declare),
`close_channel`, `close`, `block` / `unblock`. Calls for a channel that is not
open (closed meanwhile by the client) are ignored and return False / None: the
node must then return any message it tried to deliver to its queue.

States (the legal transitions are `_TRANSITIONS`, the methods accepted on
channel 0 in each state are `_CHANNEL0_METHODS`):

    AWAIT_HEADER -> STARTING -> TUNING -> OPENING -> OPEN -> CLOSING -> CLOSED
                                                        \\______________^

Error handling follows RabbitMQ. Once OPEN (and while OPENING), a soft error on a
channel (reply code not in spec.HARD_ERRORS) sends channel.close; a hard error
sends connection.close and moves to CLOSING, where only connection.close /
close-ok are acted on; close-ok, or the closing timeout (the heartbeat interval,
at most 30 s), moves to CLOSED. Before OPENING, RabbitMQ drops a failing client
without a word (it does not trust it yet), except for refused logins when the
client advertises `authentication_failure_close` and for tune-ok values outside
the server's limits, which get a connection.close first. A malformed frame
(a decoder error) leaves the stream out of sync, so after sending connection.close
the machine goes straight to CLOSED, as RabbitMQ's fatal_frame_error does.
RabbitMQ waits 3 s before answering and dropping a connection whose handshake
failed (a brake on password guessing; rabbit_reader:handle_exception/3); that
delay is the shell's choice: `handshake_failed` says it is due. A wrong protocol
header is refused at once and a handshake timeout needs no brake, as in RabbitMQ.

Heartbeats (rabbit_heartbeat.erl): the server sends a heartbeat frame when it has
sent nothing for half the negotiated interval and gives up on a client silent for
two intervals, closing the socket without a close method. The interval is the
client's tune-ok value, as RabbitMQ takes it (clients put there the negotiated
value: the smaller of both, or the other one when either side says 0). Time only
enters through `tick(now)`; received and sent bytes are noted as "activity since
the last tick", so `receive_data` and `data_to_send` need no clock.
"""

from __future__ import annotations

import enum
import platform
import random
from collections.abc import Callable, Mapping
from typing import Any

from broker.amqp import codec, spec
from broker.amqp.channel import (
    DEFAULT_MAX_MESSAGE_SIZE,
    Acked,
    ChannelClosed,
    ChannelOpened,
    ChannelState,
    ConnectionClosed,
    ConnectionOpened,
    ConsumerCancelled,
    Event,
    MethodReceived,
    ProtocolError,
    PublishBuffered,
    PublishReceived,
    QosChanged,
    Rejected,
    TxCommitted,
    clip_reply_text,
)
from broker.amqp.channel import Channel as Channel

__all__ = [
    "Acked",
    "Channel",
    "ChannelClosed",
    "ChannelOpened",
    "Connection",
    "ConnectionClosed",
    "ConnectionOpened",
    "ConnectionState",
    "ConsumerCancelled",
    "Event",
    "MethodReceived",
    "ProtocolError",
    "PublishBuffered",
    "PublishReceived",
    "QosChanged",
    "Rejected",
    "SERVER_CAPABILITIES",
    "TxCommitted",
]

# What RabbitMQ announces in connection.start (rabbit_reader:server_capabilities/1).
SERVER_CAPABILITIES: dict[str, bool] = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "consumer_priorities": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
    "direct_reply_to": True,
}
MECHANISMS = ("PLAIN", "AMQPLAIN")
# Mechanisms RabbitMQ knows but this server does not offer: "invalid", not "unknown".
_KNOWN_MECHANISMS = frozenset({"PLAIN", "AMQPLAIN", "EXTERNAL", "ANONYMOUS", "RABBIT-CR-DEMO"})

# rabbit_reader: ?NORMAL_TIMEOUT before tune, ?CLOSING_TIMEOUT cap for the close handshake.
_NORMAL_TIMEOUT = 3.0
_CLOSING_TIMEOUT = 30.0
_UNLIMITED_FRAME = 1 << 32


class ConnectionState(enum.Enum):
    AWAIT_HEADER = "await_header"
    STARTING = "starting"  # connection.start sent, waiting for start-ok
    TUNING = "tuning"  # connection.tune sent, waiting for tune-ok
    OPENING = "opening"  # waiting for connection.open
    OPEN = "running"  # RabbitMQ's name, used in its error texts
    CLOSING = "closing"  # connection.close sent, waiting for close-ok
    CLOSED = "closed"  # nothing more will be read; the shell closes the socket


S = ConnectionState
_TRANSITIONS: dict[ConnectionState, frozenset[ConnectionState]] = {
    S.AWAIT_HEADER: frozenset({S.STARTING, S.CLOSED}),
    S.STARTING: frozenset({S.TUNING, S.CLOSED}),
    S.TUNING: frozenset({S.OPENING, S.CLOSING, S.CLOSED}),
    S.OPENING: frozenset({S.OPEN, S.CLOSING, S.CLOSED}),
    S.OPEN: frozenset({S.CLOSING, S.CLOSED}),
    S.CLOSING: frozenset({S.CLOSED}),
    S.CLOSED: frozenset(),
}
_CHANNEL0_METHODS: dict[ConnectionState, frozenset[type[spec.Method]]] = {
    S.STARTING: frozenset({spec.ConnectionStartOk, spec.ConnectionClose}),
    S.TUNING: frozenset({spec.ConnectionTuneOk, spec.ConnectionClose}),
    S.OPENING: frozenset({spec.ConnectionOpen, spec.ConnectionClose}),
    S.OPEN: frozenset({spec.ConnectionClose, spec.ConnectionUpdateSecret}),
    S.CLOSING: frozenset({spec.ConnectionClose, spec.ConnectionCloseOk}),
}
# Before OPENING a failing client is dropped without connection.close (see module doc).
_SILENT_STATES = frozenset({S.AWAIT_HEADER, S.STARTING, S.TUNING})

Authenticate = Callable[[str, str], "str | None"]
OpenVhost = Callable[[str, str], "str | None"]


_SHARED_RNG = random.Random()


def default_server_properties(product: str = "Leveret", version: str = "0.1.0") -> dict[str, Any]:
    return {
        "product": product,
        "version": version,
        "platform": f"Python {platform.python_version()}",
        "capabilities": dict(SERVER_CAPABILITIES),
        "copyright": "Leveret contributors",
        "information": "Licensed under the Apache License 2.0",
    }


def _erlang_binary(data: bytes) -> str:
    if not data:
        return "<<>>"
    if all(32 <= b < 127 for b in data):
        return '<<"' + data.decode("ascii").replace("\\", "\\\\").replace('"', '\\"') + '">>'
    return "<<" + ",".join(map(str, data)) + ">>"


def _unexpected_frame(frame_type: int, payload: bytes) -> ProtocolError:
    """rabbit_reader:unexpected_frame/4: a frame that makes no sense on its channel."""
    snippet = f"all octets = {_erlang_binary(payload)}" if len(payload) <= 16 else (
        f"first 16 octets = {_erlang_binary(payload[:16])}"
    )
    return ProtocolError.of(spec.UNEXPECTED_FRAME, f"type {frame_type}, {snippet}")


def _frame_payload(frame: Any) -> tuple[int, bytes]:
    t = type(frame)
    if t is codec.HeaderFrame:
        return spec.FRAME_HEADER, frame.class_id.to_bytes(2, "big") + b"\x00\x00" + frame.body_size.to_bytes(
            8, "big"
        ) + frame.raw_properties
    if t is codec.BodyFrame:
        return spec.FRAME_BODY, frame.payload
    if t is codec.HeartbeatFrame:
        return spec.FRAME_HEARTBEAT, b""
    return spec.FRAME_METHOD, codec.encode_method(0, frame.method)[7:-1]


class Connection:
    """One client connection. See the module doc for the driving contract."""

    # Slotted: a node holds tens of thousands of these, mostly idle.
    __slots__ = (
        "_authenticate", "_open_vhost", "server_properties", "server_channel_max", "server_frame_max",
        "server_heartbeat", "handshake_timeout", "max_message_size", "_defer_close_ok", "close_ok_owed", "_rng", "state", "_header", "_decoder",
        "_out", "_channels", "_confirm_dirty", "channel_max", "frame_max", "heartbeat", "username",
        "mechanism", "vhost", "client_properties", "capabilities", "blocked", "_blocked_reason",
        "_blocked_sent", "handshake_failed", "_finished", "_received", "_sent_total", "_sent_seen",
        "_started_at", "_last_recv", "_last_send", "_closing_since", "_closing_timeout",
    )

    def __init__(
        self,
        authenticate: Authenticate,
        open_vhost: OpenVhost,
        *,
        server_properties: Mapping[str, Any] | None = None,
        channel_max: int = 2047,
        frame_max: int = 131072,
        heartbeat: int = 60,
        handshake_timeout: float = 10.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        defer_close_ok: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        """`authenticate(username, password)` and `open_vhost(username, vhost)` are pure
        checks returning None when allowed, else the refusal detail (RabbitMQ's wording,
        e.g. "vhost x not found" or "access to vhost '/' refused for user 'u'").

        `defer_close_ok`: the client's connection.close is answered only when the shell
        calls `send_close_ok`, after it has released what the connection held (its
        exclusive queues), as RabbitMQ answers once the connection's resources are gone."""
        assert frame_max == 0 or frame_max >= spec.FRAME_MIN_SIZE
        self._authenticate = authenticate
        self._open_vhost = open_vhost
        if server_properties is not None and "capabilities" in server_properties:
            # Only read (to encode connection.start): every connection shares the node's.
            props: Mapping[str, Any] = server_properties
        else:
            props = dict(server_properties) if server_properties is not None else default_server_properties()
            props.setdefault("capabilities", dict(SERVER_CAPABILITIES))  # type: ignore[attr-defined]
        self.server_properties = props
        self.server_channel_max = channel_max
        self.server_frame_max = frame_max
        self.server_heartbeat = heartbeat
        self.handshake_timeout = handshake_timeout
        self.max_message_size = max_message_size
        self._defer_close_ok = defer_close_ok
        self.close_ok_owed = False
        # Only consumer tags are drawn from it; a generator per connection would cost 2.5 KiB.
        self._rng = rng if rng is not None else _SHARED_RNG

        self.state = S.AWAIT_HEADER
        self._header = b""
        self._decoder = codec.FrameDecoder(spec.FRAME_MIN_SIZE, fuse_publishes=True)
        self._out = bytearray()
        self._channels: dict[int, Channel] = {}
        self._confirm_dirty: set[Channel] = set()

        # Negotiated (valid once OPENING).
        self.channel_max = 0
        self.frame_max = spec.FRAME_MIN_SIZE
        self.heartbeat = 0
        self.username: str | None = None
        self.mechanism: str | None = None
        self.vhost: str | None = None
        self.client_properties: dict[str, Any] = {}
        self.capabilities: dict[str, Any] = {}

        self.blocked = False
        self._blocked_reason = ""
        self._blocked_sent = False
        # True when the connection ended because the handshake failed: a refused login,
        # a frame or method the handshake does not allow (RabbitMQ waits
        # ?SILENT_CLOSE_DELAY = 3 s before answering and dropping such a client).
        self.handshake_failed = False
        self._finished = False  # ConnectionClosed emitted

        # Clock bookkeeping, all driven by tick(now).
        self._received = False
        # Octets drained by data_to_send, and how many of them tick() has accounted for.
        self._sent_total = 0
        self._sent_seen = 0
        self._started_at: float | None = None
        self._last_recv: float | None = None
        self._last_send: float | None = None
        self._closing_since: float | None = None
        self._closing_timeout = _NORMAL_TIMEOUT

    # --- the shell's side ------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Feed bytes read from the socket; return the events they caused. Never raises."""
        events: list[Event] = []
        if self.state is S.CLOSED or not data:
            return events
        self._received = True
        try:
            if self.state is S.AWAIT_HEADER:
                data = self._receive_header(bytes(data), events)
                if not data or self.state is not S.STARTING:
                    return events
            if self.state is S.STARTING or self.state is S.TUNING:
                if not self._receive_handshake(data, events):
                    return events
                data = b""  # what followed tune-ok is buffered in the decoder
            frames, error = self._decoder.feed(data)
            self._handle_frames(frames, events)
            if error is not None and self.state is not S.CLOSED:
                self._on_frame_error(error, events)
        except Exception as exc:  # a bug must not leave the socket in limbo
            self._internal_error(exc, events)
        return events

    def receiving_content(self) -> bool:
        """A publish has begun and its content is still arriving: RabbitMQ blocks such a
        connection under a resource alarm before reading the rest (the shell's check)."""
        return any(ch.receiving_content for ch in self._channels.values())

    @property
    def pending_output(self) -> int:
        """Octets queued for the client and not yet drained: the node's delivery back-pressure."""
        return len(self._out)

    def data_to_send(self) -> bytes:
        """Drain everything queued for the client (publisher confirms coalesced here)."""
        if self._confirm_dirty:
            for ch in self._confirm_dirty:
                ch.flush_confirms()
            self._confirm_dirty.clear()
        if not self._out:
            return b""
        data = bytes(self._out)
        self._out.clear()
        self._sent_total += len(data)
        return data

    def tick(self, now: float) -> list[Event]:
        """Advance time: heartbeats out, heartbeat / handshake / close timeouts."""
        events: list[Event] = []
        state = self.state
        if state is S.CLOSED:
            return events
        if self._started_at is None:
            self._started_at = now
        if state is S.CLOSING:
            if self._closing_since is None:
                self._closing_since = now
            elif now - self._closing_since >= self._closing_timeout:
                self._set_state(S.CLOSED)
            return events
        if state is not S.OPEN:
            if now - self._started_at >= self.handshake_timeout:
                self._finish(0, f"handshake timeout in connection state {state.value}", False, events)
                self._set_state(S.CLOSED)
                return events
            if state is not S.OPENING:
                return events  # heartbeats start with tune-ok
        interval = self.heartbeat
        if not interval:
            return events
        if self._received or self._last_recv is None:
            self._received = False
            self._last_recv = now
        if self._sent_total != self._sent_seen or self._last_send is None:
            self._sent_seen = self._sent_total
            self._last_send = now
        if self.blocked:
            # RabbitMQ pauses the receive monitor while it is not reading the socket.
            self._last_recv = now
        elif now - self._last_recv >= 2 * interval:
            self._finish(0, f"missed heartbeats from client, timeout: {interval}s", False, events)
            self._set_state(S.CLOSED)
            return events
        if now - self._last_send >= interval / 2 and not self._out:
            self._out += codec.HEARTBEAT
            # Our own heartbeat is not traffic that postpones the next one.
            self._sent_seen += len(codec.HEARTBEAT)
            self._last_send = now
        return events

    def connection_lost(self) -> list[Event]:
        """The socket closed under us: end every channel and the connection."""
        events: list[Event] = []
        if self.state is not S.CLOSED:
            self._finish(0, "client unexpectedly closed TCP connection", True, events)
            self._set_state(S.CLOSED)
        return events

    # --- the node's side -------------------------------------------------------------------

    def send_close_ok(self) -> None:
        """Answer the client's connection.close (see `defer_close_ok`)."""
        if self.close_ok_owed:
            self.close_ok_owed = False
            self._out += codec.encode_method(0, spec.ConnectionCloseOk())

    def channel(self, number: int) -> Channel | None:
        """The open channel with this number (None when absent or closing)."""
        ch = self._channels.get(number)
        return ch if ch is not None and ch.state is ChannelState.OPEN else None

    @property
    def channels(self) -> dict[int, Channel]:
        return self._channels

    def send_method(self, channel: int, method: spec.Method) -> bool:
        """Send a method the node produced (declare-ok, consume-ok, get-empty, ...)."""
        if channel == 0:
            if self.state is not S.OPEN:
                return False
        elif self.channel(channel) is None or self.state is not S.OPEN:
            return False
        self._out += codec.encode_method(channel, method)
        return True

    def send_content(self, channel: int, method: spec.Method, raw_properties: bytes, body: bytes) -> bool:
        """Send a content-carrying method (basic.return) with its header and body frames."""
        if self.state is not S.OPEN or self.channel(channel) is None:
            return False
        self._out += codec.encode_method(channel, method)
        self._out += codec.encode_content(channel, spec.CLASS_BASIC, raw_properties, body, self.frame_max)
        return True

    def deliver(
        self,
        channel: int,
        consumer_tag: str,
        handle: Any,
        exchange: str,
        routing_key: str,
        raw_properties: bytes,
        body: bytes,
        redelivered: bool = False,
    ) -> int | None:
        """Push one message to a consumer; the delivery tag, or None when refused
        (channel or consumer gone: the node returns the message to its queue)."""
        ch = self._channels.get(channel)
        if ch is None:
            return None
        return ch.deliver(consumer_tag, handle, exchange, routing_key, raw_properties, body, redelivered)

    def get_ok(
        self,
        channel: int,
        handle: Any,
        no_ack: bool,
        exchange: str,
        routing_key: str,
        message_count: int,
        raw_properties: bytes,
        body: bytes,
        redelivered: bool = False,
    ) -> int | None:
        """Answer a basic.get with a message; the delivery tag, or None when the channel is gone."""
        ch = self._channels.get(channel)
        if ch is None:
            return None
        return ch.get_ok(handle, no_ack, exchange, routing_key, message_count, raw_properties, body, redelivered)

    def can_deliver(self, channel: int, consumer_tag: str) -> bool:
        ch = self._channels.get(channel)
        return ch is not None and ch.can_deliver(consumer_tag)

    def room(self, channel: int, consumer_tag: str) -> int | None:
        """Deliveries the consumer's prefetch limits leave room for (None: unlimited)."""
        ch = self._channels.get(channel)
        return ch.room(consumer_tag) if ch is not None else 0

    def cancel_consumer(self, channel: int, consumer_tag: str) -> bool:
        """Server-initiated basic.cancel (queue deleted...), sent if the client supports it."""
        ch = self._channels.get(channel)
        if ch is None:
            return False
        return ch.cancel_consumer(consumer_tag, bool(self.capabilities.get("consumer_cancel_notify")))

    def confirm(self, channel: int, seq: int) -> bool:
        """Publisher confirm for `seq`; sent (coalesced) by the next `data_to_send`."""
        ch = self._channels.get(channel)
        if ch is None or not ch.confirm(seq):
            return False
        self._confirm_dirty.add(ch)
        return True

    def reject(self, channel: int, seq: int) -> bool:
        """Negative publisher confirm (basic.nack) for `seq`."""
        ch = self._channels.get(channel)
        if ch is None or not ch.reject(seq):
            return False
        self._confirm_dirty.add(ch)
        return True

    def release_held(self, ev: Rejected) -> None:
        """`ev`'s deliveries are being handed back to their queues: free their consumers'
        prefetch (see `Rejected.held`)."""
        ch = self._channels.get(ev.channel)
        if ch is not None and ev.held:
            ch.release_held(ev)

    def tx_commit_ok(self, channel: int) -> bool:
        ch = self._channels.get(channel)
        if ch is None:
            return False
        ch.tx_commit_ok()
        return True

    def protocol_error(
        self, channel: int, code: int, detail: str, method: type[spec.Method] | spec.Method | None = None
    ) -> list[Event]:
        """Fail an operation the node checked, e.g. (3, 404, "no queue 'q' in vhost '/'",
        spec.QueueDeclare): channel.close for soft codes, connection.close for hard ones."""
        events: list[Event] = []
        self._fail(ProtocolError.of(code, detail, method), channel, events)
        return events

    def close_channel(self, channel: int, code: int, text: str, class_id: int = 0, method_id: int = 0) -> list[Event]:
        """Server-initiated channel.close with a complete reply text."""
        events: list[Event] = []
        ch = self._channels.get(channel)
        if ch is not None and ch.state is ChannelState.OPEN and self.state is S.OPEN:
            events.append(ch.server_close(ProtocolError(code, clip_reply_text(text), class_id, method_id)))
            self._confirm_dirty.discard(ch)
        return events

    def close(
        self,
        code: int = spec.CONNECTION_FORCED,
        text: str = "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'",
        class_id: int = 0,
        method_id: int = 0,
    ) -> list[Event]:
        """Server-initiated connection.close (shutdown, management "close connection")."""
        events: list[Event] = []
        if self.state in (S.OPENING, S.OPEN):
            self._close_connection(ProtocolError(code, clip_reply_text(text), class_id, method_id), events)
        elif self.state is not S.CLOSING and self.state is not S.CLOSED:
            self._finish(code, text, False, events)
            self._set_state(S.CLOSED)
        return events

    def block(self, reason: str) -> None:
        """Resource alarm: tell the client (connection.blocked) if it understands it."""
        if self.blocked:
            return
        self.blocked = True
        self._blocked_reason = reason
        if self.state is S.OPEN and self.capabilities.get("connection.blocked"):
            self._out += codec.encode_method(0, spec.ConnectionBlocked(reason=reason))
            self._blocked_sent = True

    def unblock(self) -> None:
        if not self.blocked:
            return
        self.blocked = False
        if self._blocked_sent and self.state is S.OPEN:
            self._out += codec.encode_method(0, spec.ConnectionUnblocked())
        self._blocked_sent = False

    # --- header and handshake ------------------------------------------------------------------

    def _receive_header(self, data: bytes, events: list[Event]) -> bytes:
        need = 8 - len(self._header)
        self._header += data[:need]
        rest = data[need:]
        header = self._header
        if len(header) < 8:
            return b""
        if header == spec.PROTOCOL_HEADER or header == b"AMQP\x01\x01\x00\x09":
            # 0-9 (AMQP 1 1 0 9) is close enough to 0-9-1 that RabbitMQ serves it the same way.
            self._set_state(S.STARTING)
            self._out += codec.encode_method(
                0,
                spec.ConnectionStart(
                    version_major=0,
                    version_minor=9,
                    server_properties=self.server_properties,
                    mechanisms=" ".join(MECHANISMS).encode(),
                    locales=b"en_US",
                ),
            )
            return rest
        self._refuse_header(events)
        return b""

    def _receive_handshake(self, data: bytes | bytearray | memoryview, events: list[Event]) -> bool:
        """Frames up to tune-ok, parsed one at a time; True once the handshake has moved
        past TUNING with the connection still alive (the octets after tune-ok are then
        in the decoder, for the caller to parse in bulk).

        Tune-ok raises the frame size limit for the frames after it, and a client may
        pipeline those in the same read (RabbitMQ's reader applies the negotiated
        frame_max from the next frame on), so the frames before it are taken one by one
        (`FrameDecoder.feed_one`). Until then every frame is the peer's last unless it is
        the method the state expects (see `_handle_frame_slow`), so an unauthenticated
        peer costs one frame header's parse before it is dropped.
        """
        feed_one = self._decoder.feed_one
        while self.state is S.STARTING or self.state is S.TUNING:
            frame, error = feed_one(data)
            data = b""
            if error is not None:
                self._on_frame_error(error, events)
                return False
            if frame is None:
                return False
            self._handle_frames([frame], events)
        return self.state is not S.CLOSED

    def _refuse_header(self, events: list[Event]) -> None:
        # Spec 4.2.2: answer a header we do not speak with the one we do, then close.
        self._out += spec.PROTOCOL_HEADER
        self._finish(0, f"client did not start with AMQP protocol header: {_erlang_binary(self._header)}", False, events)
        self._set_state(S.CLOSED)

    def _on_start_ok(self, method: spec.ConnectionStartOk, events: list[Event]) -> None:
        props = method.client_properties if isinstance(method.client_properties, dict) else {}
        self.client_properties = props
        caps = props.get("capabilities")
        self.capabilities = caps if isinstance(caps, dict) else {}
        mechanism = method.mechanism
        if mechanism not in MECHANISMS:
            adjective = "invalid" if mechanism.upper() in _KNOWN_MECHANISMS else "unknown"
            raise ProtocolError.of(spec.COMMAND_INVALID, f"{adjective} authentication mechanism '{mechanism}'", method)
        self.mechanism = mechanism
        response = method.response
        if mechanism == "PLAIN":
            # RFC 4616: [authzid] NUL authcid NUL passwd
            parts = response.split(b"\x00")
            if len(parts) != 3:
                raise ProtocolError.of(spec.SYNTAX_ERROR, f"response {_erlang_binary(response)} invalid", method)
            username, password = parts[1], parts[2]
        else:
            username, password = self._amqplain(response, method)
        user = username.decode("utf-8", "surrogateescape")
        refusal = self._authenticate(user, password.decode("utf-8", "surrogateescape"))
        if refusal is not None:
            self._refuse_login(user, refusal, events)
            return
        self.username = user
        self._set_state(S.TUNING)
        self._out += codec.encode_method(
            0,
            spec.ConnectionTune(
                channel_max=self.server_channel_max, frame_max=self.server_frame_max, heartbeat=self.server_heartbeat
            ),
        )

    @staticmethod
    def _amqplain(response: bytes, method: spec.Method) -> tuple[bytes, bytes]:
        # AMQPLAIN's response is a field table without its length prefix.
        try:
            table, end = codec.decode_table(len(response).to_bytes(4, "big") + response, 0)
        except Exception:
            table, end = {}, -1
        login, password = table.get("LOGIN"), table.get("PASSWORD")
        if end != len(response) + 4 or login is None or password is None:
            raise ProtocolError.of(
                spec.SYNTAX_ERROR, f"AMQPLAIN auth info {_erlang_binary(response[:64])} is missing LOGIN or PASSWORD field",
                method,
            )
        as_bytes = [v if isinstance(v, bytes) else str(v).encode("utf-8", "surrogateescape") for v in (login, password)]
        return as_bytes[0], as_bytes[1]

    def _refuse_login(self, username: str, refusal: str, events: list[Event]) -> None:
        # rabbit_reader:auth_fail/5: clients that advertise authentication_failure_close
        # get a close with a text that leaks nothing; the others are simply dropped.
        text = f"ACCESS_REFUSED - Login was refused using authentication mechanism {self.mechanism}. " \
            "For details see the broker logfile."
        if self.capabilities.get("authentication_failure_close"):
            self._out += codec.encode_method(
                0, spec.ConnectionClose(reply_code=spec.ACCESS_REFUSED, reply_text=text)
            )
        self.handshake_failed = True
        self._finish(
            spec.ACCESS_REFUSED,
            f"ACCESS_REFUSED - {self.mechanism} login refused: {refusal}",
            False,
            events,
        )
        self._set_state(S.CLOSED)

    def _on_tune_ok(self, method: spec.ConnectionTuneOk, events: list[Event]) -> None:
        frame_max = self._negotiate("frame_max", spec.FRAME_MIN_SIZE, method.frame_max, self.server_frame_max)
        channel_max = self._negotiate("channel_max", 1, method.channel_max, self.server_channel_max)
        self.frame_max = frame_max
        self.channel_max = channel_max
        self.heartbeat = method.heartbeat
        self._decoder.frame_max = frame_max if frame_max else _UNLIMITED_FRAME
        self._closing_timeout = (
            float(method.heartbeat) if 0 < method.heartbeat < _CLOSING_TIMEOUT else _CLOSING_TIMEOUT
        )
        self._set_state(S.OPENING)

    @staticmethod
    def _negotiate(field: str, minimum: int, client: int, server: int) -> int:
        """rabbit_reader:validate_negotiated_integer_value/3."""
        if client != 0 and client < minimum:
            raise ProtocolError.of(
                spec.NOT_ALLOWED,
                f"negotiated {field} = {client} is lower than the minimum allowed value ({minimum})",
                spec.ConnectionTune,
            )
        if server != 0 and (client == 0 or client > server):
            detail = " (no limit)" if field == "channel_max" and client == 0 else ""
            raise ProtocolError.of(
                spec.NOT_ALLOWED,
                f"negotiated {field} = {client}{detail} is higher than the maximum allowed value ({server})",
                spec.ConnectionTune,
            )
        return client

    def _on_open(self, method: spec.ConnectionOpen, events: list[Event]) -> None:
        vhost = method.virtual_host
        assert self.username is not None
        refusal = self._open_vhost(self.username, vhost)
        if refusal is not None:
            raise ProtocolError.of(spec.NOT_ALLOWED, refusal, method)
        self.vhost = vhost
        self._out += codec.encode_method(0, spec.ConnectionOpenOk())
        self._set_state(S.OPEN)
        events.append(
            ConnectionOpened(self.username, vhost, self.client_properties, self.channel_max, self.frame_max, self.heartbeat)
        )
        if self.blocked and self.capabilities.get("connection.blocked"):
            self._out += codec.encode_method(0, spec.ConnectionBlocked(reason=self._blocked_reason))
            self._blocked_sent = True

    def _on_update_secret(self, method: spec.ConnectionUpdateSecret, events: list[Event]) -> None:
        # RabbitMQ passes the new secret only to backends whose state can expire
        # (rabbit_access_control:update_state); the internal user database says
        # state_can_expire() -> false, so with it every update-secret is answered with
        # update-secret-ok and the secret is never checked. Leveret's users are that
        # database, so a client rotating a credential keeps its connection as it would
        # on RabbitMQ, whatever it sends ("New secret was refused by one of the
        # backends" belongs to token backends such as OAuth 2, which Leveret has not).
        self._out += codec.encode_method(0, spec.ConnectionUpdateSecretOk())

    # --- frames -----------------------------------------------------------------------------

    def _handle_frames(self, frames: list[Any], events: list[Event]) -> None:
        # The publish path: a few local lookups per frame, one channel call.
        channels = self._channels
        OPEN, CLOSING, CLOSED = S.OPEN, ChannelState.CLOSING, ChannelState.CLOSED
        MethodFrame, HeaderFrame, BodyFrame = codec.MethodFrame, codec.HeaderFrame, codec.BodyFrame
        ChannelCloseOk = spec.ChannelCloseOk
        PublishFrame = codec.PublishFrame
        for frame in frames:
            if type(frame) is PublishFrame:
                # A whole publish in one record: straight to its channel when the channel
                # takes it as it stands; otherwise as the three frames it stands for.
                ch = channels.get(frame.channel)
                if ch is not None and self.state is OPEN:
                    try:
                        if ch.on_publish(frame, events):
                            continue
                    except ProtocolError as error:
                        self._fail(error, frame.channel, events)
                        continue
                self._handle_frames(frame.frames(), events)
                continue
            if self.state is not OPEN:
                # Handshake or closing: the rare path, one frame at a time.
                self._handle_frame_slow(frame, events)
                if self.state is S.CLOSED:
                    return
                continue
            number = frame.channel
            ch = channels.get(number)
            if ch is None:
                if number == 0:
                    self._handle_channel0(frame, events)
                    continue
                try:
                    self._on_new_channel(frame, events)
                except ProtocolError as error:
                    self._fail(error, number, events)
                continue
            t = type(frame)
            try:
                if t is BodyFrame:
                    ch.on_body(frame.payload, events)
                elif t is MethodFrame:
                    method = frame.method
                    if type(method) is ChannelCloseOk and ch.state is CLOSING:
                        del channels[number]
                        self._confirm_dirty.discard(ch)
                        continue
                    ch.on_method(method, events)
                    if ch.state is CLOSED:
                        del channels[number]
                        self._confirm_dirty.discard(ch)
                elif t is HeaderFrame:
                    ch.on_header(frame, events)
                else:
                    raise _unexpected_frame(spec.FRAME_HEARTBEAT, b"")
            except ProtocolError as error:
                self._fail(error, number, events)

    def _handle_frame_slow(self, frame: Any, events: list[Event]) -> None:
        state = self.state
        if state is S.CLOSING:
            # Only connection.close / close-ok matter now; everything else is dropped.
            if frame.channel == 0 and type(frame) is codec.MethodFrame:
                self._handle_channel0(frame, events)
            return
        if state is S.CLOSED:
            return
        # Handshake: only channel 0 carries anything meaningful (rabbit_reader:handle_frame/4).
        # Before tune-ok nothing but the expected method is: heartbeats are not negotiated
        # yet, and a peer streaming them (or anything else) before logging in is dropped
        # at the first one instead of being read until the handshake timeout.
        if frame.channel != 0 or (type(frame) is codec.HeartbeatFrame and state is not S.OPENING):
            frame_type, payload = _frame_payload(frame)
            self._fail(_unexpected_frame(frame_type, payload), frame.channel, events)
            return
        self._handle_channel0(frame, events)

    def _handle_channel0(self, frame: Any, events: list[Event]) -> None:
        t = type(frame)
        if t is codec.HeartbeatFrame:
            return
        try:
            if t is not codec.MethodFrame:
                frame_type, payload = _frame_payload(frame)
                raise _unexpected_frame(frame_type, payload)
            method = frame.method
            cls = type(method)
            allowed = _CHANNEL0_METHODS.get(self.state, frozenset())
            if cls not in allowed:
                if self.state is S.CLOSING:
                    return
                raise ProtocolError.of(
                    spec.CHANNEL_ERROR, f"unexpected method in connection state {self.state.value}", method
                )
            if cls is spec.ConnectionClose:
                self._on_client_close(method, events)  # type: ignore[arg-type]
            elif cls is spec.ConnectionCloseOk:
                self._set_state(S.CLOSED)
            elif cls is spec.ConnectionStartOk:
                self._on_start_ok(method, events)  # type: ignore[arg-type]
            elif cls is spec.ConnectionTuneOk:
                self._on_tune_ok(method, events)  # type: ignore[arg-type]
            elif cls is spec.ConnectionOpen:
                self._on_open(method, events)  # type: ignore[arg-type]
            elif cls is spec.ConnectionUpdateSecret:
                self._on_update_secret(method, events)  # type: ignore[arg-type]
        except ProtocolError as error:
            self._fail(error, 0, events)

    def _on_client_close(self, method: spec.ConnectionClose, events: list[Event]) -> None:
        if self._defer_close_ok:
            self.close_ok_owed = True
        else:
            self._out += codec.encode_method(0, spec.ConnectionCloseOk())
        if self.state is not S.CLOSING:
            self._finish(method.reply_code, method.reply_text, True, events)
        self._set_state(S.CLOSED)

    def _on_new_channel(self, frame: Any, events: list[Event]) -> None:
        """A frame for a channel number not in use: only channel.open may create it."""
        number = frame.channel
        if self.channel_max and len(self._channels) >= self.channel_max:
            raise ProtocolError.of(
                spec.NOT_ALLOWED,
                f"number of channels opened ({len(self._channels)}) has reached the negotiated channel_max "
                f"({self.channel_max})",
            )
        if self.channel_max and number > self.channel_max:
            raise ProtocolError.of(
                spec.NOT_ALLOWED,
                f"channel number {number} is higher than the negotiated channel_max ({self.channel_max})",
            )
        if type(frame) is not codec.MethodFrame:
            if type(frame) is codec.HeartbeatFrame:
                raise _unexpected_frame(spec.FRAME_HEARTBEAT, b"")
            raise ProtocolError.of(spec.UNEXPECTED_FRAME, "expected method frame, got non method frame instead")
        method = frame.method
        if type(method) is not spec.ChannelOpen:
            raise ProtocolError.of(spec.CHANNEL_ERROR, "expected 'channel.open'", method)
        self._channels[number] = Channel(number, self._out, self.frame_max or _UNLIMITED_FRAME, self._rng, self.max_message_size)
        self._out += codec.encode_method(number, spec.ChannelOpenOk())
        events.append(ChannelOpened(number))

    # --- errors and closing --------------------------------------------------------------------

    def _on_frame_error(self, error: codec.AMQPFrameError, events: list[Event]) -> None:
        failure = ProtocolError(error.code, clip_reply_text(error.text), error.class_id, error.method_id)
        # The decoder lost sync: nothing more can be read, not even close-ok.
        self._fail(failure, error.channel, events, hard=True)
        if self.state is not S.CLOSED:
            self._set_state(S.CLOSED)

    def _fail(self, error: ProtocolError, channel: int, events: list[Event], hard: bool = False) -> None:
        """Route an error as RabbitMQ's handle_exception does."""
        state = self.state
        if state is S.CLOSING or state is S.CLOSED:
            return
        if state in _SILENT_STATES and not (state is S.TUNING and error.code == spec.NOT_ALLOWED):
            self.handshake_failed = True
            self._finish(error.code, error.text, False, events)
            self._set_state(S.CLOSED)
            return
        if not hard and channel != 0 and error.code not in spec.HARD_ERRORS:
            ch = self._channels.get(channel)
            if ch is not None and ch.state is ChannelState.OPEN:
                events.append(ch.server_close(error))
                self._confirm_dirty.discard(ch)
            return
        if state is S.TUNING:
            self.handshake_failed = True
        self._close_connection(error, events)

    def _close_connection(self, error: ProtocolError, events: list[Event]) -> None:
        self._out += codec.encode_method(
            0,
            spec.ConnectionClose(
                reply_code=error.code, reply_text=error.text, class_id=error.class_id, method_id=error.method_id
            ),
        )
        self._finish(error.code, error.text, False, events)
        self._set_state(S.CLOSING)

    def _finish(self, code: int, text: str, by_client: bool, events: list[Event]) -> None:
        """End every channel, then the connection, for the node; exactly once."""
        if self._finished:
            return
        self._finished = True
        for ch in self._channels.values():
            if ch.state is ChannelState.OPEN:
                events.append(ch.release())
        self._channels.clear()
        self._confirm_dirty.clear()
        events.append(ConnectionClosed(code, text, by_client))

    def _internal_error(self, exc: Exception, events: list[Event]) -> None:
        error = ProtocolError.of(spec.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
        if self.state in (S.OPENING, S.OPEN):
            self._close_connection(error, events)
        self._finish(error.code, error.text, False, events)
        self._set_state(S.CLOSED)

    def _set_state(self, new: ConnectionState) -> None:
        if new is self.state:
            return
        assert new in _TRANSITIONS[self.state], (self.state, new)
        self.state = new
        if new is S.CLOSING:
            self._closing_since = None
