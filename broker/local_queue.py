"""`LocalQueue`: the `QueueClient` of a queue this node leads — method calls on its `QueueLeader`.

The publish, settle and dispatch operations run once per message: they are the
leader's own bound methods, taken once, so the seam costs nothing on the hot path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.queue_client import ConsumerRef, Got, QueueCounts, QueueRef

if TYPE_CHECKING:
    from broker.arguments import Refusal
    from broker.queue_leader import QueueLeader


class LocalQueue:
    __slots__ = ("leader", "vhost", "name", "publish", "backlogged", "pause_publisher", "dispatch",
                 "remove_consumer", "remove_channel")

    def __init__(self, leader: "QueueLeader") -> None:
        self.leader = leader
        self.vhost = leader.vhost
        self.name = leader.name
        self.publish = leader.publish
        self.backlogged = leader.backlogged
        self.pause_publisher = leader.pause_publisher
        self.dispatch = leader.dispatch
        self.remove_consumer = leader.remove_consumer
        self.remove_channel = leader.remove_channel

    @property
    def congested(self) -> bool:
        return self.leader.congested

    # The session settles only handles of an incarnation `holds` said is current.
    def settle(self, ref: QueueRef, seqs: tuple[int, ...], now_ms: int) -> None:
        self.leader.settle(seqs, now_ms)

    def requeue(self, ref: QueueRef, seqs: tuple[int, ...], now_ms: int) -> None:
        self.leader.requeue(seqs, now_ms)

    def reject(self, ref: QueueRef, seqs: tuple[int, ...], now_ms: int) -> None:
        self.leader.reject(seqs, now_ms)

    def holds(self, ref: QueueRef) -> bool:
        return ref is self.leader.ref and not self.leader.deleted

    async def add_consumer(self, ref: ConsumerRef, priority: int, exclusive: bool) -> "Refusal | None":
        return self.leader.add_consumer(ref, priority, exclusive)

    def consumers_gone(self, now_ms: int) -> None:
        leader = self.leader
        leader.dispatch(now_ms)
        leader.node.maybe_auto_delete(leader)

    async def get(self, now_ms: int, no_ack: bool) -> Got | None:
        leader = self.leader
        got = await leader.fetch(now_ms, no_ack)
        if got is None:
            return None
        return Got(leader.ref, got.seq, got.message, got.redelivered, got.remaining)

    async def purge(self, now_ms: int) -> int:
        return await self.leader.purge_now(now_ms)

    async def counts(self, now_ms: int, touch: bool) -> QueueCounts:
        leader = self.leader
        if touch:
            leader.touch(now_ms)
        return QueueCounts(leader.message_count(), leader.consumer_count())

