"""`QueueState`: the replicated state machine of one queue — ready and unacknowledged
messages, priorities, TTL, max-length with its overflow modes, dead-lettering
decisions and redelivery bookkeeping.

Every queue is a state machine fed by a log (a plain queue is a group of one
replica, a mirrored queue the same machine on several). So this module is pure
and deterministic: every change is a command (`Enqueue`, `Deliver`, `Settle`,
`Requeue`, `Reject`, `RequeueAll`, `Expire`, `Purge`, `Reconfigure`, `Touch`),
time only arrives inside commands as `now_ms`, and `QueueState.apply(cmd)`
returns the effects for the leader's shell to carry out (confirm or nack the
publisher, push a delivery to a consumer, publish a dead-lettered copy, free a
body). Replicas applying the same commands reach the same state and return the
same effects; only the leader acts on them. The leader's shell chooses the
consumer (`broker.dispatch`) and records that choice in `Deliver`/`Enqueue`, so a
failover never resurrects settled messages and never forgets who holds what.

RabbitMQ 3.10 classic-queue behaviour kept here (`rabbit_amqqueue_process`,
`rabbit_variable_queue`, `rabbit_priority_queue`):

* Order: FIFO; with x-max-priority, higher priority first and FIFO within a
  priority, a priority above the maximum counting as the maximum. A requeued
  message returns to its original position (ordering is by queue sequence
  number), flagged redelivered.
* TTL: a message's expiry is fixed when it is enqueued, from the lower of the
  queue's message-ttl and its own expiration. Messages only expire at the head
  of the queue. A TTL of 0 therefore means "deliver now or never": `Enqueue`
  with `deliver_to` hands the message straight to a waiting consumer before
  expiry is considered, exactly like RabbitMQ's attempt_delivery.
* max-length / max-length-bytes count ready messages only. drop-head drops (or
  dead-letters, reason "maxlen") from the head after enqueueing or requeueing;
  reject-publish nacks a publish that would overflow, before any delivery is
  attempted; reject-publish-dlx also dead-letters it, reason "maxlen".
* Dead-lettering happens when a dead-letter exchange is configured: the effect
  names it; whether that exchange exists is the router's question (RabbitMQ
  drops the message when it does not). Without one, the message is dropped.
* x-expires: the queue is unused-expired `expires_ms` after its last use
  (declare, basic.get, consumer cancel — each a `Touch` or a get) and only if it
  has no consumers, which the shell knows; `expires_at` gives the deadline.

Memory: a backlog can reach millions of messages, so each message costs one
slotted `_Entry` (sequence number, message, expiry, delivery count) in a deque;
no per-message dicts. The body is reached only through `entry.message` (the
shared `Message`): paging bodies out to the store replaces what the `Message`
holds, and nothing here reads the body except `Message.size` for byte limits.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Iterator, Union

from broker.arguments import (
    OVERFLOW_DROP_HEAD,
    OVERFLOW_REJECT_PUBLISH,
    OVERFLOW_REJECT_PUBLISH_DLX,
    QueueSettings,
)
from broker.deadletter import REASON_EXPIRED, REASON_MAXLEN, REASON_REJECTED
from broker.message import Message

# --- commands ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Enqueue:
    """A publish routed to this queue. With `deliver_to` (a consumer key the shell chose
    because it has credit) the message goes straight to that consumer when nothing is
    ready, as RabbitMQ does for an empty queue with a waiting consumer."""

    message: Message
    now_ms: int
    deliver_to: str | None = None
    ack_required: bool = True
    # A message recovered from disk after a restart: it may have been delivered before.
    redelivered: bool = False


@dataclass(frozen=True, slots=True)
class Deliver:
    """Take the next ready message for `consumer` (None: a basic.get, which also counts
    as a use of the queue for x-expires)."""

    now_ms: int
    consumer: str | None
    ack_required: bool = True


@dataclass(frozen=True, slots=True)
class Settle:
    """basic.ack: the consumer is done with these messages."""

    seqs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Requeue:
    """basic.reject / nack with requeue, basic.recover, or a consumer's channel closing."""

    seqs: tuple[int, ...]
    now_ms: int


@dataclass(frozen=True, slots=True)
class Reject:
    """basic.reject / nack without requeue: dead-letter with reason "rejected"."""

    seqs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RequeueAll:
    """A new leader took over: every delivered, unsettled message is ready again."""

    now_ms: int


@dataclass(frozen=True, slots=True)
class Expire:
    """The TTL timer fired: drop or dead-letter expired messages at the head."""

    now_ms: int


@dataclass(frozen=True, slots=True)
class Purge:
    """queue.purge: drop every ready message (unacknowledged ones stay)."""


@dataclass(frozen=True, slots=True)
class Reconfigure:
    """A policy changed the effective settings."""

    settings: QueueSettings
    now_ms: int


@dataclass(frozen=True, slots=True)
class Touch:
    """queue.declare of an existing queue or a consumer cancel: resets the x-expires clock."""

    now_ms: int


Command = Union[Enqueue, Deliver, Settle, Requeue, Reject, RequeueAll, Expire, Purge, Reconfigure, Touch]

# --- effects -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Enqueued:
    """The publish was accepted (confirm it once the command is committed)."""

    seq: int
    message: Message


@dataclass(frozen=True, slots=True)
class PublisherRejected:
    """reject-publish / reject-publish-dlx overflow: basic.nack the publisher."""

    message: Message


@dataclass(frozen=True, slots=True)
class Delivered:
    seq: int
    message: Message
    consumer: str | None
    redelivered: bool
    # How many times this message has been handed out, this delivery included.
    delivery_count: int
    ack_required: bool
    # Ready messages left after this one (basic.get-ok's message-count).
    remaining: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Publish `broker.deadletter.dead_letter(message, reason, queue_name, exchange,
    routing_key, now)` through `exchange` (dropped if that exchange does not exist)."""

    message: Message
    reason: str
    queue_name: str
    exchange: str
    routing_key: str | None


@dataclass(frozen=True, slots=True)
class Dropped:
    """The message left the queue without a consumer or a dead-letter exchange."""

    message: Message
    reason: str


@dataclass(frozen=True, slots=True)
class Purged:
    count: int


Effect = Union[Enqueued, PublisherRejected, Delivered, DeadLetter, Dropped, Purged]

# --- wire form of commands (msgpack-ready lists; a message travels by id) ----------------


def command_to_wire(cmd: Command) -> list[Any]:
    match cmd:
        case Enqueue(message, now_ms, deliver_to, ack_required, redelivered):
            return ["enq", message.id, now_ms, deliver_to, ack_required, redelivered]
        case Deliver(now_ms, consumer, ack_required):
            return ["dlv", now_ms, consumer, ack_required]
        case Settle(seqs):
            return ["ack", list(seqs)]
        case Requeue(seqs, now_ms):
            return ["req", list(seqs), now_ms]
        case Reject(seqs):
            return ["rej", list(seqs)]
        case RequeueAll(now_ms):
            return ["reqall", now_ms]
        case Expire(now_ms):
            return ["exp", now_ms]
        case Purge():
            return ["purge"]
        case Reconfigure(settings, now_ms):
            return ["cfg", settings.to_wire(), now_ms]
        case Touch(now_ms):
            return ["touch", now_ms]
    raise AssertionError(f"unknown command {cmd!r}")


def command_from_wire(data: list[Any], message_by_id: Callable[[int], Message]) -> Command:
    """Decode `command_to_wire` output; `message_by_id` finds an enqueued message's record."""
    tag = data[0]
    if tag == "enq":
        return Enqueue(message_by_id(data[1]), data[2], data[3], data[4], data[5])
    if tag == "dlv":
        return Deliver(data[1], data[2], data[3])
    if tag == "ack":
        return Settle(tuple(data[1]))
    if tag == "req":
        return Requeue(tuple(data[1]), data[2])
    if tag == "rej":
        return Reject(tuple(data[1]))
    if tag == "reqall":
        return RequeueAll(data[1])
    if tag == "exp":
        return Expire(data[1])
    if tag == "purge":
        return Purge()
    if tag == "cfg":
        return Reconfigure(QueueSettings.from_wire(data[1]), data[2])
    if tag == "touch":
        return Touch(data[1])
    raise ValueError(f"unknown queue command tag {tag!r}")


# --- state ---------------------------------------------------------------------------------


class _Entry:
    """One message in this queue. Slotted: a backlog holds millions of these."""

    __slots__ = ("seq", "message", "expires_at", "deliveries")

    def __init__(self, seq: int, message: Message, expires_at: int | None) -> None:
        self.seq = seq
        self.message = message
        self.expires_at = expires_at
        self.deliveries = 0


class QueueState:
    """Ready and unacknowledged messages of one queue; see the module docstring."""

    def __init__(self, name: str, settings: QueueSettings, created_ms: int = 0) -> None:
        self.name = name
        self.settings = settings
        # One FIFO per priority level (a single one without x-max-priority).
        self._levels: list[deque[_Entry]] = [deque() for _ in range(settings.max_priority + 1)]
        self._unacked: dict[int, _Entry] = {}
        self._next_seq = 1
        self._ready_count = 0
        self._ready_bytes = 0
        self._unacked_bytes = 0
        self.last_used_ms = created_ms

    # --- reading -----------------------------------------------------------------------

    @property
    def messages_ready(self) -> int:
        return self._ready_count

    @property
    def messages_unacknowledged(self) -> int:
        return len(self._unacked)

    @property
    def messages(self) -> int:
        return self._ready_count + len(self._unacked)

    @property
    def message_bytes_ready(self) -> int:
        return self._ready_bytes

    @property
    def message_bytes_unacknowledged(self) -> int:
        return self._unacked_bytes

    @property
    def expires_at(self) -> int | None:
        """When the queue may be deleted as unused (if it still has no consumers)."""
        if self.settings.expires_ms is None:
            return None
        return self.last_used_ms + self.settings.expires_ms

    def next_expiry(self, now_ms: int) -> int | None:
        """When to send `Expire`: the head's expiry (now if already due), or None."""
        head = self._head_level()
        if head is None:
            return None
        expires_at = head[0].expires_at
        if expires_at is None:
            return None
        return max(expires_at, now_ms)

    def ready(self) -> Iterator[tuple[int, Message, bool]]:
        """(seq, message, redelivered) in delivery order; for inspection and tests."""
        for level in reversed(self._levels):
            for entry in level:
                yield entry.seq, entry.message, entry.deliveries > 0

    def unacked_seqs(self) -> list[int]:
        return sorted(self._unacked)

    def statistics(self) -> dict[str, int]:
        return {
            "messages_ready": self._ready_count,
            "messages_unacknowledged": len(self._unacked),
            "message_bytes_ready": self._ready_bytes,
            "message_bytes_unacknowledged": self._unacked_bytes,
        }

    # --- applying commands --------------------------------------------------------------

    def apply(self, cmd: Command) -> list[Effect]:
        effects: list[Effect] = []
        match cmd:
            case Enqueue():
                self._enqueue(cmd, effects)
            case Deliver(now_ms, consumer, ack_required):
                if consumer is None:
                    self.last_used_ms = now_ms
                self._expire_head(now_ms, effects)
                entry = self._pop_head()
                if entry is not None:
                    self._hand_out(entry, consumer, ack_required, effects)
                    self._expire_head(now_ms, effects)
            case Settle(seqs):
                for seq in seqs:
                    entry = self._unacked.pop(seq, None)
                    if entry is not None:
                        self._unacked_bytes -= entry.message.size
            case Requeue(seqs, now_ms):
                self._requeue(seqs, now_ms, effects)
            case Reject(seqs):
                for seq in seqs:
                    entry = self._unacked.pop(seq, None)
                    if entry is not None:
                        self._unacked_bytes -= entry.message.size
                        self._dead_letter(entry.message, REASON_REJECTED, effects)
            case RequeueAll(now_ms):
                self._requeue(tuple(self._unacked), now_ms, effects)
            case Expire(now_ms):
                self._expire_head(now_ms, effects)
            case Purge():
                count = self._ready_count
                for level in self._levels:
                    level.clear()
                self._ready_count = 0
                self._ready_bytes = 0
                effects.append(Purged(count))
            case Reconfigure(settings, now_ms):
                self._reconfigure(settings)
                self._drop_head_while_over(effects)
                self._expire_head(now_ms, effects)
            case Touch(now_ms):
                self.last_used_ms = now_ms
            case _:
                raise AssertionError(f"unknown command {cmd!r}")
        return effects

    # --- the steps ----------------------------------------------------------------------

    def _enqueue(self, cmd: Enqueue, effects: list[Effect]) -> None:
        message = cmd.message
        settings = self.settings
        if settings.overflow != OVERFLOW_DROP_HEAD and self._would_overflow(message):
            if settings.overflow == OVERFLOW_REJECT_PUBLISH_DLX:
                self._dead_letter(message, REASON_MAXLEN, effects, drop_silently=True)
            else:
                assert settings.overflow == OVERFLOW_REJECT_PUBLISH, settings.overflow
            effects.append(PublisherRejected(message))
            return
        seq = self._next_seq
        self._next_seq += 1
        entry = _Entry(seq, message, self._expiry_of(message, cmd.now_ms))
        if cmd.redelivered:
            entry.deliveries = 1
        effects.append(Enqueued(seq, message))
        if cmd.deliver_to is not None and self._ready_count == 0:
            self._hand_out(entry, cmd.deliver_to, cmd.ack_required, effects)
            return
        self._levels[self._level_of(message)].append(entry)
        self._ready_count += 1
        self._ready_bytes += message.size
        self._drop_head_while_over(effects)
        self._expire_head(cmd.now_ms, effects)

    def _requeue(self, seqs: Iterable[int], now_ms: int, effects: list[Effect]) -> None:
        by_level: dict[int, list[_Entry]] = {}
        for seq in seqs:
            entry = self._unacked.pop(seq, None)
            if entry is None:
                continue
            self._unacked_bytes -= entry.message.size
            self._ready_count += 1
            self._ready_bytes += entry.message.size
            by_level.setdefault(self._level_of(entry.message), []).append(entry)
        for level_index, entries in by_level.items():
            _merge_by_seq(self._levels[level_index], entries)
        if by_level:
            self._drop_head_while_over(effects)
            self._expire_head(now_ms, effects)

    def _hand_out(self, entry: _Entry, consumer: str | None, ack_required: bool, effects: list[Effect]) -> None:
        redelivered = entry.deliveries > 0
        entry.deliveries += 1
        if ack_required:
            self._unacked[entry.seq] = entry
            self._unacked_bytes += entry.message.size
        effects.append(
            Delivered(
                entry.seq,
                entry.message,
                consumer,
                redelivered,
                entry.deliveries,
                ack_required,
                self._ready_count,
            )
        )

    def _expire_head(self, now_ms: int, effects: list[Effect]) -> None:
        while True:
            level = self._head_level()
            if level is None:
                return
            expires_at = level[0].expires_at
            if expires_at is None or now_ms < expires_at:
                return
            entry = self._pop_head()
            assert entry is not None
            self._dead_letter(entry.message, REASON_EXPIRED, effects)

    def _drop_head_while_over(self, effects: list[Effect]) -> None:
        if self.settings.overflow != OVERFLOW_DROP_HEAD:
            return
        while self._over_limit():
            entry = self._pop_head()
            assert entry is not None
            self._dead_letter(entry.message, REASON_MAXLEN, effects)

    def _dead_letter(self, message: Message, reason: str, effects: list[Effect], drop_silently: bool = False) -> None:
        dlx = self.settings.dead_letter_exchange
        if dlx is not None:
            effects.append(DeadLetter(message, reason, self.name, dlx, self.settings.dead_letter_routing_key))
        elif not drop_silently:
            effects.append(Dropped(message, reason))

    def _reconfigure(self, settings: QueueSettings) -> None:
        if settings.max_priority != self.settings.max_priority:
            # x-max-priority is an argument, fixed at declare; a policy cannot change it.
            settings = replace(settings, max_priority=self.settings.max_priority)
        self.settings = settings

    # --- helpers ------------------------------------------------------------------------

    def _level_of(self, message: Message) -> int:
        top = self.settings.max_priority
        if top == 0:
            return 0
        return min(max(message.priority, 0), top)

    def _head_level(self) -> deque[_Entry] | None:
        if self._ready_count == 0:
            return None
        for level in reversed(self._levels):
            if level:
                return level
        raise AssertionError("ready count says non-empty but every level is empty")

    def _pop_head(self) -> _Entry | None:
        level = self._head_level()
        if level is None:
            return None
        entry = level.popleft()
        self._ready_count -= 1
        self._ready_bytes -= entry.message.size
        return entry

    def _expiry_of(self, message: Message, now_ms: int) -> int | None:
        ttl = self.settings.message_ttl_ms
        own = message.expiration_ms
        if ttl is None:
            ttl = own
        elif own is not None:
            ttl = min(ttl, own)
        return None if ttl is None else now_ms + ttl

    def _would_overflow(self, message: Message) -> bool:
        max_length = self.settings.max_length
        max_bytes = self.settings.max_length_bytes
        if max_length is not None and self._ready_count + 1 > max_length:
            return True
        return max_bytes is not None and self._ready_bytes + message.size > max_bytes

    def _over_limit(self) -> bool:
        max_length = self.settings.max_length
        max_bytes = self.settings.max_length_bytes
        if max_length is not None and self._ready_count > max_length:
            return True
        return max_bytes is not None and self._ready_bytes > max_bytes


def _merge_by_seq(level: deque[_Entry], entries: list[_Entry]) -> None:
    """Put requeued entries back in sequence order. Requeued messages were taken from the
    head, so usually all of them sort before the current head: that case is O(k)."""
    entries.sort(key=lambda e: e.seq)
    if not level or entries[-1].seq < level[0].seq:
        level.extendleft(reversed(entries))
        return
    # Unwind the head part that interleaves with the requeued entries, merge, put back.
    limit = entries[-1].seq
    taken: list[_Entry] = []
    while level and level[0].seq < limit:
        taken.append(level.popleft())
    merged: list[_Entry] = []
    i = j = 0
    while i < len(taken) and j < len(entries):
        if taken[i].seq < entries[j].seq:
            merged.append(taken[i])
            i += 1
        else:
            merged.append(entries[j])
            j += 1
    merged.extend(taken[i:])
    merged.extend(entries[j:])
    level.extendleft(reversed(merged))
