"""`QueueLeader`: the shell around one queue's `QueueState` on the node that leads it.

The leader turns what channels ask (publish, consume, get, ack, reject,
cancel, purge) into queue commands, applies them, and carries out the effects:
confirming publishers, pushing deliveries into consumers' connections,
dead-lettering through the node's router, and making persistent messages of
durable queues durable before they are confirmed.

Replication of a queue with one replica degenerates to its local log: Raft's
commit rule for a single voter is "persisted here", so the leader applies a
command at once and, for what must survive a restart (a persistent message in
a durable queue), writes it through the node's group-commit writer and
confirms only after that fsync. Many queues' writes share one transaction and
one fsync. Acks remove persisted messages in the same batched way (no wait:
an ack lost in a crash only means a redelivery, which AMQP allows). A persisted
message's key is the queue's prefix and the message id (ids grow in publish
order, so the key order is the queue order), which keeps no per-message map.

Backlogs beyond the node's `queue_memory_window` are paged out by `QueueState`
into `broker.paging.StorePages`: a persisted message pages out as its id alone.

Everything here runs in the node's trio thread and never blocks: no per-message
task or coroutine; deliveries are bytes appended to the consumer connection's
output buffer, whose writer task is woken.

A quorum queue's message that was returned before is delivered with header
`x-delivery-count` (its returns, `Delivered.returns`), and a basic.get from a
quorum queue always carries it, 0 included: measured against RabbitMQ 3.10.8,
whose `rabbit_quorum_queue` adds it to every dequeue but to consumer deliveries
only once the message has a delivery count. The header goes on a copy
(`with_delivery_count`): the queued `Message` is shared by fan-out copies and
dead-lettered as it was published (RabbitMQ's dead-lettered copy has no
x-delivery-count either). A first delivery, the common case, costs nothing.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from broker.amqp.codec import Long
from broker.arguments import QueueSettings
from broker.dispatch import Consumer, ConsumerSet
from broker.message import Message
from broker.queue_client import Confirm, ConsumerEndpoint, ConsumerRef, QueueRef
from broker.paging import MESSAGES_TABLE, StorePages, decode_persisted, encode_persisted, persisted_key
from broker.queue import (
    DeadLetter,
    Deliver,
    Delivered,
    Enqueue,
    Enqueued,
    Expire,
    Purge,
    Purged,
    PagingLimits,
    PublisherRejected,
    QueueState,
    Reconfigure,
    Reject,
    Requeue,
    Settle,
    Touch,
)


# Publisher flow: ready messages (with consumers attached) above which publishers pause,
# and the level at which they are let go again.
FLOW_HIGH = 5_000
FLOW_LOW = 1_000

if TYPE_CHECKING:
    from broker.node import Node

__all__ = ["MESSAGES_TABLE", "ConsumerRef", "QueueLeader", "decode_persisted", "queue_key_prefix"]


def with_delivery_count(message: Message, count: int) -> Message:
    """A copy of `message` whose headers carry `x-delivery-count` (sorted by key, as
    rabbit_basic:add_header leaves a table); the id stays, it names the same body."""
    props = message.properties
    headers = dict(props.headers or {})
    headers["x-delivery-count"] = Long(count)
    headers = dict(sorted(headers.items(), key=lambda kv: kv[0].encode("utf-8", "surrogateescape")))
    return dataclasses.replace(message, properties=dataclasses.replace(props, headers=headers), raw_properties=None)


def queue_key_prefix(vhost: str, name: str) -> bytes:
    """Store key prefix of a durable queue's persisted messages."""
    # Names are AMQP octets; the codec carries non-UTF-8 ones as surrogate escapes.
    return vhost.encode("utf-8", "surrogateescape") + b"\x00" + name.encode("utf-8", "surrogateescape") + b"\x00"


@dataclass(slots=True)
class QueueCounters:
    """Running totals of what happened to a queue's messages, in RabbitMQ's message_stats
    names. Only incremented here; the management sampler reads them at its own pace and
    turns differences into rates, so no clock is read on the message path."""

    publish: int = 0
    deliver: int = 0  # to consumers that acknowledge
    deliver_no_ack: int = 0
    get: int = 0  # basic.get answered with a message to acknowledge
    get_no_ack: int = 0
    get_empty: int = 0
    redeliver: int = 0
    ack: int = 0


class QueueLeader:
    def __init__(self, node: "Node", vhost: str, name: str, durable: bool, settings: QueueSettings,
                 now_ms: int) -> None:
        self.node = node
        self.vhost = vhost
        self.name = name
        self.durable = durable
        # What delivery handles name: this queue, this incarnation of it.
        self.ref = QueueRef(vhost, name, random.getrandbits(62))
        self._prefix = queue_key_prefix(vhost, name)
        window = node.settings.queue_memory_window
        self.pages: StorePages | None = None
        paging = None
        if window:
            paging = PagingLimits.window(window, node.settings.queue_memory_window_bytes)
            self.pages = StorePages(node, self._prefix, durable)
        self.state = QueueState(name, settings, now_ms, paging=paging, pages=self.pages)
        self.consumers = ConsumerSet(name, vhost, single_active=settings.single_active_consumer)
        self.refs: dict[str, ConsumerRef] = {}
        self.had_consumers = False
        self.deleted = False
        self.counters = QueueCounters()
        self._dispatching = False
        # Publishers waiting for this queue's consumers to catch up (see `congested`).
        self._uncongested: trio.Event | None = None
        # `deliveries` when a publisher's flow pause last passed without a single delivery
        # (-1: never): consumers that took nothing since then are stuck, not falling behind
        # (see `congested`).
        self._deliveries_when_stuck = -1
        # Why the store last refused a write of this queue's (None: no failure since the
        # store last took a write); `leveretctl list_queues` shows it as the queue's state.
        self.store_error: str | None = None

    # ------------------------------------------------------------------ info

    @property
    def deliveries(self) -> int:
        """Messages handed to consumers so far."""
        return self.counters.deliver + self.counters.deliver_no_ack

    @property
    def settings(self) -> QueueSettings:
        return self.state.settings

    def consumer_count(self) -> int:
        return len(self.consumers)

    def message_count(self) -> int:
        return self.state.messages_ready

    def take_over(self, other: "QueueLeader") -> None:
        """Serve on in place of `other`, this node's previous shell of the same queue (it
        became, or stopped being, replicated): its consumers, delivery handles (the same
        incarnation, so unsettled deliveries settle here) and counters."""
        self.ref = other.ref
        self.consumers, other.consumers = other.consumers, ConsumerSet(self.name, self.vhost)
        self.refs, other.refs = other.refs, {}
        self.counters = other.counters
        self.had_consumers = other.had_consumers

    # ------------------------------------------------------------------ publisher flow

    def backlogged(self) -> bool:
        """Past the level at which a publisher to this queue is worth pausing (`congested`
        decides whether it is paused)."""
        return self.state.messages_ready > FLOW_HIGH

    @property
    def congested(self) -> bool:
        """Consumers are attached but falling behind: the backlog is growing past what
        they take. Publishers feeding the queue then pause reading (RabbitMQ's credit
        flow in spirit), so the backlog stays in memory instead of being paged out and
        the consumers get the CPU. Queues without consumers are never congested: a
        backlog with nobody reading is paged, not throttled. Nor are queues whose
        consumers take nothing at all (no credit: a prefetch they never ack, or a
        connection whose socket does not drain): throttling publishers would not help
        them, so such a backlog is paged as well. That is judged by deliveries, not by
        anything a consumer's connection shows, so it holds for a consumer anywhere."""
        return (self.state.messages_ready > FLOW_HIGH and len(self.consumers) > 0
                and self.deliveries != self._deliveries_when_stuck)

    async def pause_publisher(self, max_seconds: float) -> None:
        """A publisher to this congested queue waits until its consumers bring the backlog
        down to FLOW_LOW, `max_seconds` at most. A whole pause without one delivery means
        the consumers take nothing: the queue is not congested again until they take one."""
        deliveries = self.deliveries
        if self._uncongested is None:
            self._uncongested = trio.Event()
        with trio.move_on_after(max_seconds) as waited:
            await self._uncongested.wait()
        if waited.cancelled_caught and self.deliveries == deliveries:
            self._deliveries_when_stuck = deliveries
            self._release_publishers()

    def _release_publishers(self) -> None:
        if self._uncongested is not None and (
                self.state.messages_ready <= FLOW_LOW or not len(self.consumers) or self.deleted
                or self.deliveries == self._deliveries_when_stuck):
            self._uncongested.set()
            self._uncongested = None

    # ------------------------------------------------------------------ publish

    def publish(self, message: Message, now_ms: int, confirm: Confirm | None) -> None:
        self.counters.publish += 1
        if message.expiration_ms is not None:
            self.node.watch_expiry(self)
        state = self.state
        deliver_to = None
        ack_required = True
        no_credit = False
        if state.messages_ready == 0 and len(self.consumers):
            chosen = self.consumers.next_consumer(self._has_credit)
            no_credit = chosen is None
            if chosen is not None:
                deliver_to = chosen.name
                ref = self.refs[deliver_to]
                ack_required = not ref.no_ack
                # The common case (an empty queue, a consumer with credit) without the
                # command and effect records: the same state change, the same actions.
                seq = state.enqueue_delivered(message, now_ms, deliver_to, ack_required)
                if seq is not None:
                    self._accepted(seq, message, confirm)
                    self._hand_to(ref, seq, message, False, ack_required, now_ms, 1)
                    return
        effects = state.apply(Enqueue(message, now_ms, deliver_to, ack_required))
        self._carry_out(effects, now_ms, confirm)
        # (No consumer had credit a moment ago, and nothing since can have given any.)
        if deliver_to is None and not no_credit and self.state.messages_ready:
            self.dispatch(now_ms)

    def recover(self, message: Message, now_ms: int, key: bytes) -> None:
        """A persisted message found at start (its id taken from `key`): back in the
        queue, flagged redelivered (the spec's redelivered flag means "may have been
        delivered before")."""
        assert key == persisted_key(self._prefix, message.id), "recovered message id must come from its key"
        self.state.apply(Enqueue(message, now_ms, redelivered=True))

    # ------------------------------------------------------------------ consumers

    def add_consumer(self, ref: ConsumerRef, priority: int, exclusive: bool) -> Any:
        key = f"{id(ref.session):x}/{ref.channel}/{ref.tag}"
        consumer = Consumer(ref.tag, (ref.session, ref.channel), priority, exclusive, not ref.no_ack, name=key)
        refusal = self.consumers.add(consumer)
        if refusal is not None:
            return refusal
        self.refs[key] = ref
        self.had_consumers = True
        return None

    def check_consume(self, exclusive: bool) -> Any:
        return self.consumers.check_exclusive(exclusive)

    def remove_consumer(self, session: ConsumerEndpoint, channel: int, tag: str, now_ms: int) -> None:
        consumer = self.consumers.remove((session, channel), tag)
        if consumer is not None:
            self.refs.pop(consumer.name, None)
            self.touch(now_ms)
            self.dispatch(now_ms)  # single active consumer: the next one takes over

    def remove_channel(self, session: ConsumerEndpoint, channel: int) -> None:
        for consumer in self.consumers.remove_channel((session, channel)):
            self.refs.pop(consumer.name, None)

    def _has_credit(self, consumer: Consumer) -> bool:
        ref = self.refs[consumer.name]
        return ref.session.can_deliver(ref.channel, ref.tag)

    # ------------------------------------------------------------------ delivery

    def dispatch(self, now_ms: int) -> None:
        if self._dispatching or self.deleted:
            return
        self._dispatching = True
        try:
            state = self.state
            # Credit may have come back (an ack, a requeue, basic.qos): consumers blocked for
            # want of it rejoin the round robin now, as RabbitMQ's queue unblocks them on the ack.
            self.consumers.unblock(self._has_credit)
            while state.messages_ready and len(self.consumers):
                consumer = self.consumers.next_consumer(self._has_credit)
                if consumer is None:
                    break
                ref = self.refs.get(consumer.name)
                if ref is not None:
                    # The common case without the command and effect records.
                    taken = state.deliver_ready(now_ms, consumer.name, consumer.ack_required)
                    if taken is not None:
                        self._hand_to(ref, taken[0], taken[1], taken[2], consumer.ack_required, now_ms, taken[3])
                        continue
                effects = state.apply(Deliver(now_ms, consumer.name, consumer.ack_required))
                if not effects:
                    break
                self._carry_out(effects, now_ms, None)
        finally:
            self._dispatching = False
        if self._uncongested is not None:
            self._release_publishers()

    def get(self, now_ms: int, no_ack: bool) -> Delivered | None:
        effects = self.state.apply(Deliver(now_ms, None, not no_ack))
        got = None
        rest = []
        for e in effects:
            if isinstance(e, Delivered) and got is None:
                got = e
            else:
                rest.append(e)
        self._carry_out(rest, now_ms, None)
        return self._got(got, no_ack)

    def _got(self, got: Delivered | None, no_ack: bool) -> Delivered | None:
        """What basic.get took, counted, and as the client is to see it."""
        counters = self.counters
        if got is None:
            counters.get_empty += 1
        elif no_ack:
            counters.get_no_ack += 1
            self._forget((got.message,))
        else:
            counters.get += 1
        if got is not None:
            if got.redelivered:
                counters.redeliver += 1
            if self.state.settings.queue_type == "quorum":
                got.message = with_delivery_count(got.message, got.returns)
        return got

    def _deliver(self, d: Delivered, now_ms: int) -> None:
        ref = self.refs.get(d.consumer) if d.consumer is not None else None
        if ref is None:
            # The consumer went away between choice and delivery.
            if d.ack_required:
                self._take_back(d.seq, now_ms)
            return
        self._hand_to(ref, d.seq, d.message, d.redelivered, d.ack_required, now_ms, d.delivery_count)

    def _hand_to(self, ref: ConsumerRef, seq: int, m: Message, redelivered: bool, ack_required: bool,
                 now_ms: int, delivery_count: int) -> None:
        sent = m
        if redelivered and self.state.settings.queue_type == "quorum":
            # Redelivered: it was returned `delivery_count - 1` times (see `Delivered.returns`).
            sent = with_delivery_count(m, delivery_count - 1)
        tag = ref.session.deliver(ref.channel, ref.tag, (self.ref, seq) if ack_required else None, sent, redelivered)
        if tag is None:
            if ack_required:
                self._take_back(seq, now_ms)
            return
        counters = self.counters
        if ack_required:
            counters.deliver += 1
        else:
            counters.deliver_no_ack += 1
        if redelivered:
            counters.redeliver += 1
        if not ack_required and self.durable:
            self._forget((m,))

    def _take_back(self, seq: int, now_ms: int) -> None:
        """A delivery its consumer could not take: ready again."""
        self._carry_out(self.state.apply(Requeue((seq,), now_ms)), now_ms, None)

    async def fetch(self, now_ms: int, no_ack: bool) -> Delivered | None:
        """basic.get, for callers that can wait (a replicated queue answers once it commits)."""
        return self.get(now_ms, no_ack)

    async def purge_now(self, now_ms: int) -> int:
        """queue.purge, for callers that can wait (a replicated queue answers once it commits)."""
        return self.purge(now_ms)

    # ------------------------------------------------------------------ settlement

    def settle(self, seqs: tuple[int, ...], now_ms: int) -> None:
        settled = self.state.unacked_messages(seqs) if self.durable else ()
        self.counters.ack += len(seqs)
        self.state.apply(Settle(seqs))
        self._forget(settled)
        self.dispatch(now_ms)

    def requeue(self, seqs: tuple[int, ...], now_ms: int) -> None:
        self._carry_out(self.state.apply(Requeue(seqs, now_ms)), now_ms, None)
        self.dispatch(now_ms)

    def reject(self, seqs: tuple[int, ...], now_ms: int) -> None:
        # The effects (dead-lettered or dropped) forget the persisted copies.
        self._carry_out(self.state.apply(Reject(seqs)), now_ms, None)
        self.dispatch(now_ms)

    def purge(self, now_ms: int) -> int:
        # Paged-out messages are forgotten by the page store as the state drops their pages.
        ready = list(self.state.ready_in_memory()) if self.durable else []
        count = 0
        for e in self.state.apply(Purge()):
            if isinstance(e, Purged):
                count = e.count
        self._forget(ready)
        return count

    def expire(self, now_ms: int) -> None:
        self._carry_out(self.state.apply(Expire(now_ms)), now_ms, None)

    def touch(self, now_ms: int) -> None:
        self.state.apply(Touch(now_ms))

    def reconfigure(self, settings: QueueSettings, now_ms: int) -> None:
        self.consumers.single_active = settings.single_active_consumer
        self._carry_out(self.state.apply(Reconfigure(settings, now_ms)), now_ms, None)
        self.dispatch(now_ms)

    def delete(self) -> list[ConsumerRef]:
        """The queue is gone: drop its persisted messages, return its consumers to cancel."""
        self.deleted = True
        self._release_publishers()
        state = self.state
        self._forget([*state.ready_in_memory(), *state.unacked_messages(state.unacked_seqs())])
        if self.pages is not None:
            self.pages.drop_all()
        refs = list(self.refs.values())
        self.refs.clear()
        for c in list(self.consumers):
            self.consumers.remove(c.channel, c.tag)
        return refs

    # ------------------------------------------------------------------ effects

    def _carry_out(self, effects: list[Any], now_ms: int, confirm: Confirm | None) -> None:
        for e in effects:
            t = type(e)
            if t is Delivered:
                self._deliver(e, now_ms)
            elif t is Enqueued:
                self._accepted(e.seq, e.message, confirm)
                confirm = None
            elif t is PublisherRejected:
                if confirm is not None:
                    confirm(False)
                    confirm = None
            elif t is DeadLetter:
                self._forget((e.message,))
                self.node.dead_letter(self.vhost, self.name, e, now_ms)
            else:
                # Dropped: the message left without a dead-letter exchange.
                message = getattr(e, "message", None)
                if message is not None:
                    self._forget((message,))
        if confirm is not None:
            confirm(True)

    def _accepted(self, seq: int, m: Message, confirm: Confirm | None) -> None:
        """The queue took the publish: confirm it, once durable if it must be."""
        if self.durable and m.persistent:
            self._persist(seq, m, confirm)
        elif confirm is not None:
            confirm(True)

    # ------------------------------------------------------------------ durability

    def _persist(self, seq: int, m: Message, confirm: Confirm | None) -> None:
        # Staged withdrawable: a message consumed and acknowledged before the next write
        # cycle never reaches the disk, and is confirmed then (see storage.staging).
        # Encoded only if a write cycle takes it.
        on_done = None if confirm is None else (lambda exc: confirm(exc is None))
        self.node.stage_message(MESSAGES_TABLE, persisted_key(self._prefix, m.id), partial(encode_persisted, m),
                                on_done, len(m.body))

    def not_stored(self, message_id: int, value: bytes) -> None:
        """The row of persisted message `message_id` failed to be written. The message
        stays in the queue, in memory (a publisher that asked for confirms was nacked,
        which allows either outcome); a page naming it by id reads `value` instead of the
        store until the message leaves the queue."""
        if self.pages is not None:
            self.pages.keep_unstored(message_id, value)

    def _forget(self, messages: Any) -> None:
        """Delete the persisted copies of `messages` that left this queue (a message
        never persisted here — a rejected publish — deletes nothing that exists)."""
        if not self.durable:
            return
        if self.pages is not None:
            self.pages.forget_unstored(messages)
        forget, prefix = self.node.forget_message, self._prefix
        for m in messages:
            if m.persistent:
                forget(MESSAGES_TABLE, persisted_key(prefix, m.id))
