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

RabbitMQ 3.10 quorum-queue behaviour (`rabbit_fifo`), for `settings.queue_type ==
"quorum"` only: every time a delivered message is returned (`Requeue` for a
reject/nack with requeue, basic.recover or a closed channel; `RequeueAll` on
failover) its delivery count grows by one, and with a delivery limit N a message
whose count would exceed N is dead-lettered with reason "delivery_limit" (or
dropped without a dead-letter exchange) instead of requeued. The count needs no
field of its own: an entry's `deliveries` counts hand-outs, and every earlier
hand-out of a message still in the queue ended in a return (one without
acknowledgement removes it), so the count is the entry's `deliveries` — which
also counts the "may have been delivered" of a message recovered after a restart,
the same as its redelivered flag does. `Delivered.returns` is that count for the
delivery (the shell's `x-delivery-count` header).

Memory: each message in memory costs one slotted `QueueEntry` (sequence
number, message, expiry, delivery count) in a deque; no per-message dicts.
A backlog can reach millions of messages, so with `PagingLimits` a queue keeps
only a window of ready messages in memory and pages whole entries (message
included) out to a `PageStore`, the way RabbitMQ's variable queue keeps a
"delta" of messages that exist only on disk. Each priority level is

    head (deque, in memory) | pages (on disk, a descriptor each) | tail (deque, in memory)

in sequence order: deliveries, expiry and drop-head take from the head;
publishes append to the head while the level has no pages, to the tail once
it has. A page descriptor keeps only what the state's decisions need without
the messages: how many and how many bytes. Nothing is ever needed from the
middle of a level: ready messages leave only from the head of the queue (or
all at once, by purge), and a requeued message sorts before every page except
pages of messages requeued after it was delivered (few: read back in to
merge). TTL is decided at the head, which is in
memory whenever it is looked at, so per-message TTL and priorities behave as
without paging.

The policy is pure and lives here; only the bytes live behind `PageStore`,
which the shell implements over its store (`broker.paging.StorePages`) and
tests with a dict (`MemoryPages`). After every command the state pages the
head level in ahead of consumers (one page when its in-memory head falls
under a page) and, while the window is exceeded, pages out page-sized runs:
newest first (tails, then the backs of heads), lowest priority first, never
the first page of the head level. Inside a command, if the head level's head
runs empty (a long expiry or drop-head run), the next page is read at once:
that is why the page store is called rather than asked through effects — a
command must finish with the same effects whether or not it paged. Paging is
a replica's local affair: `apply` returns exactly the effects it would
return without paging (the model test checks this with tiny windows).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Iterator, Protocol, Union

from broker.arguments import (
    OVERFLOW_DROP_HEAD,
    OVERFLOW_REJECT_PUBLISH,
    OVERFLOW_REJECT_PUBLISH_DLX,
    QueueSettings,
)
from broker.deadletter import REASON_DELIVERY_LIMIT, REASON_EXPIRED, REASON_MAXLEN, REASON_REJECTED
from broker.message import Message

# --- commands ------------------------------------------------------------------------------
# Records are frozen, except the four made once or twice per message (Enqueue, Deliver,
# Enqueued, Delivered): building a frozen record costs four times as much, and nothing
# changes or hashes them after they are made.


@dataclass(slots=True)
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


@dataclass(slots=True)
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


@dataclass(slots=True)
class Enqueued:
    """The publish was accepted (confirm it once the command is committed)."""

    seq: int
    message: Message


@dataclass(frozen=True, slots=True)
class PublisherRejected:
    """reject-publish / reject-publish-dlx overflow: basic.nack the publisher."""

    message: Message


@dataclass(slots=True)
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

    @property
    def returns(self) -> int:
        """How many times the message came back before this delivery: a quorum queue's
        `x-delivery-count` (every earlier hand-out of a message still queued was returned)."""
        return self.delivery_count - 1


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


class QueueEntry:
    """One message in this queue. Slotted: a backlog holds millions of these."""

    __slots__ = ("seq", "message", "expires_at", "deliveries")

    def __init__(self, seq: int, message: Message, expires_at: int | None, deliveries: int = 0) -> None:
        self.seq = seq
        self.message = message
        self.expires_at = expires_at
        self.deliveries = deliveries



# --- paging --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PagingLimits:
    """The in-memory window of a queue's ready messages, and the size of a page.

    A page is the unit written and read: at most `page_messages` entries and, past
    the first entry, at most `page_bytes` of bodies. The ready messages in memory stay
    under about `window_messages` + one page (and `window_bytes` + one page of
    bytes), plus one page per non-empty priority level below the head level at worst
    while requeues refill heads.
    """

    window_messages: int
    window_bytes: int
    page_messages: int
    page_bytes: int

    @classmethod
    def window(cls, messages: int = 10_000, bytes_: int = 32 << 20) -> "PagingLimits":
        """Pages of a quarter of the window, at most 1,000 messages or 4 MiB."""
        assert messages >= 1 and bytes_ >= 1
        return cls(messages, bytes_, max(1, min(1000, messages // 4)), max(1, min(4 << 20, bytes_ // 4)))


class PageStore(Protocol):
    """Where paged-out entries live. `write_page` may return before the bytes are
    durable (paged data need not survive a crash), but `read_page`/`peek_page` must
    return the entries at once, equal in seq, message content and id, expiry and
    delivery count; entries handed to `write_page` belong to the store."""

    def write_page(self, entries: list[QueueEntry]) -> Any: ...

    def read_page(self, ref: Any) -> list[QueueEntry]:
        """The page's entries; the page leaves the store."""
        ...

    def peek_page(self, ref: Any) -> list[QueueEntry]:
        """The page's entries for inspection; the page stays."""
        ...

    def drop_page(self, ref: Any) -> None:
        """The page's messages left the queue unread (purge)."""
        ...


class MemoryPages:
    """A `PageStore` in a dict: for tests and for measuring the policy."""

    def __init__(self) -> None:
        self.pages: dict[int, list[QueueEntry]] = {}
        self._next = 0
        self.reads = 0
        self.writes = 0

    def write_page(self, entries: list[QueueEntry]) -> int:
        self._next += 1
        self.writes += 1
        self.pages[self._next] = list(entries)
        return self._next

    def read_page(self, ref: int) -> list[QueueEntry]:
        self.reads += 1
        return self.pages.pop(ref)

    def peek_page(self, ref: int) -> list[QueueEntry]:
        return list(self.pages[ref])

    def drop_page(self, ref: int) -> None:
        del self.pages[ref]


class _Page:
    """A run of consecutive entries of one level that lives in the page store."""

    __slots__ = ("ref", "count", "bytes", "first_seq", "last_seq")

    def __init__(self, ref: Any, count: int, size: int, first_seq: int, last_seq: int) -> None:
        self.ref = ref
        self.count = count
        self.bytes = size
        self.first_seq = first_seq
        self.last_seq = last_seq


class _Level:
    """The ready messages of one priority level: head | pages | tail, in seq order.
    Invariant: the tail is empty whenever there are no pages."""

    __slots__ = ("head", "head_bytes", "pages", "tail", "tail_bytes")

    def __init__(self) -> None:
        self.head: deque[QueueEntry] = deque()
        self.head_bytes = 0
        self.pages: deque[_Page] = deque()
        self.tail: deque[QueueEntry] = deque()
        self.tail_bytes = 0

    def __bool__(self) -> bool:
        # The tail is only ever non-empty with pages, so head or pages says it all.
        return bool(self.head) or bool(self.pages)


class QueueState:
    """Ready and unacknowledged messages of one queue; see the module docstring.

    With `paging` and `pages` the ready messages beyond the window live in `pages`;
    without them everything stays in memory (the default, and a replica's choice:
    paging never changes what `apply` returns)."""

    def __init__(self, name: str, settings: QueueSettings, created_ms: int = 0,
                 paging: PagingLimits | None = None, pages: PageStore | None = None) -> None:
        assert (paging is None) == (pages is None), "paging needs both limits and a page store"
        self.name = name
        self.settings = settings
        # One level per priority (a single one without x-max-priority).
        self._levels: list[_Level] = [_Level() for _ in range(settings.max_priority + 1)]
        self._unacked: dict[int, QueueEntry] = {}
        self._next_seq = 1
        self._ready_count = 0
        self._ready_bytes = 0
        self._unacked_bytes = 0
        self.last_used_ms = created_ms
        self._paging = paging
        self._pages = pages
        # Ready entries held in memory (heads and tails); the rest are in pages.
        self._in_memory = 0
        self._in_memory_bytes = 0

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
    def messages_paged_out(self) -> int:
        return self._ready_count - self._in_memory

    @property
    def message_bytes_paged_out(self) -> int:
        return self._ready_bytes - self._in_memory_bytes

    @property
    def expires_at(self) -> int | None:
        """When the queue may be deleted as unused (if it still has no consumers)."""
        if self.settings.expires_ms is None:
            return None
        return self.last_used_ms + self.settings.expires_ms

    def next_expiry(self, now_ms: int) -> int | None:
        """When to send `Expire`: the head's expiry (now if already due), or None."""
        level = self._head_level()
        if level is None:
            return None
        expires_at = level.head[0].expires_at
        if expires_at is None:
            return None
        return max(expires_at, now_ms)

    def ready(self) -> Iterator[tuple[int, Message, bool]]:
        """(seq, message, redelivered) in delivery order; for inspection and tests
        (it reads every page, so not for a hot path)."""
        for level in reversed(self._levels):
            for entries in self._level_parts(level):
                for entry in entries:
                    yield entry.seq, entry.message, entry.deliveries > 0

    def ready_in_memory(self) -> Iterator[Message]:
        """The ready messages held in memory, in no particular order."""
        for level in self._levels:
            for entry in level.head:
                yield entry.message
            for entry in level.tail:
                yield entry.message

    def unacked_seqs(self) -> list[int]:
        return sorted(self._unacked)

    def unacked_messages(self, seqs: Iterable[int]) -> list[Message]:
        """The messages of those of `seqs` that are delivered and unsettled."""
        unacked = self._unacked
        return [unacked[seq].message for seq in seqs if seq in unacked]

    def statistics(self) -> dict[str, int]:
        return {
            "messages_ready": self._ready_count,
            "messages_unacknowledged": len(self._unacked),
            "message_bytes_ready": self._ready_bytes,
            "message_bytes_unacknowledged": self._unacked_bytes,
            "messages_paged_out": self._ready_count - self._in_memory,
            "message_bytes_paged_out": self._ready_bytes - self._in_memory_bytes,
        }

    # --- snapshots ----------------------------------------------------------------------

    def snapshot_parts(self) -> tuple[int, list[list[QueueEntry]], list[QueueEntry]]:
        """What, besides `name`, `settings` and `last_used_ms`, decides everything this
        state does next: (the next sequence number, each priority level's ready entries
        in delivery order, lowest level first, the unacknowledged entries by seq). The
        entries are the state's own: read them, do not keep or change them.
        (`broker.queue_snapshot` turns this into bytes.)

        A replica's snapshot holds every message, so a state with messages paged out
        is refused with ValueError: a replicated queue's state runs without paging."""
        paged_out = self._ready_count - self._in_memory
        if paged_out:
            raise ValueError(
                f"queue '{self.name}' has {paged_out} messages paged out: only a state without "
                f"paged-out messages (built with paging=None) can be snapshotted")
        levels = [list(level.head) for level in self._levels]
        unacked = [self._unacked[seq] for seq in sorted(self._unacked)]
        return self._next_seq, levels, unacked

    @classmethod
    def restored(cls, name: str, settings: QueueSettings, last_used_ms: int, next_seq: int,
                 levels: list[list[QueueEntry]], unacked: list[QueueEntry]) -> "QueueState":
        """The state `snapshot_parts` described (without paging); takes the entries."""
        state = cls(name, settings, last_used_ms)
        if len(levels) != len(state._levels):
            raise ValueError(f"snapshot has {len(levels)} priority levels, settings give {len(state._levels)}")
        ready_count = ready_bytes = 0
        for level, entries in zip(state._levels, levels):
            size = sum(e.message.size for e in entries)
            level.head.extend(entries)
            level.head_bytes = size
            ready_count += len(entries)
            ready_bytes += size
        for entry in unacked:
            state._unacked[entry.seq] = entry
            state._unacked_bytes += entry.message.size
        seqs = [e.seq for entries in levels for e in entries] + [e.seq for e in unacked]
        if len(set(seqs)) != len(seqs) or any(seq >= next_seq or seq < 1 for seq in seqs):
            raise ValueError("snapshot entries repeat a sequence number or use one not yet given out")
        if any(a.seq >= b.seq for entries in levels for a, b in zip(entries, entries[1:])):
            raise ValueError("snapshot's ready entries are out of sequence order")
        state._next_seq = next_seq
        state._ready_count = state._in_memory = ready_count
        state._ready_bytes = state._in_memory_bytes = ready_bytes
        return state

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
                    delivered = effects[-1]
                    self._expire_head(now_ms, effects)
                    if consumer is None:
                        # basic.get-ok's message_count counts what is left once the expired
                        # messages behind the fetched one are gone, as RabbitMQ's does.
                        delivered.remaining = self._ready_count  # type: ignore[union-attr]
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
                # In seq order (rabbit_fifo returns a consumer's messages sorted by id): the
                # order of delivery-limit dead-letters must not depend on how the unacked
                # table was filled, which a snapshot does not keep.
                self._requeue(sorted(self._unacked), now_ms, effects)
            case Expire(now_ms):
                self._expire_head(now_ms, effects)
            case Purge():
                count = self._ready_count
                if self._pages is not None:
                    for level in self._levels:
                        for page in level.pages:
                            self._pages.drop_page(page.ref)
                self._levels = [_Level() for _ in self._levels]
                self._ready_count = 0
                self._ready_bytes = 0
                self._in_memory = 0
                self._in_memory_bytes = 0
                effects.append(Purged(count))
            case Reconfigure(settings, now_ms):
                self._reconfigure(settings)
                self._drop_head_while_over(effects)
                self._expire_head(now_ms, effects)
            case Touch(now_ms):
                self.last_used_ms = now_ms
            case _:
                raise AssertionError(f"unknown command {cmd!r}")
        if self._paging is not None:
            self._rebalance(self._paging)
        return effects

    def enqueue_delivered(self, message: Message, now_ms: int, consumer: str, ack_required: bool) -> int | None:
        """`apply(Enqueue(message, now_ms, consumer, ack_required))` in its common outcome,
        without building the command and its effects: nothing is ready and the publish is
        not refused for overflow, so the message goes straight to `consumer`. Returns its
        seq; the effects are then exactly [Enqueued(seq, message), Delivered(seq, message,
        consumer, False, 1, ack_required, 0)]. Returns None, having changed nothing, when
        the outcome would be anything else: the caller applies the command."""
        if self._ready_count or (self.settings.overflow != OVERFLOW_DROP_HEAD and self._would_overflow(message)):
            return None
        seq = self._next_seq
        self._next_seq = seq + 1
        if ack_required:
            self._unacked[seq] = QueueEntry(seq, message, self._expiry_of(message, now_ms), 1)
            self._unacked_bytes += message.size
        return seq

    def deliver_ready(self, now_ms: int, consumer: str,
                      ack_required: bool) -> tuple[int, Message, bool, int] | None:
        """`apply(Deliver(now_ms, consumer, ack_required))` in its common outcome, without
        building the command and its effects: the head message goes to `consumer` and
        nothing expires before or after it. Returns (seq, message, redelivered,
        delivery_count); the effects are then exactly [Delivered(seq, message, consumer,
        redelivered, delivery_count, ack_required, messages_ready)]. Returns None when
        the outcome could be anything else (the caller applies the command); nothing
        observable has changed then."""
        level = self._head_level()
        if level is None or len(level.head) < 2:
            return None
        first, second = level.head[0], level.head[1]
        if (first.expires_at is not None and now_ms >= first.expires_at) or (
                second.expires_at is not None and now_ms >= second.expires_at):
            return None
        entry = self._pop_head()
        assert entry is first
        redelivered = entry.deliveries > 0
        entry.deliveries += 1
        if ack_required:
            self._unacked[entry.seq] = entry
            self._unacked_bytes += entry.message.size
        if self._paging is not None:
            self._rebalance(self._paging)
        return entry.seq, entry.message, redelivered, entry.deliveries

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
        entry = QueueEntry(seq, message, self._expiry_of(message, cmd.now_ms))
        if cmd.redelivered:
            entry.deliveries = 1
        effects.append(Enqueued(seq, message))
        if cmd.deliver_to is not None and self._ready_count == 0:
            self._hand_out(entry, cmd.deliver_to, cmd.ack_required, effects)
            return
        level = self._levels[self._level_of(message)]
        size = message.size
        if level.pages:
            level.tail.append(entry)
            level.tail_bytes += size
        else:
            level.head.append(entry)
            level.head_bytes += size
        self._in_memory += 1
        self._in_memory_bytes += size
        self._ready_count += 1
        self._ready_bytes += size
        self._drop_head_while_over(effects)
        self._expire_head(cmd.now_ms, effects)

    def _requeue(self, seqs: Iterable[int], now_ms: int, effects: list[Effect]) -> None:
        by_level: dict[int, list[QueueEntry]] = {}
        settings = self.settings
        # A quorum queue's delivery limit: this return makes the count `deliveries`.
        limit = settings.delivery_limit if settings.queue_type == "quorum" else None
        for seq in seqs:
            entry = self._unacked.pop(seq, None)
            if entry is None:
                continue
            size = entry.message.size
            self._unacked_bytes -= size
            if limit is not None and entry.deliveries > limit:
                self._dead_letter(entry.message, REASON_DELIVERY_LIMIT, effects)
                continue
            self._ready_count += 1
            self._ready_bytes += size
            self._in_memory += 1
            self._in_memory_bytes += size
            by_level.setdefault(self._level_of(entry.message), []).append(entry)
        for level_index, entries in by_level.items():
            level = self._levels[level_index]
            # A message goes back among the messages it was published with. Pages older
            # than it can only hold messages requeued after it was delivered (at most
            # the unacknowledged ones), so reading them in is bounded.
            newest = max(e.seq for e in entries)
            while level.pages and level.pages[0].first_seq < newest:
                self._page_in(level)
            level.head_bytes += sum(e.message.size for e in entries)
            _merge_by_seq(level.head, entries)
        if by_level:
            self._drop_head_while_over(effects)
            self._expire_head(now_ms, effects)

    def _hand_out(self, entry: QueueEntry, consumer: str | None, ack_required: bool, effects: list[Effect]) -> None:
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
            expires_at = level.head[0].expires_at
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

    # --- paging -------------------------------------------------------------------------

    def _rebalance(self, limits: PagingLimits) -> None:
        """Page the head level in ahead of consumers, then page out while over the window."""
        top = self._head_level()
        if top is None:
            return
        while top.pages and len(top.head) < limits.page_messages and top.head_bytes < limits.page_bytes:
            self._page_in(top)
        while self._in_memory > limits.window_messages or self._in_memory_bytes > limits.window_bytes:
            if not self._page_out(limits, top):
                return

    def page_in_all(self) -> None:
        """Read every paged-out message back into memory (a queue about to become replicated:
        its state is then one snapshot). Its pages stay in the page store until dropped."""
        for level in self._levels:
            while level.pages:
                self._page_in(level)

    def _page_in(self, level: _Level) -> None:
        assert self._pages is not None
        page = level.pages.popleft()
        entries = self._pages.read_page(page.ref)
        assert len(entries) == page.count and entries[0].seq == page.first_seq, "page store returned another page"
        level.head.extend(entries)
        level.head_bytes += page.bytes
        self._in_memory += page.count
        self._in_memory_bytes += page.bytes
        if not level.pages and level.tail:
            level.head.extend(level.tail)
            level.head_bytes += level.tail_bytes
            level.tail.clear()
            level.tail_bytes = 0

    def _page_out(self, limits: PagingLimits, top: _Level) -> bool:
        """Write one page-sized run of the entries needed last; False if none may go."""
        for level in self._levels:  # lowest priority first: delivered last
            if level.tail:
                tail = level.tail
                chunk = [tail.popleft()]
                size = chunk[0].message.size
                while tail and len(chunk) < limits.page_messages and size + tail[0].message.size <= limits.page_bytes:
                    entry = tail.popleft()
                    chunk.append(entry)
                    size += entry.message.size
                level.tail_bytes -= size
                level.pages.append(self._write_page(chunk, size))
                return True
            head = level.head
            chunk = []
            size = 0
            while head and len(chunk) < limits.page_messages:
                entry_size = head[-1].message.size
                if chunk and size + entry_size > limits.page_bytes:
                    break
                if level is top and len(head) - 1 < limits.page_messages \
                        and level.head_bytes - entry_size < limits.page_bytes:
                    break  # keep a page of the head level for the next deliveries
                chunk.append(head.pop())
                size += entry_size
                level.head_bytes -= entry_size
            if chunk:
                chunk.reverse()
                level.pages.appendleft(self._write_page(chunk, size))
                return True
        return False

    def _write_page(self, chunk: list[QueueEntry], size: int) -> _Page:
        assert self._pages is not None
        first_seq, last_seq = chunk[0].seq, chunk[-1].seq
        count = len(chunk)
        ref = self._pages.write_page(chunk)
        self._in_memory -= count
        self._in_memory_bytes -= size
        return _Page(ref, count, size, first_seq, last_seq)

    def _level_parts(self, level: _Level) -> Iterator[Iterable[QueueEntry]]:
        yield level.head
        for page in level.pages:
            assert self._pages is not None
            yield self._pages.peek_page(page.ref)
        yield level.tail

    # --- helpers ------------------------------------------------------------------------

    def _level_of(self, message: Message) -> int:
        top = self.settings.max_priority
        if top == 0:
            return 0
        return min(max(message.priority, 0), top)

    def _head_level(self) -> _Level | None:
        """The highest non-empty level, its first page read in if its head ran out."""
        if self._ready_count == 0:
            return None
        for level in reversed(self._levels):
            if level.head:
                return level
            if level.pages:
                self._page_in(level)
                return level
        raise AssertionError("ready count says non-empty but every level is empty")

    def _pop_head(self) -> QueueEntry | None:
        level = self._head_level()
        if level is None:
            return None
        entry = level.head.popleft()
        size = entry.message.size
        level.head_bytes -= size
        self._in_memory -= 1
        self._in_memory_bytes -= size
        self._ready_count -= 1
        self._ready_bytes -= size
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


def _merge_by_seq(level: deque[QueueEntry], entries: list[QueueEntry]) -> None:
    """Put requeued entries back in sequence order. Requeued messages were taken from the
    head, so usually all of them sort before the current head: that case is O(k)."""
    entries.sort(key=lambda e: e.seq)
    if not level or entries[-1].seq < level[0].seq:
        level.extendleft(reversed(entries))
        return
    # Unwind the head part that interleaves with the requeued entries, merge, put back.
    limit = entries[-1].seq
    taken: list[QueueEntry] = []
    while level and level[0].seq < limit:
        taken.append(level.popleft())
    merged: list[QueueEntry] = []
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
