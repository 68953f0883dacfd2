"""One AMQP channel as a pure state machine, and the events both AMQP machines emit.

A `Channel` is owned by its `broker.amqp.connection.Connection`, which feeds it the
frames of its channel number and gives it the connection's output buffer. It owns:

- the channel lifecycle after channel.open: open, closing (the server sent
  channel.close and now ignores everything but channel.close / close-ok);
- content assembly: basic.publish + header + body frames -> one `PublishReceived`;
- publisher confirms: sequence numbers, `confirm(seq)` / `reject(seq)`, coalesced
  into `multiple=True` acks/nacks when the output is drained;
- transactions: publishes and settlements buffered until tx.commit, handed to the
  node as one `TxCommitted`, answered by the node with `Connection.tx_commit_ok`;
- consumers: tags (server-generated `amq.ctag-...` when empty), prefetch credit;
- delivery tags (per channel, from 1) and the unacked map: tag -> the opaque
  handle the node gave when delivering (e.g. (queue name, message id)).

Nothing here does I/O, reads a clock or draws randomness except through the
`random.Random` it is given. Every check that needs only protocol state is made
here, with RabbitMQ's reply codes and texts (rabbit_channel.erl,
rabbit_command_assembler.erl); an error is raised inside the machine as
`ProtocolError` and turned by the Connection into channel.close (soft) or
connection.close (hard). The node never sees a ProtocolError from these
machines: it sees the resulting `ChannelClosed` / `ConnectionClosed` events.

Events (slotted; frozen except the per-message `PublishReceived` and `Acked`, made
by the hundred thousand a second, where a frozen record's construction costs four
times more; "the node must ..." says what the receiver does):

- `ConnectionOpened(username, vhost, client_properties, channel_max, frame_max, heartbeat)`:
  the handshake finished; the node may register the connection.
- `ChannelOpened(channel)`: bookkeeping only (channel.open-ok was already sent).
- `MethodReceived(channel, method)`: a method only the node can answer:
  exchange.declare/delete/bind/unbind, queue.declare/bind/unbind/purge/delete,
  basic.get and basic.consume. The node must reply with `send_method` (declare-ok,
  consume-ok, get-empty, ...) or `get_ok`, unless the method says nowait, or fail
  it with `Connection.protocol_error`. For basic.consume the machine has already
  registered the consumer (so a duplicate tag is refused) and replaced an empty
  consumer_tag by the generated one; the node attaches the consumer to the queue.
- `PublishReceived(channel, method, properties, raw_properties, body, seq)`: route
  and enqueue; when `seq` is not None the channel is in confirm mode and the node
  must eventually call `Connection.confirm(channel, seq)` or `reject(...)`.
- `Acked(channel, handles)`: settle these deliveries (delivery order).
- `Rejected(channel, handles, requeue)`: return them to their queues (requeue,
  flagged redelivered) or drop / dead-letter them (not requeue). Also emitted by
  basic.recover. One method's deliveries come as one event per consumer tag, in
  RabbitMQ's order (see `_per_consumer`).
- `ConsumerCancelled(channel, consumer_tag)`: the client cancelled; detach the
  consumer (cancel-ok was already sent). Later `deliver` calls for it return None.
- `QosChanged(channel, prefetch_count, global_)`: credit may have grown; the node
  may try dispatching to this channel's consumers again.
- `PublishBuffered(publish)`: a publish on a transactional channel, kept by the
  machine until tx.commit; the node checks it now (exchange, permissions,
  properties) and fails the channel if RabbitMQ would, and routes it now, keeping
  the decision in the event's `routed` slot; nothing is enqueued until the commit.
- `TxCommitted(channel, publishes, settlements)`: apply the publishes then the
  settlements (each an `Acked` or `Rejected`), then call `Connection.tx_commit_ok`.
- `ChannelClosed(channel, unacked, consumer_tags)`: the channel is gone for the
  node: cancel the consumers and requeue `unacked` (handles in delivery order).
- `ConnectionClosed(code, text, by_client)`: the connection is finished for the
  node (every open channel got its `ChannelClosed` first). `code` is 0 when no
  close handshake happened (socket lost, heartbeat timeout, silent handshake
  failure).
"""

from __future__ import annotations

import base64
import enum
import random
from dataclasses import dataclass, field
from typing import Any

from broker.amqp import codec, spec

# RabbitMQ's hard ceiling on one message (rabbit.hrl ?MAX_MSG_SIZE): bigger content
# headers are a frame error before any body is buffered.
MAX_MSG_SIZE = 536_870_912
# RabbitMQ 3.10's default `max_message_size` (128 MiB); a content header declaring more is
# PRECONDITION_FAILED (rabbit_channel:check_msg_size/3) before any of its body is read.
DEFAULT_MAX_MESSAGE_SIZE = 134_217_728


# --- errors -----------------------------------------------------------------------------


class ProtocolError(Exception):
    """An AMQP error as a value: reply code, complete reply text, failing method ids."""

    __slots__ = ("code", "text", "class_id", "method_id")

    def __init__(self, code: int, text: str, class_id: int = 0, method_id: int = 0) -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text
        self.class_id = class_id
        self.method_id = method_id

    @classmethod
    def of(cls, code: int, detail: str, method: type[spec.Method] | spec.Method | None = None) -> ProtocolError:
        """Build RabbitMQ's "NAME - detail" text, clipped to a shortstr."""
        if method is None:
            return cls(code, clip_reply_text(spec.reply_text(code, detail)))
        return cls(code, clip_reply_text(spec.reply_text(code, detail)), method.CLASS_ID, method.METHOD_ID)

    def __repr__(self) -> str:
        return f"ProtocolError({self.code}, {self.text!r}, {self.class_id}, {self.method_id})"


def clip_reply_text(text: str) -> str:
    """reply-text is a shortstr: RabbitMQ cuts it to 252 bytes plus "..." (rabbit_binary_generator)."""
    # surrogateescape: names the client sent as invalid UTF-8 go back as the octets it sent.
    raw = text.encode("utf-8", "surrogateescape")
    if len(raw) <= 255:
        return text
    return raw[:252].decode("utf-8", "ignore") + "..."


# --- events -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectionOpened:
    username: str
    vhost: str
    client_properties: dict[str, Any]
    channel_max: int
    frame_max: int
    heartbeat: int


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    code: int
    text: str
    by_client: bool


@dataclass(frozen=True, slots=True)
class ChannelOpened:
    channel: int


@dataclass(frozen=True, slots=True)
class ChannelClosed:
    channel: int
    unacked: tuple[Any, ...]
    consumer_tags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MethodReceived:
    channel: int
    method: spec.Method


@dataclass(slots=True)
class PublishReceived:
    channel: int
    method: spec.BasicPublish
    properties: spec.BasicProperties
    raw_properties: bytes
    body: bytes
    seq: int | None
    # Inside a transaction: what the node decided when the publish arrived (RabbitMQ routes
    # it then and delivers at tx.commit). Set by the node, carried here untouched.
    routed: Any = None


@dataclass(slots=True)
class Acked:
    channel: int
    handles: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Rejected:
    channel: int
    handles: tuple[Any, ...]
    requeue: bool
    # Consumers whose per-consumer prefetch these deliveries still count against; the node
    # gives it back (`Connection.release_held`) as it hands them to their queues.
    # Bookkeeping, not what the event says: left out of comparisons.
    held: tuple["Consumer", ...] = field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class ConsumerCancelled:
    channel: int
    consumer_tag: str


@dataclass(frozen=True, slots=True)
class QosChanged:
    channel: int
    prefetch_count: int
    global_: bool


@dataclass(frozen=True, slots=True)
class PublishBuffered:
    publish: PublishReceived


@dataclass(frozen=True, slots=True)
class TxCommitted:
    channel: int
    publishes: tuple[PublishReceived, ...]
    settlements: tuple[Acked | Rejected, ...]


Event = (
    ConnectionOpened
    | ConnectionClosed
    | ChannelOpened
    | ChannelClosed
    | MethodReceived
    | PublishReceived
    | Acked
    | Rejected
    | ConsumerCancelled
    | QosChanged
    | PublishBuffered
    | TxCommitted
)


# --- channel state ----------------------------------------------------------------------


class ChannelState(enum.Enum):
    OPEN = "open"
    # We sent channel.close; only channel.close / close-ok are acted on (spec 1.5.2.5).
    CLOSING = "closing"
    # Closed for good; the Connection has forgotten the channel number.
    CLOSED = "closed"


class TxState(enum.Enum):
    NONE = "none"
    OPEN = "open"
    # tx.commit was handed to the node; every method until tx_commit_ok is an error.
    COMMITTING = "committing"


# Methods the node must answer (exchange/queue operations need metadata; basic.get a queue).
NODE_METHODS: frozenset[type[spec.Method]] = frozenset(
    {
        spec.ExchangeDeclare,
        spec.ExchangeDelete,
        spec.ExchangeBind,
        spec.ExchangeUnbind,
        spec.QueueDeclare,
        spec.QueueBind,
        spec.QueueUnbind,
        spec.QueuePurge,
        spec.QueueDelete,
        spec.BasicGet,
    }
)

# Content assembly states (rabbit_command_assembler): waiting for a method, a header, bodies.
_EXPECT_METHOD = 0
_EXPECT_HEADER = 1
_EXPECT_BODY = 2


@dataclass(slots=True, eq=False)
class Consumer:
    tag: str
    queue: str
    no_ack: bool
    # Per-consumer prefetch (basic.qos global=false in force when it was created); 0 = none.
    prefetch: int
    # Deliveries to this consumer awaiting ack.
    unacked: int = 0


def _per_consumer(entries: list[tuple[Any, Consumer | None]]) -> list[list[tuple[Any, Consumer | None]]]:
    """Rejected (or recovered) deliveries, in the groups RabbitMQ's channel
    settles them in: one per consumer tag, basic.get deliveries (tag `none`, an atom, which
    Erlang orders before any binary) first, then the consumers by tag, each group in
    delivery order (rabbit_channel:foreach_per_queue folds a gb_tree keyed by {queue, tag}).
    Each group reaches its queue, which requeues and delivers, before the next one."""
    if len(entries) == 1:
        return [entries]
    groups: dict[str | None, list[tuple[Any, Consumer | None]]] = {}
    for entry in entries:
        consumer = entry[1]
        groups.setdefault(consumer.tag if consumer is not None else None, []).append(entry)
    if len(groups) == 1:
        return [entries]
    return [groups[tag] for tag in sorted(groups, key=lambda t: (t is not None, t or ""))]


def generate_consumer_tag(rng: random.Random) -> str:
    """RabbitMQ's shape: "amq.ctag-" + url-safe base64 of 16 random bytes, unpadded."""
    return "amq.ctag-" + base64.urlsafe_b64encode(rng.getrandbits(128).to_bytes(16, "big")).rstrip(b"=").decode()


class Channel:
    """One open channel. Created by the Connection on channel.open; see the module doc."""

    __slots__ = (
        "number",
        "state",
        "_out",
        "_frame_max",
        "_rng",
        "_max_message_size",
        # content assembly
        "_expect",
        "_publish",
        "_header",
        "_parts",
        "_remaining",
        # confirms
        "confirm_mode",
        "_next_seq",
        "_outstanding",
        "_low",
        "_confirmed",
        "_rejected",
        # transactions
        "tx",
        "_tx_publishes",
        "_tx_settlements",
        "_tx_taken",
        # consumers and deliveries
        "consumers",
        "consumer_prefetch",
        "channel_prefetch",
        "_credit_used",
        "_next_tag",
        "unacked",
    )

    def __init__(
        self,
        number: int,
        out: bytearray,
        frame_max: int,
        rng: random.Random,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self.number = number
        self.state = ChannelState.OPEN
        self._out = out
        self._frame_max = frame_max
        self._rng = rng
        self._max_message_size = max_message_size
        self._expect = _EXPECT_METHOD
        self._publish: spec.BasicPublish | None = None
        self._header: Any = None
        self._parts: list[bytes] = []
        self._remaining = 0
        self.confirm_mode = False
        self._next_seq = 1
        self._outstanding: set[int] = set()
        # Lowest sequence number that may still be outstanding (moves up lazily).
        self._low = 1
        self._confirmed: list[int] = []
        self._rejected: list[int] = []
        self.tx = TxState.NONE
        self._tx_publishes: list[PublishReceived] = []
        self._tx_settlements: list[Acked | Rejected] = []
        # Entries acked/rejected inside the open transaction, restored on rollback.
        self._tx_taken: dict[int, tuple[Any, Consumer | None]] = {}
        self.consumers: dict[str, Consumer] = {}
        self.consumer_prefetch = 0
        self.channel_prefetch = 0
        # Consumer deliveries awaiting ack: what basic.qos global=true limits.
        self._credit_used = 0
        self._next_tag = 1
        # delivery tag -> (node handle, consumer or None for basic.get); ascending tags.
        self.unacked: dict[int, tuple[Any, Consumer | None]] = {}

    # --- frames from the client -----------------------------------------------------------

    def on_method(self, method: spec.Method, events: list[Any]) -> None:
        if self._expect or self.state is not _OPEN or self.tx is _COMMITTING:
            self._on_method_unusual(method, events)
            return
        cls = type(method)
        if cls is _BasicPublish:
            if method.immediate:  # type: ignore[attr-defined]
                raise ProtocolError.of(spec.NOT_IMPLEMENTED, "immediate=true", method)
            self._publish = method  # type: ignore[assignment]
            self._expect = _EXPECT_HEADER
            return
        self._dispatch(cls, method, events)

    def on_publish(self, frame: Any, events: list[Any]) -> bool:
        """basic.publish, header and body at once (`codec.PublishFrame`). False, with
        nothing changed, when the channel is not simply open and idle (content half
        assembled, closing, committing, immediate=true): the caller then feeds the three
        frames one by one, which raises what they would."""
        method = frame.method
        if self._expect or self.state is not _OPEN or self.tx is _COMMITTING or method.immediate \
                or frame.body_size > MAX_MSG_SIZE:
            return False
        body = frame.payload
        if len(body) > self._max_message_size:
            raise _too_large(len(body), self._max_message_size, method)
        if self.confirm_mode:
            seq = self._next_seq
            self._next_seq = seq + 1
            self._outstanding.add(seq)
        else:
            seq = None
        event = PublishReceived(self.number, method, frame.properties, frame.raw_properties, body, seq)
        if self.tx is _NO_TX:
            events.append(event)
        else:
            self._tx_publishes.append(event)
            events.append(PublishBuffered(event))
        return True

    def _on_method_unusual(self, method: spec.Method, events: list[Any]) -> None:
        if self._expect != _EXPECT_METHOD:
            self._unexpected_in_content()
        if self.state is not ChannelState.OPEN:
            self._on_method_closing(method, events)
            return
        raise ProtocolError.of(spec.CHANNEL_ERROR, "unexpected command while processing 'tx.commit'", method)

    def _dispatch(self, cls: type[spec.Method], method: spec.Method, events: list[Any]) -> None:
        if cls is spec.BasicAck:
            self._settle(spec.BasicAck, method.delivery_tag, method.multiple, None, events)  # type: ignore[attr-defined]
            return
        handler = _HANDLERS.get(cls)
        if handler is not None:
            handler(self, method, events)
        elif cls in NODE_METHODS:
            events.append(MethodReceived(self.number, method))
        else:
            raise ProtocolError.of(spec.COMMAND_INVALID, "unimplemented method", method)

    def on_header(self, frame: Any, events: list[Any]) -> None:
        if self._expect != 1:  # _EXPECT_HEADER
            if self._expect == _EXPECT_BODY:
                self._unexpected_in_content()
            self._unexpected_content_frame()
        publish = self._publish
        assert publish is not None
        if frame.class_id != spec.CLASS_BASIC:
            raise ProtocolError.of(
                spec.UNEXPECTED_FRAME,
                f"expected content header for class {spec.CLASS_BASIC}, got one for class {frame.class_id} instead",
                publish,
            )
        size = frame.body_size
        if size > MAX_MSG_SIZE:
            raise ProtocolError.of(
                spec.FRAME_ERROR, f"content body size {size} exceeds maximum allowed size {MAX_MSG_SIZE}", publish
            )
        self._header = frame
        if size > self._max_message_size and self.state is _OPEN:
            # Refused on what the header declares, so the body is never held: its frames
            # are counted off unread while the channel closes (see `on_body`). RabbitMQ
            # checks the assembled body; the text is the same, the size being the same.
            self._remaining = size
            self._expect = _EXPECT_BODY
            raise _too_large(size, self._max_message_size, publish)
        if size == 0:
            self._complete(b"", events)
        else:
            self._remaining = size
            self._expect = _EXPECT_BODY

    def on_body(self, payload: bytes, events: list[Any]) -> None:
        if self._expect != 2:  # _EXPECT_BODY
            if self._expect == _EXPECT_HEADER:
                raise ProtocolError.of(
                    spec.UNEXPECTED_FRAME,
                    f"expected content header for class {spec.CLASS_BASIC}, got non content header frame instead",
                    self._publish,
                )
            self._unexpected_content_frame()
        remaining = self._remaining - len(payload)
        if remaining < 0:
            raise ProtocolError.of(spec.FRAME_ERROR, "content body frame exceeds remaining content size", self._publish)
        if self.state is not _OPEN:
            # Closing: the content is dropped, as RabbitMQ ignores a closing channel's
            # frames; only its length is followed, to stay in step with the frame stream.
            self._remaining = remaining
            if remaining == 0:
                self._parts = []
                self._complete(b"", events)
            return
        if remaining == 0 and not self._parts:
            self._complete(payload, events)
            return
        self._parts.append(payload)
        self._remaining = remaining
        if remaining == 0:
            body = b"".join(self._parts)
            self._parts = []
            self._complete(body, events)

    def _unexpected_in_content(self) -> None:
        if self._expect == _EXPECT_HEADER:
            raise ProtocolError.of(
                spec.UNEXPECTED_FRAME,
                f"expected content header for class {spec.CLASS_BASIC}, got non content header frame instead",
                self._publish,
            )
        raise ProtocolError.of(
            spec.UNEXPECTED_FRAME, "expected content body, got non content body frame instead", self._publish
        )

    @staticmethod
    def _unexpected_content_frame() -> None:
        raise ProtocolError.of(spec.UNEXPECTED_FRAME, "expected method frame, got non method frame instead")

    def _complete(self, body: bytes, events: list[Any]) -> None:
        publish = self._publish
        header = self._header
        self._expect = 0  # _EXPECT_METHOD
        self._publish = None
        self._header = None
        if self.state is not _OPEN:
            return  # followed only to stay in step with the frame stream
        if self.confirm_mode:
            seq = self._next_seq
            self._next_seq = seq + 1
            self._outstanding.add(seq)
        else:
            seq = None
        event = PublishReceived(self.number, publish, header.properties, header.raw_properties, body, seq)  # type: ignore[arg-type]
        if self.tx is _NO_TX:
            events.append(event)
        else:
            self._tx_publishes.append(event)
            events.append(PublishBuffered(event))

    def _on_method_closing(self, method: spec.Method, events: list[Any]) -> None:
        # Spec 1.5.2.5: after sending channel.close, discard everything but close / close-ok.
        cls = type(method)
        if cls is spec.ChannelClose:
            self._out += codec.encode_method(self.number, spec.ChannelCloseOk())
        elif cls is spec.ChannelCloseOk:
            self.state = ChannelState.CLOSED
        elif cls is spec.BasicPublish:
            self._publish = method  # type: ignore[assignment]
            self._expect = _EXPECT_HEADER

    # --- channel class ----------------------------------------------------------------------

    def _on_channel_open(self, method: spec.Method, events: list[Any]) -> None:
        raise ProtocolError.of(spec.CHANNEL_ERROR, "second 'channel.open' seen", method)

    def _on_channel_close(self, method: spec.Method, events: list[Any]) -> None:
        self._out += codec.encode_method(self.number, spec.ChannelCloseOk())
        events.append(self.release())

    def _on_channel_flow(self, method: spec.Method, events: list[Any]) -> None:
        # RabbitMQ 3.x+ never stops deliveries on request: active=false is refused.
        if not method.active:  # type: ignore[attr-defined]
            raise ProtocolError.of(spec.NOT_IMPLEMENTED, "active=false", method)
        self._out += codec.encode_method(self.number, spec.ChannelFlowOk(active=True))

    # --- basic class --------------------------------------------------------------------------

    def _on_qos(self, method: spec.Method, events: list[Any]) -> None:
        size = method.prefetch_size  # type: ignore[attr-defined]
        if size != 0:
            raise ProtocolError.of(spec.NOT_IMPLEMENTED, f"prefetch_size!=0 ({size})", method)
        count = method.prefetch_count  # type: ignore[attr-defined]
        # RabbitMQ 3.3+: global=false limits each consumer created afterwards,
        # global=true limits the channel's consumer deliveries as a whole.
        if method.global_:  # type: ignore[attr-defined]
            self.channel_prefetch = count
        else:
            self.consumer_prefetch = count
            # And it lifts a global limit set before (rabbit_channel: "ensures that if
            # default was set, it's overridden", rabbit_limiter:unlimit_prefetch).
            self.channel_prefetch = 0
        self._out += codec.encode_method(self.number, spec.BasicQosOk())
        events.append(QosChanged(self.number, count, method.global_))  # type: ignore[attr-defined]

    def _on_consume(self, method: spec.Method, events: list[Any]) -> None:
        tag = method.consumer_tag  # type: ignore[attr-defined]
        if tag in self.consumers:
            raise ProtocolError.of(spec.NOT_ALLOWED, f"attempt to reuse consumer tag '{tag}'", method)
        if not tag:
            tag = generate_consumer_tag(self._rng)
            while tag in self.consumers:
                tag = generate_consumer_tag(self._rng)
            method = spec.BasicConsume(
                ticket=method.ticket,  # type: ignore[attr-defined]
                queue=method.queue,  # type: ignore[attr-defined]
                consumer_tag=tag,
                no_local=method.no_local,  # type: ignore[attr-defined]
                no_ack=method.no_ack,  # type: ignore[attr-defined]
                exclusive=method.exclusive,  # type: ignore[attr-defined]
                nowait=method.nowait,  # type: ignore[attr-defined]
                arguments=method.arguments,  # type: ignore[attr-defined]
            )
        self.consumers[tag] = Consumer(tag, method.queue, method.no_ack, self.consumer_prefetch)  # type: ignore[attr-defined]
        events.append(MethodReceived(self.number, method))

    def _on_cancel(self, method: spec.Method, events: list[Any]) -> None:
        tag = method.consumer_tag  # type: ignore[attr-defined]
        # The spec asks us to ignore a cancel for an unknown consumer, still answering cancel-ok.
        if self.consumers.pop(tag, None) is not None:
            events.append(ConsumerCancelled(self.number, tag))
        if not method.nowait:  # type: ignore[attr-defined]
            self._out += codec.encode_method(self.number, spec.BasicCancelOk(consumer_tag=tag))

    def _on_reject(self, method: spec.Method, events: list[Any]) -> None:
        self._settle(spec.BasicReject, method.delivery_tag, False, method.requeue, events)  # type: ignore[attr-defined]

    def _on_nack(self, method: spec.Method, events: list[Any]) -> None:
        self._settle(spec.BasicNack, method.delivery_tag, method.multiple, method.requeue, events)  # type: ignore[attr-defined]

    def _on_recover(self, method: spec.Method, events: list[Any]) -> None:
        if not method.requeue:  # type: ignore[attr-defined]
            # RabbitMQ has never implemented redelivery to the original consumer.
            raise ProtocolError.of(spec.NOT_IMPLEMENTED, "requeue=false", method)
        if self.unacked:
            entries = list(self.unacked.values())
            self.unacked = {}
            events.extend(self._rejections(entries, True))
        if type(method) is spec.BasicRecover:
            self._out += codec.encode_method(self.number, spec.BasicRecoverOk())

    # --- settlements -------------------------------------------------------------------------

    def _settle(
        self, method: type[spec.Method], tag: int, multiple: bool, requeue: bool | None, events: list[Any]
    ) -> None:
        """basic.ack (requeue None) / nack / reject: take entries out of the unacked map."""
        unacked = self.unacked
        if multiple:
            if tag == 0:
                # Spec: multiple with tag 0 means every outstanding delivery.
                taken = list(unacked.items())
                unacked.clear()
            else:
                if tag not in unacked:
                    raise ProtocolError.of(spec.PRECONDITION_FAILED, f"unknown delivery tag {tag}", method)
                taken = []
                for t in unacked:
                    if t > tag:
                        break
                    taken.append((t, unacked[t]))
                for t, _ in taken:
                    del unacked[t]
        else:
            entry = unacked.pop(tag, None)
            if entry is None:
                raise ProtocolError.of(spec.PRECONDITION_FAILED, f"unknown delivery tag {tag}", method)
            taken = [(tag, entry)]
        if not taken:
            return
        entries = [entry for _, entry in taken]
        if self.tx is not TxState.NONE:
            # Held until tx.commit, which gives all their credit back at once.
            self._tx_taken.update(taken)
            if requeue is None:
                self._tx_settlements.append(Acked(self.number, tuple(handle for handle, _ in entries)))
            else:
                self._tx_settlements.extend(
                    Rejected(self.number, tuple(handle for handle, _ in group), requeue)
                    for group in _per_consumer(entries))
        elif requeue is None:
            self._release(entries)
            events.append(Acked(self.number, tuple(handle for handle, _ in entries)))
        else:
            events.extend(self._rejections(entries, requeue))

    def _rejections(self, entries: list[tuple[Any, Consumer | None]], requeue: bool) -> list[Rejected]:
        """One Rejected per consumer group (see `_per_consumer`). The channel-wide prefetch
        credit comes back at once, as RabbitMQ's channel tells its limiter after sending
        every group; a consumer's own prefetch credit only when its group reaches the
        queue, as RabbitMQ's queue counts it, so an earlier group's requeued messages do
        not go to a consumer whose own deliveries are not back yet."""
        self._credit_used -= sum(1 for _, consumer in entries if consumer is not None)
        return [Rejected(self.number, tuple(handle for handle, _ in group), requeue,
                         tuple(consumer for _, consumer in group if consumer is not None))
                for group in _per_consumer(entries)]

    def release_held(self, ev: Rejected) -> None:
        """The node hands `ev`'s deliveries to their queues: their consumers' prefetch is free."""
        for consumer in ev.held:
            consumer.unacked -= 1

    def _release(self, entries: list[tuple[Any, Consumer | None]]) -> None:
        """Give back the prefetch credit that settled consumer deliveries held."""
        freed = 0
        for _, consumer in entries:
            if consumer is not None:
                consumer.unacked -= 1
                freed += 1
        self._credit_used -= freed

    # --- confirms and transactions ------------------------------------------------------------

    def _on_confirm_select(self, method: spec.Method, events: list[Any]) -> None:
        if self.tx is not TxState.NONE:
            raise ProtocolError.of(spec.PRECONDITION_FAILED, "cannot switch from tx to confirm mode", method)
        self.confirm_mode = True
        if not method.nowait:  # type: ignore[attr-defined]
            self._out += codec.encode_method(self.number, spec.ConfirmSelectOk())

    def _on_tx_select(self, method: spec.Method, events: list[Any]) -> None:
        if self.confirm_mode:
            raise ProtocolError.of(spec.PRECONDITION_FAILED, "cannot switch from confirm to tx mode", method)
        self.tx = TxState.OPEN
        self._out += codec.encode_method(self.number, spec.TxSelectOk())

    def _on_tx_commit(self, method: spec.Method, events: list[Any]) -> None:
        if self.tx is TxState.NONE:
            raise ProtocolError.of(spec.PRECONDITION_FAILED, "channel is not transactional", method)
        self._release(list(self._tx_taken.values()))
        events.append(TxCommitted(self.number, tuple(self._tx_publishes), tuple(self._tx_settlements)))
        self._tx_publishes = []
        self._tx_settlements = []
        self._tx_taken = {}
        self.tx = TxState.COMMITTING

    def _on_tx_rollback(self, method: spec.Method, events: list[Any]) -> None:
        if self.tx is TxState.NONE:
            raise ProtocolError.of(spec.PRECONDITION_FAILED, "channel is not transactional", method)
        if self._tx_taken:
            # Acks inside the rolled-back transaction never happened: the deliveries are unacked again.
            merged = {**self.unacked, **self._tx_taken}
            self.unacked = dict(sorted(merged.items()))
        self._tx_publishes = []
        self._tx_settlements = []
        self._tx_taken = {}
        self._out += codec.encode_method(self.number, spec.TxRollbackOk())

    def tx_commit_ok(self) -> None:
        """The node applied the committed work: answer tx.commit-ok."""
        if self.tx is TxState.COMMITTING:
            self.tx = TxState.OPEN
            if self.state is ChannelState.OPEN:
                self._out += codec.encode_method(self.number, spec.TxCommitOk())

    def confirm(self, seq: int) -> bool:
        """Record a positive publisher confirm; sent (coalesced) by `flush_confirms`."""
        if seq not in self._outstanding:
            return False  # already settled, or never published on this channel
        self._outstanding.discard(seq)
        self._confirmed.append(seq)
        return True

    def reject(self, seq: int) -> bool:
        """Record a negative publisher confirm (basic.nack); sent by `flush_confirms`."""
        if seq not in self._outstanding:
            return False
        self._outstanding.discard(seq)
        self._rejected.append(seq)
        return True

    def flush_confirms(self) -> None:
        """Write pending acks/nacks, coalesced as RabbitMQ does (rabbit_channel:coalesce_and_send).

        Every confirmed seq below both the smallest still-outstanding seq and the
        smallest rejected seq goes out as one basic.ack multiple=true on the largest;
        the rest one by one. Nacks likewise, bounded by the confirmed ones.
        """
        confirmed, rejected = self._confirmed, self._rejected
        if not confirmed and not rejected:
            return
        self._confirmed, self._rejected = [], []
        if self.state is not ChannelState.OPEN:
            return
        outstanding = self._outstanding
        low = self._low
        next_seq = self._next_seq
        while low < next_seq and low not in outstanding:
            low += 1
        self._low = low
        out = self._out
        number = self.number
        if confirmed:
            self._send_coalesced(out, number, sorted(confirmed), min(rejected, default=low), low, codec.encode_basic_ack)
        if rejected:
            self._send_coalesced(out, number, sorted(rejected), min(confirmed, default=low), low, _encode_nack)

    @staticmethod
    def _send_coalesced(out: bytearray, number: int, seqs: list[int], other: int, low: int, encode: Any) -> None:
        cutoff = min(low, other)
        i = 0
        n = len(seqs)
        while i < n and seqs[i] < cutoff:
            i += 1
        if i == 1 and n == 1:
            out += encode(number, seqs[0], False)
            return
        if i:
            out += encode(number, seqs[i - 1], True)
        for seq in seqs[i:]:
            out += encode(number, seq, False)

    @property
    def has_pending_confirms(self) -> bool:
        return bool(self._confirmed or self._rejected)

    @property
    def receiving_content(self) -> bool:
        """A basic.publish whose header or body has not all arrived (and will be kept)."""
        return self._expect != _EXPECT_METHOD and self.state is _OPEN

    # --- deliveries from the node ---------------------------------------------------------------

    def can_deliver(self, consumer_tag: str) -> bool:
        """True when the consumer exists and both prefetch limits leave room for one more."""
        if self.state is not ChannelState.OPEN:
            return False
        consumer = self.consumers.get(consumer_tag)
        if consumer is None:
            return False
        channel_full = bool(self.channel_prefetch) and self._credit_used >= self.channel_prefetch
        if consumer.no_ack:
            # No prefetch of its own, but while the channel's global limit is reached
            # RabbitMQ's limiter refuses every send on the channel, acknowledged or not
            # (rabbit_limiter:can_send), so automatic-ack consumers wait too.
            return not channel_full
        if consumer.prefetch and consumer.unacked >= consumer.prefetch:
            return False
        return not channel_full

    def room(self, consumer_tag: str) -> int | None:
        """How many more deliveries the prefetch limits leave room for (None: no limit), 0
        when `can_deliver` says no. A queue on another node is given this much credit."""
        if not self.can_deliver(consumer_tag):
            return 0
        consumer = self.consumers[consumer_tag]
        room = None
        if not consumer.no_ack and consumer.prefetch:
            room = consumer.prefetch - consumer.unacked
        if self.channel_prefetch:
            left = self.channel_prefetch - self._credit_used
            room = left if room is None else min(room, left)
        return room

    def deliver(
        self,
        consumer_tag: str,
        handle: Any,
        exchange: str,
        routing_key: str,
        raw_properties: bytes,
        body: bytes,
        redelivered: bool,
    ) -> int | None:
        """Send basic.deliver + content; return the delivery tag, or None if refused.

        Refused (the node must return the message to its queue) when the channel is
        closing or the consumer was cancelled. Prefetch is the node's to respect via
        `can_deliver`; a delivery beyond it is still sent.
        """
        if self.state is not ChannelState.OPEN:
            return None
        consumer = self.consumers.get(consumer_tag)
        if consumer is None:
            return None
        tag = self._next_tag
        self._next_tag = tag + 1
        self._out += codec.encode_deliver(
            self.number, consumer_tag, tag, redelivered, exchange, routing_key, raw_properties, body, self._frame_max
        )
        if not consumer.no_ack:
            self.unacked[tag] = (handle, consumer)
            consumer.unacked += 1
            self._credit_used += 1
        return tag

    def get_ok(
        self,
        handle: Any,
        no_ack: bool,
        exchange: str,
        routing_key: str,
        message_count: int,
        raw_properties: bytes,
        body: bytes,
        redelivered: bool,
    ) -> int | None:
        """Answer basic.get with basic.get-ok + content; return the delivery tag (None if closing)."""
        if self.state is not ChannelState.OPEN:
            return None
        tag = self._next_tag
        self._next_tag = tag + 1
        self._out += codec.encode_get_ok(
            self.number, tag, redelivered, exchange, routing_key, message_count, raw_properties, body, self._frame_max
        )
        if not no_ack:
            self.unacked[tag] = (handle, None)
        return tag

    def cancel_consumer(self, consumer_tag: str, notify: bool) -> bool:
        """Server-side cancel (queue deleted, failover): forget the consumer, tell the client if it can hear it."""
        if self.consumers.pop(consumer_tag, None) is None:
            return False
        if notify and self.state is ChannelState.OPEN:
            self._out += codec.encode_method(self.number, spec.BasicCancel(consumer_tag=consumer_tag, nowait=True))
        return True

    # --- closing ----------------------------------------------------------------------------

    def release(self) -> ChannelClosed:
        """The channel ends for the node: everything unacked (including acks inside an
        uncommitted transaction) is handed back in delivery order, consumers listed."""
        unacked = self.unacked
        if self._tx_taken:
            unacked = dict(sorted({**unacked, **self._tx_taken}.items()))
        event = ChannelClosed(self.number, tuple(entry[0] for entry in unacked.values()), tuple(self.consumers))
        self.unacked = {}
        self._tx_taken = {}
        self._tx_publishes = []
        self._tx_settlements = []
        self.consumers = {}
        self._outstanding = set()
        self._confirmed = []
        self._rejected = []
        self._credit_used = 0
        self.state = ChannelState.CLOSED
        return event

    def server_close(self, error: ProtocolError) -> ChannelClosed:
        """Send channel.close for a soft error and wait for close-ok, ignoring the rest."""
        self._out += codec.encode_method(
            self.number,
            spec.ChannelClose(
                reply_code=error.code, reply_text=error.text, class_id=error.class_id, method_id=error.method_id
            ),
        )
        event = self.release()
        self.state = ChannelState.CLOSING
        return event


def _too_large(size: int, limit: int, publish: spec.Method | None) -> ProtocolError:
    return ProtocolError.of(
        spec.PRECONDITION_FAILED, f"message size {size} is larger than configured max size {limit}", publish
    )


_OPEN = ChannelState.OPEN
_COMMITTING = TxState.COMMITTING
_NO_TX = TxState.NONE
_BasicPublish = spec.BasicPublish


def _encode_nack(channel: int, seq: int, multiple: bool) -> bytes:
    return codec.encode_basic_nack(channel, seq, multiple, False)


_HANDLERS: dict[type[spec.Method], Any] = {
    spec.ChannelOpen: Channel._on_channel_open,
    spec.ChannelClose: Channel._on_channel_close,
    spec.ChannelFlow: Channel._on_channel_flow,
    spec.BasicQos: Channel._on_qos,
    spec.BasicConsume: Channel._on_consume,
    spec.BasicCancel: Channel._on_cancel,
    spec.BasicReject: Channel._on_reject,
    spec.BasicNack: Channel._on_nack,
    spec.BasicRecover: Channel._on_recover,
    spec.BasicRecoverAsync: Channel._on_recover,
    spec.ConfirmSelect: Channel._on_confirm_select,
    spec.TxSelect: Channel._on_tx_select,
    spec.TxCommit: Channel._on_tx_commit,
    spec.TxRollback: Channel._on_tx_rollback,
}
