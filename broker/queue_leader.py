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
an ack lost in a crash only means a redelivery, which AMQP allows).

Everything here runs in the node's trio thread and never blocks: no per-message
task or coroutine; deliveries are bytes appended to the consumer connection's
output buffer, whose writer task is woken.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import msgpack

from broker.amqp import codec
from broker.arguments import QueueSettings
from broker.dispatch import Consumer, ConsumerSet
from broker.message import Message
from broker.queue import (
    DeadLetter,
    Deliver,
    Delivered,
    Enqueue,
    Enqueued,
    Expire,
    Purge,
    Purged,
    PublisherRejected,
    QueueState,
    Reconfigure,
    Reject,
    Requeue,
    Settle,
    Touch,
)
from storage.interface import WriteBatch

if TYPE_CHECKING:
    from broker.node import Node
    from broker.session import Session

MESSAGES_TABLE = "queue_messages"
_SEQ = struct.Struct(">Q")

# Outcome callback of a publish: True = accepted (and durable if it had to be), False = rejected.
Confirm = Callable[[bool], None]


def queue_key_prefix(vhost: str, name: str) -> bytes:
    """Store key prefix of a durable queue's persisted messages."""
    # Names are AMQP octets; the codec carries non-UTF-8 ones as surrogate escapes.
    return vhost.encode("utf-8", "surrogateescape") + b"\x00" + name.encode("utf-8", "surrogateescape") + b"\x00"


@dataclass(slots=True, eq=False)
class ConsumerRef:
    """Where a consumer lives: its session, channel number and tag."""

    session: "Session"
    channel: int
    tag: str
    no_ack: bool


class QueueLeader:
    def __init__(self, node: "Node", vhost: str, name: str, durable: bool, settings: QueueSettings,
                 now_ms: int) -> None:
        self.node = node
        self.vhost = vhost
        self.name = name
        self.durable = durable
        self.state = QueueState(name, settings, now_ms)
        self.consumers = ConsumerSet(name, vhost, single_active=settings.single_active_consumer)
        self.refs: dict[str, ConsumerRef] = {}
        self.had_consumers = False
        self.deleted = False
        self._prefix = queue_key_prefix(vhost, name)
        # seq -> store key of a persisted message (persistent message in a durable queue).
        self._persisted: dict[int, bytes] = {}
        self._next_persist_id = 1
        self._dispatching = False

    # ------------------------------------------------------------------ info

    @property
    def settings(self) -> QueueSettings:
        return self.state.settings

    def consumer_count(self) -> int:
        return len(self.consumers)

    def message_count(self) -> int:
        return self.state.messages_ready

    # ------------------------------------------------------------------ publish

    def publish(self, message: Message, now_ms: int, confirm: Confirm | None) -> None:
        deliver_to = None
        if self.state.messages_ready == 0 and len(self.consumers):
            chosen = self.consumers.next_consumer(self._has_credit)
            if chosen is not None:
                deliver_to = chosen.name
        ack_required = True
        if deliver_to is not None:
            ack_required = not self.refs[deliver_to].no_ack
        effects = self.state.apply(Enqueue(message, now_ms, deliver_to, ack_required))
        self._carry_out(effects, now_ms, confirm)
        if deliver_to is None and self.state.messages_ready:
            self.dispatch(now_ms)

    def recover(self, message: Message, now_ms: int, key: bytes) -> None:
        """A persisted message found at start: back in the queue, flagged redelivered
        (the spec's redelivered flag means "may have been delivered before")."""
        effects = self.state.apply(Enqueue(message, now_ms, redelivered=True))
        for e in effects:
            if isinstance(e, Enqueued):
                self._persisted[e.seq] = key
        persist_id = _SEQ.unpack(key[-8:])[0]
        self._next_persist_id = max(self._next_persist_id, persist_id + 1)

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

    def remove_consumer(self, session: "Session", channel: int, tag: str, now_ms: int) -> None:
        consumer = self.consumers.remove((session, channel), tag)
        if consumer is not None:
            self.refs.pop(consumer.name, None)
            self.state.apply(Touch(now_ms))
            self.dispatch(now_ms)  # single active consumer: the next one takes over

    def remove_channel(self, session: "Session", channel: int) -> None:
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
            while state.messages_ready and len(self.consumers):
                consumer = self.consumers.next_consumer(self._has_credit)
                if consumer is None:
                    break
                effects = state.apply(Deliver(now_ms, consumer.name, consumer.ack_required))
                if not effects:
                    break
                self._carry_out(effects, now_ms, None)
        finally:
            self._dispatching = False

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
        if got is not None and no_ack:
            self._forget_persisted((got.seq,))
        return got

    def _deliver(self, d: Delivered, now_ms: int) -> None:
        ref = self.refs.get(d.consumer) if d.consumer is not None else None
        if ref is None:
            # The consumer went away between choice and delivery.
            if d.ack_required:
                self._carry_out(self.state.apply(Requeue((d.seq,), now_ms)), now_ms, None)
            return
        m = d.message
        tag = ref.session.deliver(ref.channel, ref.tag, (self, d.seq) if d.ack_required else None,
                                  m, d.redelivered)
        if tag is None:
            if d.ack_required:
                self._carry_out(self.state.apply(Requeue((d.seq,), now_ms)), now_ms, None)
            return
        if not d.ack_required:
            self._forget_persisted((d.seq,))

    # ------------------------------------------------------------------ settlement

    def settle(self, seqs: tuple[int, ...], now_ms: int) -> None:
        self.state.apply(Settle(seqs))
        self._forget_persisted(seqs)
        self.dispatch(now_ms)

    def requeue(self, seqs: tuple[int, ...], now_ms: int) -> None:
        self._carry_out(self.state.apply(Requeue(seqs, now_ms)), now_ms, None)
        self.dispatch(now_ms)

    def reject(self, seqs: tuple[int, ...], now_ms: int) -> None:
        self._carry_out(self.state.apply(Reject(seqs)), now_ms, None)
        self._forget_persisted(seqs)
        self.dispatch(now_ms)

    def purge(self, now_ms: int) -> int:
        ready = [seq for seq, _m, _r in self.state.ready()]
        count = 0
        for e in self.state.apply(Purge()):
            if isinstance(e, Purged):
                count = e.count
        self._forget_persisted(tuple(ready))
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
        if self._persisted:
            batch = WriteBatch()
            for key in self._persisted.values():
                batch.delete(MESSAGES_TABLE, key)
            self._persisted.clear()
            self.node.submit_write(batch)
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
                m = e.message
                if self.durable and m.persistent:
                    self._persist(e.seq, m, confirm)
                    confirm = None
                elif confirm is not None:
                    confirm(True)
                    confirm = None
            elif t is PublisherRejected:
                if confirm is not None:
                    confirm(False)
                    confirm = None
            elif t is DeadLetter:
                self._forget_persisted_message(e.message)
                self.node.dead_letter(self.vhost, self.name, e, now_ms)
            else:
                # Dropped: the message left without a dead-letter exchange.
                message = getattr(e, "message", None)
                if message is not None:
                    self._forget_persisted_message(message)
        if confirm is not None:
            confirm(True)

    # ------------------------------------------------------------------ durability

    def _persist(self, seq: int, m: Message, confirm: Confirm | None) -> None:
        key = self._prefix + _SEQ.pack(self._next_persist_id)
        self._next_persist_id += 1
        self._persisted[seq] = key
        raw = m.raw_properties if m.raw_properties is not None else codec.encode_properties(m.properties)
        value = msgpack.packb([m.exchange, m.routing_key, raw, m.body], use_bin_type=True)
        batch = WriteBatch()
        batch.put(MESSAGES_TABLE, key, value)
        if confirm is None:
            self.node.submit_write(batch)
        else:
            self.node.submit_write(batch, lambda exc: confirm(exc is None))

    def _forget_persisted(self, seqs: tuple[int, ...]) -> None:
        if not self._persisted:
            return
        batch = None
        for seq in seqs:
            key = self._persisted.pop(seq, None)
            if key is not None:
                if batch is None:
                    batch = WriteBatch()
                batch.delete(MESSAGES_TABLE, key)
        if batch is not None:
            self.node.submit_write(batch)

    def _forget_persisted_message(self, message: Message) -> None:
        # Dropped / dead-lettered messages are identified by object; a linear scan is
        # acceptable because it only happens for persisted messages leaving abnormally.
        if not self._persisted or not message.persistent:
            return
        for seq, _m in list(self._unpersisted_lookup(message)):
            self._forget_persisted((seq,))

    def _unpersisted_lookup(self, message: Message) -> list[tuple[int, Message]]:
        live = {seq for seq, _m, _r in self.state.ready()} | set(self.state.unacked_seqs())
        return [(seq, message) for seq in list(self._persisted) if seq not in live]


def decode_persisted(value: bytes) -> tuple[str, str, bytes, bytes]:
    exchange, routing_key, raw, body = msgpack.unpackb(value, raw=False)
    return exchange, routing_key, raw, body
