"""Queues led by another node: `RemoteQueue` (the `QueueClient` a session uses here) and
`QueuePeers` (this node's side of the queue traffic with its peers, both directions).

Wire. Everything that must keep its order travels as casts, which each link carries
in order and hands to their handler in arrival order (calls run as tasks, in no
guaranteed order):
  B → A  "queue.ops"       [B's applied metadata index, [op, ...]] where op is one of
           ["publish", vhost, name, message, confirm id or None]
           ["settle" | "requeue" | "reject", vhost, name, incarnation, [seq, ...]]
           ["credit", vhost, name, session, channel, tag, limit]
           ["cancel", vhost, name, session, channel, tag]
           ["cancel_channel", vhost, name, session, channel]
  A → B  "queue.replies"   [reply, ...] where reply is one of
           ["confirm", id, accepted]
           ["deliver", session, channel, tag, incarnation, seq or None, message, redelivered, vhost, name]
           ["cancelled", session, channel, tag]
A receiving node that applied less of the metadata log than the sender had holds the
ops back until it has (a queue declared through B and homed on A may be applied on B
first), and so do calls.
A node's ops for one peer are buffered and sent as one cast once the task that made
them yields (for a session: after the batch of frames one read produced), so a
batch of publishes costs one cast, not one per message. What needs an answer at
once (get, consume, purge, counts) is a call, sent after the buffered ops, so a
get sees the publishes made before it.

Confirms. The home node (A) enqueues a forwarded publish exactly as a local one
(persistence, TTL, max-length, dead-lettering on A, its own message id) and answers
with the queue's confirm. The forwarding node (B) confirms its client only then;
it nacks every publish still waiting on A when the link to A goes down or the
answer does not come within `CONFIRM_TIMEOUT`: never a confirm A did not give.

Consumers. A consumer on B of a queue on A lives in A's `ConsumerSet` like any
other, its endpoint a `ConsumerProxy` (one per session of B). Credit is B's: B
sends the absolute number of deliveries the consumer may have received so far
(received + room left by its prefetch), A delivers while it sent fewer; absolute
limits make the credit exact however casts interleave. B assigns its own delivery
tags; acks, rejects and requeues go back by (queue incarnation, sequence). When
the link between them goes down, A drops B's consumers and requeues what they had
not settled, and B cancels its clients' consumers (basic.cancel) and nacks.
"""

from __future__ import annotations

import logging
from collections import defaultdict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import trio

from broker.amqp import codec
from broker.message import Message
from broker.queue_client import (
    Confirm,
    ConsumerEndpoint,
    ConsumerRef,
    Got,
    QueueCounts,
    QueueRef,
    QueueUnavailable,
)
from cluster.logtext import peer_text
from cluster.membership import METADATA_GROUP
from cluster.transport import PeerTransport, Replied

if TYPE_CHECKING:
    from broker.arguments import Refusal
    from broker.local_queue import LocalQueue
    from broker.node import Node
    from broker.session import Session

log = logging.getLogger("leveret.remote_queue")

OPS: Final = "queue.ops"
SETTLEMENT_OPS: Final = frozenset({"settle", "requeue", "reject"})
# How long a publish to a replicated queue whose leader was lost waits for the new one
# (seconds), how often it looks, and how many wait per queue at most (beyond: nacked).
# Long enough for an election after a node's loss is noticed (a kill: well under 1 s),
# short enough that a publisher blocked on a queue with no majority (a 2-replica group cut
# in half) is nacked and moves on within the failover bound (5 s).
FAILOVER_HOLD: Final = 2.0
UNPARK_POLL: Final = 0.02
PARKED_MAX: Final = 50_000
# Settlements kept per unreachable node at most (the oldest go first: a redelivery).
UNSENT_MAX: Final = 100_000
REPLIES: Final = "queue.replies"
GET: Final = "queue.get"
CONSUME: Final = "queue.consume"
PURGE: Final = "queue.purge"
COUNTS: Final = "queue.counts"
# A forwarded publish not confirmed by its home node within this long is nacked.
CONFIRM_TIMEOUT: Final = 30.0
# How long a call to a queue's home node may take before the client is told it is unavailable.
CALL_TIMEOUT: Final = 10.0
# How long ops wait for this node's metadata to catch up with their sender's.
METADATA_WAIT: Final = 5.0
# Deliveries a consumer without a prefetch limit may have in flight from another node.
UNLIMITED_WINDOW: Final = 1000


def home_down_text(vhost: str, name: str, home: str, durable: bool = True) -> str:
    """RabbitMQ's answer for a queue whose home node cannot be reached."""
    kind = "durable queue" if durable else "queue"
    return f"home node '{home}' of {kind} '{name}' in vhost '{vhost}' is down or inaccessible"


# --------------------------------------------------------------------------- messages on the wire


def message_to_wire(m: Message) -> list[Any]:
    raw = m.raw_properties
    if raw is None:
        raw = m.raw_properties = codec.encode_properties(m.properties)
    return [m.exchange, m.routing_key, raw, m.body, m.persistent, m.priority, m.expiration_ms]


# The slot that holds a Message's properties (the dataclass's member descriptor).
_PROPERTIES_SLOT = Message.__dict__["properties"]


class WireMessage(Message):
    """A message that arrived encoded (from another node, or out of a replicated queue's log),
    its properties decoded only when something first reads them.

    Most such messages are only queued and delivered, and a delivery sends `raw_properties`
    as they are; every replica of a mirrored queue holds every message, yet only the
    leader's ever deliver. So the decoding (a third of `message_from_wire`'s time) is left
    to the first reader: dead-lettering, header exchanges, the management API.
    """

    __slots__ = ()

    @property  # type: ignore[override]
    def properties(self) -> Any:
        props = _PROPERTIES_SLOT.__get__(self, Message)
        if props is None:
            props = codec.decode_properties(self.raw_properties)
            _PROPERTIES_SLOT.__set__(self, props)
        return props

    @properties.setter
    def properties(self, value: Any) -> None:
        _PROPERTIES_SLOT.__set__(self, value)


def message_from_wire(wire: Any, message_id: int) -> Message:
    """A message another node sent; its id is this node's (ids are node-unique). Its
    properties are decoded when first read (`WireMessage`)."""
    exchange, routing_key, raw, body, persistent, priority, expiration_ms = wire
    return WireMessage(str(exchange), str(routing_key), None, bytes(body), bool(persistent), int(priority),
                       None if expiration_ms is None else int(expiration_ms), bytes(raw), message_id)


def _refusal_to_wire(refusal: Any) -> list[Any]:
    return [int(refusal.code), str(refusal.text)]


@dataclass(frozen=True, slots=True)
class RemoteRefusal:
    """A refusal the home node gave (exclusive use...), as the session fails it."""

    code: int
    text: str


# --------------------------------------------------------------------------- the client (node B)


@dataclass(slots=True, eq=False)
class _RemoteConsumer:
    """A consumer here of a queue on another node, and the credit sent for it."""

    session: "Session"
    channel: int
    tag: str
    no_ack: bool
    received: int = 0
    limit_sent: int = -1


class RemoteQueue:
    """The `QueueClient` of a queue led by `home`."""

    def __init__(self, peers: "QueuePeers", vhost: str, name: str, home: str, durable: bool) -> None:
        self.peers = peers
        self.vhost = vhost
        self.name = name
        self.home = home
        self.durable = durable
        # The incarnations of the queue this node has handles for (from gets and deliveries).
        self._refs: dict[int, QueueRef] = {}
        # incarnation -> the node that handed out its deliveries
        self._origins: dict[int, str] = {}
        self.consumers: dict[tuple[str, int, str], _RemoteConsumer] = {}

    def ref(self, incarnation: int, origin: str | None = None) -> QueueRef:
        """The incarnation's ref; `origin` is the node that handed out its deliveries (their
        settlements go there, wherever the queue is led later)."""
        ref = self._refs.get(incarnation)
        if ref is None:
            ref = self._refs[incarnation] = QueueRef(self.vhost, self.name, incarnation)
        self._origins.setdefault(incarnation, origin or self.home)
        return ref

    def carry_over(self, previous: "RemoteQueue") -> None:
        """The queue's leader moved (`QueuePeers.client`): deliveries made by the previous
        one stay this client's to settle, towards the node that made them."""
        for incarnation, ref in previous._refs.items():
            self._refs.setdefault(incarnation, ref)
        for incarnation, origin in previous._origins.items():
            self._origins.setdefault(incarnation, origin)

    def holds(self, ref: QueueRef) -> bool:
        # The home node drops settlements of an incarnation it no longer has.
        return self._refs.get(ref.incarnation) is ref

    def _unavailable(self, outcome: Any = None) -> QueueUnavailable:
        return QueueUnavailable(home_down_text(self.vhost, self.name, self.home, self.durable))

    # ------------------------------------------------------------------ publish

    def publish(self, message: Message, now_ms: int, confirm: Confirm | None) -> None:
        self.peers.forward_publish(self.home, self.vhost, self.name, message, confirm)

    def backlogged(self) -> bool:
        return self.peers.backlogged(self.home)

    @property
    def congested(self) -> bool:
        return self.peers.backlogged(self.home)

    async def pause_publisher(self, max_seconds: float) -> None:
        await self.peers.wait_for_confirms(self.home, max_seconds)

    # ------------------------------------------------------------------ settlement

    def settle(self, ref: QueueRef, seqs: tuple[int, ...], now_ms: int) -> None:
        self._settlement("settle", ref, seqs)

    def requeue(self, ref: QueueRef, seqs: tuple[int, ...], now_ms: int) -> None:
        self._settlement("requeue", ref, seqs)

    def reject(self, ref: QueueRef, seqs: tuple[int, ...], now_ms: int) -> None:
        self._settlement("reject", ref, seqs)

    def _settlement(self, op: str, ref: QueueRef, seqs: tuple[int, ...]) -> None:
        origin = self._origins.get(ref.incarnation, self.home)
        self.peers.send(origin, [op, self.vhost, self.name, ref.incarnation, list(seqs)])
        self.dispatch(0)  # the channel's prefetch has room again

    # ------------------------------------------------------------------ consumers

    async def add_consumer(self, ref: ConsumerRef, priority: int, exclusive: bool,
                           ) -> "Refusal | RemoteRefusal | QueueUnavailable | None":
        session: Session = ref.session  # type: ignore[assignment]
        consumer = _RemoteConsumer(session, ref.channel, ref.tag, ref.no_ack)
        self.peers.flush(self.home)
        outcome = await self.peers.transport.call(self.home, CONSUME, {
            "vhost": self.vhost, "name": self.name, "session": session.id, "channel": ref.channel,
            "tag": ref.tag, "no_ack": ref.no_ack, "priority": priority, "exclusive": exclusive,
            "applied": self.peers.metadata_applied()}, timeout=CALL_TIMEOUT)
        if not isinstance(outcome, Replied) or not isinstance(outcome.value, Mapping):
            return self._unavailable(outcome)
        refused = outcome.value.get("refused")
        if refused is not None:
            return RemoteRefusal(int(refused[0]), str(refused[1]))
        if outcome.value.get("missing"):
            return self._unavailable()
        # No credit yet: the session sends it (`dispatch`) once its client has basic.consume-ok,
        # so no delivery can reach the channel before the consumer exists there.
        consumer.limit_sent = 0
        self.consumers[(session.id, ref.channel, ref.tag)] = consumer
        self.peers.consuming(self)
        return None

    def _limit(self, c: _RemoteConsumer) -> int:
        """How many deliveries `c` may have received in all: those it did and the room left."""
        if not c.session.can_deliver(c.channel, c.tag):  # also: its socket is not draining
            return c.received
        room = c.session.conn.room(c.channel, c.tag)
        return c.received + (UNLIMITED_WINDOW if room is None else max(room, 0))

    def remove_consumer(self, endpoint: ConsumerEndpoint, channel: int, tag: str, now_ms: int) -> None:
        session: Session = endpoint  # type: ignore[assignment]
        if self.consumers.pop((session.id, channel, tag), None) is not None:
            self.peers.send(self.home, ["cancel", self.vhost, self.name, session.id, channel, tag])

    def remove_channel(self, endpoint: ConsumerEndpoint, channel: int) -> None:
        session: Session = endpoint  # type: ignore[assignment]
        gone = [key for key in self.consumers if key[0] == session.id and key[1] == channel]
        for key in gone:
            del self.consumers[key]
        if gone:
            self.peers.send(self.home, ["cancel_channel", self.vhost, self.name, session.id, channel])

    def consumers_gone(self, now_ms: int) -> None:
        """Nothing to do here: the home node dispatches and auto-deletes as its consumers go."""

    def dispatch(self, now_ms: int) -> None:
        """Credit may have come back: tell the home node each consumer's new limit."""
        for key, c in self.consumers.items():
            limit = self._limit(c)
            if limit > c.limit_sent:
                c.limit_sent = limit
                self.peers.send(self.home, ["credit", self.vhost, self.name, key[0], key[1], key[2], limit])

    def delivered(self, session_id: str, channel: int, tag: str) -> None:
        c = self.consumers.get((session_id, channel, tag))
        if c is not None:
            c.received += 1

    # ------------------------------------------------------------------ calls

    async def _call(self, method: str, args: dict[str, Any]) -> Any:
        self.peers.flush(self.home)
        outcome = await self.peers.transport.call(
            self.home, method, {"vhost": self.vhost, "name": self.name, "applied": self.peers.metadata_applied(),
                                **args}, timeout=CALL_TIMEOUT)
        if not isinstance(outcome, Replied) or not isinstance(outcome.value, Mapping) \
                or outcome.value.get("missing"):
            return self._unavailable(outcome)
        return outcome.value

    async def get(self, now_ms: int, no_ack: bool) -> Got | QueueUnavailable | None:
        value = await self._call(GET, {"no_ack": no_ack})
        if isinstance(value, QueueUnavailable):
            return value
        if value.get("empty"):
            return None
        message = message_from_wire(value["message"], self.peers.node.next_message_id())
        return Got(self.ref(int(value["incarnation"])), int(value["seq"]), message, bool(value["redelivered"]),
                   int(value["remaining"]))

    async def purge(self, now_ms: int) -> int | QueueUnavailable:
        value = await self._call(PURGE, {})
        return value if isinstance(value, QueueUnavailable) else int(value["count"])

    async def counts(self, now_ms: int, touch: bool) -> QueueCounts | QueueUnavailable:
        value = await self._call(COUNTS, {"touch": touch})
        if isinstance(value, QueueUnavailable):
            return value
        return QueueCounts(int(value["messages"]), int(value["consumers"]))


# --------------------------------------------------------------------------- the home node's proxies (node A)


class ConsumerProxy:
    """On the home node, the endpoint of one session's consumers on another node: deliveries
    become casts, credit is the limit that node sent."""

    def __init__(self, peers: "QueuePeers", node: str, session_id: str) -> None:
        self.peers = peers
        self.node = node
        self.id = session_id  # the remote session's connection id, as listings show it
        self.conn = None  # no connection machine here (listings read prefetch from it)
        # (channel, tag) -> the queue it consumes from, its credit limit, deliveries sent
        self.queues: dict[tuple[int, str], tuple[str, str]] = {}
        self.limits: dict[tuple[int, str], int] = {}
        self.sent: dict[tuple[int, str], int] = {}
        # What this session's consumers hold unsettled, per queue incarnation: requeued if the
        # node goes away.
        self.unacked: dict[QueueRef, set[int]] = defaultdict(set)

    def can_deliver(self, channel: int, tag: str) -> bool:
        key = (channel, tag)
        limit = self.limits.get(key)
        return limit is not None and self.sent.get(key, 0) < limit

    def room(self, channel: int, tag: str) -> int | None:
        key = (channel, tag)
        return max(0, self.limits.get(key, 0) - self.sent.get(key, 0))

    def deliver(self, channel: int, tag: str, handle: Any, m: Message, redelivered: bool) -> int | None:
        key = (channel, tag)
        queue = self.queues.get(key)
        if queue is None:
            return None
        incarnation, seq = 0, None
        if handle is not None:
            ref, seq = handle
            incarnation = ref.incarnation
            self.unacked[ref].add(seq)
        sent = self.sent.get(key, 0) + 1
        self.sent[key] = sent
        self.peers.reply(self.node, ["deliver", self.id, channel, tag, queue[0], queue[1], incarnation, seq,
                                     message_to_wire(m), redelivered])
        return sent

    def cancel_consumer(self, channel: int, tag: str) -> None:
        """The queue went: the consumer's node tells its client (basic.cancel)."""
        self.forget(channel, tag)
        self.peers.reply(self.node, ["cancelled", self.id, channel, tag])

    def forget(self, channel: int, tag: str) -> None:
        key = (channel, tag)
        self.queues.pop(key, None)
        self.limits.pop(key, None)
        self.sent.pop(key, None)

    def settled(self, ref: QueueRef, seqs: Any) -> None:
        held = self.unacked.get(ref)
        if held is not None:
            held.difference_update(seqs)
            if not held:
                del self.unacked[ref]

    def idle(self) -> bool:
        """No consumer left and nothing unsettled: the proxy can go."""
        return not self.queues and not self.unacked


# --------------------------------------------------------------------------- both sides


class QueuePeers:
    """This node's queue traffic with its peers: the remote clients it hands sessions, the
    buffered ops and replies, the confirms it waits for, the proxies of other nodes'
    consumers of its queues."""

    def __init__(self, node: "Node", transport: PeerTransport) -> None:
        self.node = node
        self.transport = transport
        self._clients: dict[tuple[str, str], RemoteQueue] = {}
        # Buffered casts per destination node, sent when the current task yields.
        self._ops: dict[str, list[Any]] = {}
        self._replies: dict[str, list[Any]] = {}
        self._flush_scheduled = False
        # Forwarded publishes waiting for their home node: id -> (home, confirm, deadline).
        self._confirm_ids = 0
        self._confirms: dict[int, tuple[str, Confirm, float]] = {}
        self._waiting_per_home: dict[str, int] = defaultdict(int)
        self._confirmed = trio.Event()
        # Nodes whose link went down and has not come up since.
        self._lost: set[str] = set()
        # Forwarded publishes to replicated queues, by confirm id, until answered.
        self._resend: dict[int, tuple[str, str, Message]] = {}
        # Publishes to replicated queues failing over, waiting for the new leader, in order.
        self._parked: dict[tuple[str, str], list[tuple[Message, Confirm | None]]] = {}
        # Settlements for a node that could not be sent, kept until its link is back.
        self._unsent: dict[str, list[Any]] = defaultdict(list)
        # Sessions of other nodes consuming from queues here: (node, session id) -> proxy.
        self.proxies: dict[tuple[str, str], ConsumerProxy] = {}
        # Remote queues that sessions here consume from (cancelled if their home goes away).
        self._consumed: set[RemoteQueue] = set()
        # Ops from a node that wait for this node's metadata to catch up with that node's, in
        # order, and the events set once a node's are all applied (see `on_ops_after`).
        self._deferred: dict[str, deque[tuple[int, Any]]] = {}
        self._drained: dict[str, trio.Event] = {}
        self._nursery: trio.Nursery | None = None

    # ------------------------------------------------------------------ clients (B)

    def client(self, vhost: str, name: str, home: str, durable: bool) -> RemoteQueue:
        key = (vhost, name)
        client = self._clients.get(key)
        if client is None or client.home != home:
            previous = client
            client = self._clients[key] = RemoteQueue(self, vhost, name, home, durable)
            if previous is not None:
                client.carry_over(previous)
        return client

    def queue_removed(self, vhost: str, name: str) -> None:
        client = self._clients.pop((vhost, name), None)
        if client is not None:
            self._consumed.discard(client)

    def consuming(self, client: RemoteQueue) -> None:
        self._consumed.add(client)

    # ------------------------------------------------------------------ buffers

    def send(self, node: str, op: list[Any]) -> None:
        self._ops.setdefault(node, []).append(op)
        self._schedule_flush()

    def reply(self, node: str, item: list[Any]) -> None:
        self._replies.setdefault(node, []).append(item)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            trio.lowlevel.current_trio_token().run_sync_soon(self.flush_all)

    def flush_all(self) -> None:
        self._flush_scheduled = False
        try:
            for node in list(self._ops):
                self.flush(node)
            replies, self._replies = self._replies, {}
            for node, items in replies.items():
                # At most once: a reply lost with its link is made good by the other side's
                # link-down handling (nacks, requeues, cancels).
                self.transport.cast(node, REPLIES, items)
        except Exception:
            # Run by the trio loop itself (run_sync_soon): an exception here would end the node.
            log.exception("sending queue traffic to peers failed")

    def flush(self, node: str) -> None:
        ops = self._ops.pop(node, None)
        if not ops:
            return
        failed = self.transport.cast(node, OPS, [self.metadata_applied(), ops])
        if failed is not None:
            log.debug("queue ops for node '%s' not sent: %s", peer_text(node), failed)
            for op in ops:
                if op[0] == "publish":
                    self._resolve(op[4], False)
                elif op[0] in SETTLEMENT_OPS:
                    # Sent again when the link is back: if the other node never noticed the
                    # link was down, its proxy still holds these deliveries (a requeue of one
                    # that never reached its consumer, above all), and nothing else would
                    # ever settle them.
                    unsent = self._unsent[node]
                    unsent.append(op)
                    if len(unsent) > UNSENT_MAX:
                        del unsent[:len(unsent) - UNSENT_MAX]

    # ------------------------------------------------------------------ confirms (B)

    def forward_publish(self, home: str, vhost: str, name: str, message: Message, confirm: Confirm | None) -> None:
        # Every forwarded publish is answered, also one its publisher wants no confirm for:
        # the publishes waiting on a node are what publisher flow towards it counts.
        if home in self._lost or home == self.node.name:
            # Its link went down and has not come back (or this node is named as the leader
            # of a queue it does not serve yet). A replicated queue is failing over:
            # the publish waits for its new leader (FAILOVER_HOLD at most); any other is
            # nacked now, not after CONFIRM_TIMEOUT.
            if not self._park(vhost, name, message, confirm) and confirm is not None:
                confirm(False)
            return
        self._confirm_ids += 1
        confirm_id = self._confirm_ids
        self._confirms[confirm_id] = (home, confirm or _unconfirmed, trio.current_time() + CONFIRM_TIMEOUT)
        q = self.node.metadata.queue(vhost, name)
        if q is not None and q.replicated:
            # Kept to be published again through the new leader if this one's node is lost
            # before it answers (at least once: it may have committed the first).
            self._resend[confirm_id] = (vhost, name, message)
        self._waiting_per_home[home] += 1
        self.send(home, ["publish", vhost, name, message_to_wire(message), confirm_id])

    def _park(self, vhost: str, name: str, message: Message, confirm: Confirm | None) -> bool:
        q = self.node.metadata.queue(vhost, name)
        key = (vhost, name)
        parked = self._parked.get(key)
        if q is None or not q.replicated or (parked is not None and len(parked) >= PARKED_MAX) \
                or not self._majority_reachable(q.replicas):
            return False
        if parked is None:
            parked = self._parked[key] = []
            if not self.node.start_soon(self._unpark, vhost, name):
                del self._parked[key]
                return False
        parked.append((message, confirm))
        return True

    def _majority_reachable(self, replicas: tuple[str, ...]) -> bool:
        """Could the queue's replicas this node reaches (itself included) elect a leader?"""
        up = self.transport.reachable() | {self.node.name}
        return sum(1 for r in replicas if r in up) * 2 > len(replicas)

    async def _unpark(self, vhost: str, name: str) -> None:
        """Publishes held while a replicated queue fails over: handed, in order, to its new
        leader once one is reachable; nacked if none is within FAILOVER_HOLD."""
        key = (vhost, name)
        node = self.node
        try:
            with trio.move_on_after(FAILOVER_HOLD):
                while True:
                    await node.mirroring.until_served(vhost, name, timeout=FAILOVER_HOLD)
                    client = node.queue(vhost, name)
                    if client is None:
                        return  # deleted: nacked below
                    q = node.metadata.queue(vhost, name)
                    if q is None or not self._majority_reachable(q.replicas):
                        return  # no leader can be elected there now: nacked below
                    home = getattr(client, "home", None)  # (None: served here)
                    if home not in self._lost and home != node.name:
                        parked = self._parked.pop(key, [])
                        now = node.now_ms()
                        for message, confirm in parked:
                            client.publish(message, now, confirm)
                        return
                    await trio.sleep(UNPARK_POLL)
        finally:
            for _, confirm in self._parked.pop(key, []):
                if confirm is not None:
                    confirm(False)

    def _resolve(self, confirm_id: int, accepted: bool) -> None:
        self._resend.pop(confirm_id, None)
        waiting = self._confirms.pop(confirm_id, None)
        if waiting is None:
            return  # already nacked (timeout, link down)
        home, confirm, _ = waiting
        self._waiting_per_home[home] -= 1
        confirm(accepted)
        self._confirmed.set()
        self._confirmed = trio.Event()

    def backlogged(self, home: str) -> bool:
        return self._waiting_per_home.get(home, 0) > 5_000

    async def wait_for_confirms(self, home: str, max_seconds: float) -> None:
        """Publisher flow towards another node: wait until its confirms catch up."""
        with trio.move_on_after(max_seconds):
            while self._waiting_per_home.get(home, 0) > 1_000:
                await self._confirmed.wait()

    def _nack_waiting(self, home: str | None) -> None:
        """Nack the publishes waiting on `home` (None: those past their deadline). Those of
        a replicated queue whose node was lost wait for the queue's new leader instead."""
        now = trio.current_time()
        for confirm_id, (node, confirm, deadline) in list(self._confirms.items()):
            if node == home and confirm_id in self._resend:
                vhost, name, message = self._resend.pop(confirm_id)
                del self._confirms[confirm_id]
                self._waiting_per_home[node] -= 1
                if not self._park(vhost, name, message, None if confirm is _unconfirmed else confirm):
                    confirm(False)
                self._confirmed.set()
                self._confirmed = trio.Event()
            elif node == home or (home is None and deadline <= now):
                self._resolve(confirm_id, False)

    # ------------------------------------------------------------------ links

    def metadata_applied(self) -> int:
        """How far this node applied the metadata log: sent with every op and call."""
        driver = self.node.driver
        return driver.applied.get(METADATA_GROUP, 0) if driver is not None else 0

    async def run(self) -> None:
        """Serve deferred ops (see `on_ops_after`) and watch the links, as long as the core runs."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._watch_links()

    async def _watch_links(self) -> None:
        """A peer that went away: nack what waits on it, cancel consumers of its queues,
        drop its consumers of ours (their unsettled messages back to ready)."""
        reachable = self.transport.reachable()
        while True:
            with trio.move_on_after(1.0):
                await self.transport.wait_connectivity_change()
            now_reachable = self.transport.reachable()
            for node in reachable - now_reachable:
                self._lost.add(node)
                self.node_lost(node)
            for node in now_reachable - reachable:
                unsent = self._unsent.pop(node, None)
                if unsent:
                    self._ops.setdefault(node, []).extend(unsent)
                    self._schedule_flush()
            self._lost -= now_reachable
            reachable = now_reachable
            self._nack_waiting(None)
            self._resend_credit()

    def _resend_credit(self) -> None:
        """Credit is a cast, at most once: a link that broke and came back between two looks
        may have lost some. Limits are absolute, so sending them again is harmless, and a
        home node that no longer knows the consumer answers with its cancellation."""
        for client in self._consumed:
            for (session_id, channel, tag), c in client.consumers.items():
                self.send(client.home, ["credit", client.vhost, client.name, session_id, channel, tag,
                                        c.limit_sent])

    def node_lost(self, node: str) -> None:
        log.info("queue traffic with node '%s' lost: its publishes nacked, consumers dropped", peer_text(node))
        self._nack_waiting(node)
        for client in [c for c in self._consumed if c.home == node]:
            for (session_id, channel, tag), c in list(client.consumers.items()):
                c.session.cancel_consumer(channel, tag)
            client.consumers.clear()
            self._consumed.discard(client)
        now = self.node.now_ms()
        for key in [k for k in self.proxies if k[0] == node]:
            self._drop_proxy(self.proxies.pop(key), now)

    def _drop_proxy(self, proxy: ConsumerProxy, now: int) -> None:
        touched: set[LocalQueue] = set()
        for (channel, tag), (vhost, name) in list(proxy.queues.items()):
            local = self.node.local_queues.get((vhost, name))
            if local is not None:
                local.leader.remove_consumer(proxy, channel, tag, now)
                touched.add(local)
        for ref, seqs in proxy.unacked.items():
            local = self.node.local_queues.get((ref.vhost, ref.name))
            if local is not None and local.holds(ref) and seqs:
                log.info("queue '%s' in vhost '%s': %d deliveries to consumers on node '%s' returned to ready",
                         peer_text(ref.name), peer_text(ref.vhost), len(seqs), peer_text(proxy.node))
                local.leader.requeue(tuple(sorted(seqs)), now)
        for local in touched:
            local.consumers_gone(now)

    # ------------------------------------------------------------------ serving (A)

    def _local(self, vhost: Any, name: Any) -> "LocalQueue | None":
        return self.node.local_queues.get((str(vhost), str(name)))

    def on_ops(self, src: str, ops: Any) -> None:
        node = self.node
        now = node.now_ms()
        for op in ops:
            kind = op[0]
            if kind == "publish":
                _, vhost, name, wire, confirm_id = op
                local = self._local(vhost, name)
                if local is None:
                    # Not (or no longer, or not yet) led here: never confirmed.
                    if confirm_id is not None:
                        self.reply(src, ["confirm", confirm_id, False])
                    continue
                confirm = None if confirm_id is None else _ConfirmBack(self, src, confirm_id)
                local.publish(message_from_wire(wire, node.next_message_id()), now, confirm)
            elif kind in ("settle", "requeue", "reject"):
                _, vhost, name, incarnation, seqs = op
                local = self._local(vhost, name)
                if local is None or local.leader.ref.incarnation != incarnation:
                    continue
                ref = local.leader.ref
                # Only what that node's consumers hold is theirs to settle: a settlement sent
                # again after its link came back may name a delivery this node has since
                # taken back (the link went down) and handed to another consumer.
                held: set[int] = set()
                for key, proxy in list(self.proxies.items()):
                    if proxy.node == src:
                        held.update(proxy.unacked.get(ref, ()))
                        proxy.settled(ref, seqs)
                        if proxy.idle():
                            del self.proxies[key]
                kept = tuple(seq for seq in seqs if seq in held)
                if len(kept) != len(seqs):
                    log.debug("%s from node '%s' for queue '%s': %d of %d deliveries not held there",
                              kind, peer_text(src), peer_text(str(name)), len(seqs) - len(kept), len(seqs))
                seqs = kept
                if seqs:
                    getattr(local, kind)(ref, seqs, now)
            elif kind == "credit":
                _, vhost, name, session_id, channel, tag, limit = op
                proxy = self.proxies.get((src, session_id))
                key = (int(channel), str(tag))
                local = self._local(vhost, name)
                if proxy is None or key not in proxy.limits or local is None:
                    # Dropped here (its node was thought lost, the queue is gone): the consumer's
                    # node cancels it, so its client knows to consume again.
                    self.reply(src, ["cancelled", session_id, key[0], key[1]])
                elif limit > proxy.limits[key]:
                    proxy.limits[key] = int(limit)
                    local.dispatch(now)
            elif kind == "cancel":
                _, vhost, name, session_id, channel, tag = op
                proxy = self.proxies.get((src, session_id))
                local = self._local(vhost, name)
                if proxy is not None:
                    proxy.forget(int(channel), str(tag))
                    if local is not None:
                        local.remove_consumer(proxy, int(channel), str(tag), now)
                        local.consumers_gone(now)
                    if proxy.idle():
                        del self.proxies[(src, session_id)]
            elif kind == "cancel_channel":
                _, vhost, name, session_id, channel = op
                proxy = self.proxies.get((src, session_id))
                local = self._local(vhost, name)
                if proxy is not None:
                    for key in [k for k, q in proxy.queues.items() if k[0] == channel and q == (vhost, name)]:
                        proxy.forget(*key)
                    if local is not None:
                        local.remove_channel(proxy, int(channel))
                        local.consumers_gone(now)
                    if proxy.idle():
                        del self.proxies[(src, session_id)]

    def on_replies(self, src: str, items: Any) -> None:
        node = self.node
        # Queues that delivered in this batch: their consumers' credit is recomputed after it.
        delivered_from: set[tuple[str, str]] = set()
        for item in items:
            kind = item[0]
            if kind == "confirm":
                self._resolve(int(item[1]), bool(item[2]))
            elif kind == "deliver":
                _, session_id, channel, tag, vhost, name, incarnation, seq, wire, redelivered = item
                self._delivered(src, session_id, channel, tag, vhost, name, incarnation, seq, wire, redelivered)
                delivered_from.add((vhost, name))
            elif kind == "cancelled":
                _, session_id, channel, tag = item
                session = node.sessions.get(session_id)
                for client in self._consumed:
                    if client.home == src:
                        client.consumers.pop((session_id, channel, tag), None)
                if session is not None:
                    session.cancel_consumer(channel, tag)
        # A consumer with no prefetch limit (auto-ack, or prefetch 0) gets credit for a window of
        # deliveries ahead, and no ack will ever come back to renew it: renew it as they arrive
        # (a prefetch-limited consumer's limit does not move here, so nothing is sent for it).
        now = node.now_ms()
        for key in delivered_from:
            client = self._clients.get(key)
            if client is not None:
                client.dispatch(now)

    def _delivered(self, src: str, session_id: str, channel: int, tag: str, vhost: str, name: str,
                   incarnation: int, seq: int | None, wire: Any, redelivered: bool) -> None:
        client = self._clients.get((vhost, name))
        session = self.node.sessions.get(session_id)
        tag_given = None
        if client is not None and session is not None:
            client.delivered(session_id, channel, tag)
            handle = None if seq is None else (client.ref(incarnation, src), seq)
            message = message_from_wire(wire, self.node.next_message_id())
            tag_given = session.deliver(channel, tag, handle, message, redelivered)
        if tag_given is None and seq is not None:
            # The consumer went meanwhile: the message goes back to its queue.
            self.send(src, ["requeue", vhost, name, incarnation, [seq]])

    # ------------------------------------------------------------------ calls served (A)

    def on_ops_after(self, src: str, applied: int, ops: Any) -> None:
        """Ops another node sent once it had applied the metadata log through `applied`: a queue
        it routed to may be one this node is about to lead (declared there, applied there, not
        yet here). They wait until this node applied as much (at most `METADATA_WAIT`, as a
        node reset since has another log), behind any of the same node's that wait already."""
        pending = self._deferred.get(src)
        if pending is None and self.metadata_applied() >= applied:
            self.on_ops(src, ops)
            return
        if pending is None:
            if self._nursery is None:
                self.on_ops(src, ops)
                return
            pending = self._deferred[src] = deque()
            self._drained[src] = trio.Event()
            self._nursery.start_soon(self._apply_deferred, src, pending)
        pending.append((applied, ops))

    async def _apply_deferred(self, src: str, pending: deque[tuple[int, Any]]) -> None:
        try:
            while pending:
                applied, ops = pending[0]
                await self._caught_up(applied)
                pending.popleft()
                self.on_ops(src, ops)
        finally:
            del self._deferred[src]
            self._drained.pop(src).set()

    async def _caught_up(self, applied: int) -> None:
        driver = self.node.driver
        if driver is not None:
            with trio.move_on_after(METADATA_WAIT):
                await driver.wait_applied(METADATA_GROUP, applied)

    async def serve_call(self, src: str, method: str, args: Mapping[str, Any]) -> Any:
        # After the ops the caller sent before it, and with the metadata it had.
        await self._caught_up(int(args.get("applied", 0)))
        while src in self._drained:
            await self._drained[src].wait()
        local = self._local(args["vhost"], args["name"])
        if local is None:
            # A replicated queue hosted here may be electing its leader.
            await self.node.mirroring.until_served(str(args["vhost"]), str(args["name"]))
            local = self._local(args["vhost"], args["name"])
        if local is None:
            return {"missing": True}
        now = self.node.now_ms()
        if method == GET:
            got = await local.get(now, bool(args["no_ack"]))
            if got is None:
                return {"empty": True}
            if not args["no_ack"]:
                self._proxy(src, "get:" + src).unacked[got.ref].add(got.seq)
            return {"incarnation": got.ref.incarnation, "seq": got.seq, "message": message_to_wire(got.message),
                    "redelivered": got.redelivered, "remaining": got.remaining}
        if method == PURGE:
            return {"count": await local.purge(now)}
        if method == COUNTS:
            counts = await local.counts(now, bool(args["touch"]))
            return {"messages": counts.messages, "consumers": counts.consumers}
        if method == CONSUME:
            proxy = self._proxy(src, str(args["session"]))
            channel, tag = int(args["channel"]), str(args["tag"])
            ref = ConsumerRef(proxy, channel, tag, bool(args["no_ack"]))
            proxy.queues[(channel, tag)] = (local.vhost, local.name)
            proxy.limits[(channel, tag)] = 0  # until its node sends credit
            refused = await local.add_consumer(ref, int(args["priority"]), bool(args["exclusive"]))
            if refused is not None:
                proxy.forget(channel, tag)
                return {"refused": _refusal_to_wire(refused)}
            return {"ok": True}
        raise ValueError(f"unknown queue call {method}")

    def _proxy(self, src: str, session_id: str) -> ConsumerProxy:
        proxy = self.proxies.get((src, session_id))
        if proxy is None:
            proxy = self.proxies[(src, session_id)] = ConsumerProxy(self, src, session_id)
        return proxy


def _unconfirmed(accepted: bool) -> None:
    """The outcome of a forwarded publish whose publisher asked for no confirm."""


class _ConfirmBack:
    """The confirm of a publish forwarded by another node: answered to it, batched."""

    __slots__ = ("peers", "node", "confirm_id")

    def __init__(self, peers: QueuePeers, node: str, confirm_id: int) -> None:
        self.peers = peers
        self.node = node
        self.confirm_id = confirm_id

    def __call__(self, accepted: bool) -> None:
        self.peers.reply(self.node, ["confirm", self.confirm_id, accepted])


def serve_queue_peers(node: "Node", transport: PeerTransport) -> None:
    """Register the queue traffic's handlers on the transport, once per process; they reach
    the running core's `QueuePeers` (none while the core starts or resets: a call is then
    answered as for a missing queue, and casts are dropped, as with a lost link)."""

    def on_ops(src: str, ops: Any) -> None:
        if node.queue_peers is not None:
            applied, batch = ops
            node.queue_peers.on_ops_after(src, int(applied), batch)

    def on_replies(src: str, items: Any) -> None:
        if node.queue_peers is not None:
            node.queue_peers.on_replies(src, items)

    def call_handler(method: str) -> Any:
        async def handle(src: str, args: Any) -> Any:
            if not isinstance(args, Mapping):
                raise ValueError("queue call arguments must be a map")
            if node.queue_peers is None:
                return {"missing": True}
            return await node.queue_peers.serve_call(src, method, args)

        return handle

    transport.on_cast(OPS, on_ops)
    transport.on_cast(REPLIES, on_replies)
    for method in (GET, CONSUME, PURGE, COUNTS):
        transport.on_call(method, call_handler(method))
