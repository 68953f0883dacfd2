"""The one way a session reaches a queue: by address, through a `QueueClient`.

A session knows a queue as (vhost, name). `Node.queue(vhost, name)` gives it the
queue's client: `LocalQueue` when this node leads the queue (method calls on its
`QueueLeader`), a remote client when another node does (the peer link). The
session talks to both through the same operations, so there is no path on which
a publish to a queue led elsewhere could be dropped: the client either carries
it to the queue or answers the publisher's confirm with a nack.

Delivery handles are (`QueueRef`, sequence): the queue's address and the
sequence its leader gave the delivery, never a Python object of the queue's.
A `QueueRef` also names the queue's incarnation, so an ack of a delivery from a
queue since deleted and declared again under the same name settles nothing.

This module imports neither the session nor the leader: it is the seam between
them (`broker.session` ↔ `broker.node` ↔ `broker.queue_leader` no longer import
each other for queue operations).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol

if TYPE_CHECKING:
    from broker.arguments import Refusal
    from broker.message import Message

# Outcome callback of a publish: True = accepted (and durable if it had to be), False = rejected.
Confirm = Callable[[bool], None]


@dataclass(frozen=True, slots=True, eq=False)
class QueueRef:
    """One incarnation of a queue, as delivery handles name it. Compared by identity: each
    node keeps one per incarnation it knows (the leader its own, a remote client the one it
    learnt), so grouping handles by queue hashes no strings."""

    vhost: str
    name: str
    # Chosen by the leader when the queue is created (random, so a restarted home node
    # does not reuse one): a queue deleted and declared again is another incarnation.
    incarnation: int


class ConsumerEndpoint(Protocol):
    """Where a queue's deliveries to one consumer go: a session's channel on this node, or
    the proxy of a consumer on another node. `deliver` returns the delivery tag, or None
    when the consumer is gone (the queue then takes the message back)."""

    def deliver(self, channel: int, tag: str, handle: Any, m: "Message", redelivered: bool) -> int | None: ...

    def can_deliver(self, channel: int, tag: str) -> bool: ...

    def room(self, channel: int, tag: str) -> int | None:
        """How many more deliveries the consumer may be given now (None: no limit)."""
        ...

    def cancel_consumer(self, channel: int, tag: str) -> None: ...


@dataclass(slots=True, eq=False)
class ConsumerRef:
    """Where a consumer lives: its endpoint, channel number and tag."""

    session: ConsumerEndpoint
    channel: int
    tag: str
    no_ack: bool


@dataclass(frozen=True, slots=True)
class Got:
    """A message basic.get took: settle it by (`ref`, `seq`) unless taken with no_ack."""

    ref: QueueRef
    seq: int
    message: "Message"
    redelivered: bool
    remaining: int


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """What queue.declare-ok and queue.delete report and check."""

    messages: int  # ready, as RabbitMQ's backing queue length (unacked ones are not counted)
    consumers: int


@dataclass(frozen=True, slots=True)
class QueueUnavailable:
    """The queue's leader could not be asked (its node unreachable, the call failed)."""

    text: str  # why, without the reply code's name: the session answers 404 NOT_FOUND with it


class QueueClient(Protocol):
    """What a session does with a queue, wherever its leader runs. Operations a client must
    answer at once (its publishes' confirms come later, through `confirm`) are plain calls;
    those whose answer it waits for are coroutines."""

    vhost: str
    name: str

    def publish(self, message: "Message", now_ms: int, confirm: Confirm | None) -> None: ...

    def backlogged(self) -> bool:
        """Worth pausing this publisher for (see `congested`)."""
        ...

    @property
    def congested(self) -> bool: ...

    def pause_publisher(self, max_seconds: float) -> Awaitable[None]: ...

    async def add_consumer(self, ref: ConsumerRef, priority: int, exclusive: bool,
                           ) -> "Refusal | QueueUnavailable | None": ...

    def remove_consumer(self, endpoint: ConsumerEndpoint, channel: int, tag: str, now_ms: int) -> None: ...

    def remove_channel(self, endpoint: ConsumerEndpoint, channel: int) -> None:
        """Drop the channel's consumers; `consumers_gone` follows once its deliveries are back."""
        ...

    def consumers_gone(self, now_ms: int) -> None:
        """Consumers went: dispatch to the others, and delete an auto-delete queue left without any."""
        ...

    def dispatch(self, now_ms: int) -> None:
        """Credit may have come back (an ack, basic.qos, a drained socket): deliver what it allows."""
        ...

    async def get(self, now_ms: int, no_ack: bool) -> Got | QueueUnavailable | None: ...

    # Settlement of deliveries by the sequences `ref`, an incarnation `holds` said is current, gave them.
    def settle(self, ref: QueueRef, seqs: tuple[int, ...], now_ms: int) -> None: ...

    def requeue(self, ref: QueueRef, seqs: tuple[int, ...], now_ms: int) -> None: ...

    def reject(self, ref: QueueRef, seqs: tuple[int, ...], now_ms: int) -> None: ...

    async def purge(self, now_ms: int) -> int | QueueUnavailable: ...

    async def counts(self, now_ms: int, touch: bool) -> QueueCounts | QueueUnavailable:
        """Ready messages and consumers; `touch` renews x-expires (a declare is a use)."""
        ...

    def holds(self, ref: QueueRef) -> bool:
        """Is `ref` this queue's current incarnation (or one this client cannot tell apart)?"""
        ...


def by_queue(handles: tuple[Any, ...]) -> dict[QueueRef, tuple[int, ...]]:
    """Delivery handles grouped by the queue incarnation they name, in order (None: no_ack)."""
    grouped: dict[QueueRef, list[int]] = {}
    for h in handles:
        if h is None:
            continue
        ref, seq = h
        seqs = grouped.get(ref)
        if seqs is None:
            grouped[ref] = [seq]
        else:
            seqs.append(seq)
    return {ref: tuple(seqs) for ref, seqs in grouped.items()}
