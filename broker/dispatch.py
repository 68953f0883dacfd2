"""The consumers of one queue and which of them gets the next message.

Pure: the queue leader's shell adds and removes consumers and asks
`next_consumer(has_credit)` for each message it is about to deliver. Credit
(prefetch, channel flow, connection blocking) lives in the consumer's channel, so
the caller passes it in as a function; this module never counts deliveries.

RabbitMQ 3.10 rules (`rabbit_queue_consumers`, `rabbit_amqqueue_process`):

* Round robin among the consumers of the highest priority (`x-priority` consumer
  argument, default 0) that have credit; lower-priority consumers receive only
  while every higher-priority one is out of credit. A consumer that receives a
  message goes to the back of its priority's line. A consumer found out of credit
  when a message is on offer leaves its line ("blocked"); it rejoins at the back
  once it has credit again (`unblock`, at the next dispatch or offer), so a
  consumer that waited for its acks comes after those that did not have to.
* `basic.consume` with exclusive=true is refused while the queue has any
  consumer or is a single-active-consumer queue, and any consumer is refused
  while an exclusive one exists:
  403 "ACCESS_REFUSED - queue 'q' in vhost '/' in exclusive use".
* Single active consumer (x-single-active-consumer): only the earliest
  registered consumer still present receives, whatever its priority (consumer
  priority does not apply to single active consumer in 3.10); when it goes, the
  next one in registration order takes over.

The common case — one priority, the front consumer has credit — is O(1).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterator

from broker.arguments import Refusal, exclusive_use_refusal


@dataclass(slots=True, eq=False)
class Consumer:
    tag: str
    # Whatever the shell uses to reach the consumer's channel; compared by equality.
    channel: Hashable
    priority: int = 0
    exclusive: bool = False
    ack_required: bool = True
    # Order of registration, set by `ConsumerSet.add` (single active consumer uses it).
    registered: int = field(default=0, compare=False)
    # The name queue commands use for this consumer (`Deliver.consumer`): plain text,
    # so it can travel through a replicated log.
    name: str = ""

    @property
    def key(self) -> tuple[Hashable, str]:
        return (self.channel, self.tag)


class ConsumerSet:
    """The consumers of one queue, in dispatch order."""

    def __init__(self, queue: str, vhost: str, single_active: bool = False) -> None:
        self.queue = queue
        self.vhost = vhost
        self.single_active = single_active
        self._by_key: dict[tuple[Hashable, str], Consumer] = {}
        # priority -> consumers in round-robin order; `_priorities` sorted highest first,
        # those of every consumer, in a line or blocked (a line may be empty).
        self._lines: dict[int, deque[Consumer]] = {}
        self._priorities: list[int] = []
        # Consumers found out of credit, in the order they were found so.
        self._blocked: list[Consumer] = []
        self._registrations = 0
        self._exclusive: Consumer | None = None

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self) -> Iterator[Consumer]:
        """Consumers in registration order."""
        return iter(self._by_key.values())

    def get(self, channel: Hashable, tag: str) -> Consumer | None:
        return self._by_key.get((channel, tag))

    @property
    def active(self) -> Consumer | None:
        """The single active consumer (None when the queue is not single-active or empty)."""
        if not self.single_active or not self._by_key:
            return None
        return next(iter(self._by_key.values()))

    def check_exclusive(self, exclusive: bool) -> Refusal | None:
        """Would a new consumer (exclusive or not) be refused? RabbitMQ's rule; an exclusive
        consumer of a single-active-consumer queue is refused even with no consumer
        (rabbit_amqqueue_process: `exclusive_consume_unavailable`)."""
        if self._exclusive is not None or (exclusive and (self._by_key or self.single_active)):
            return exclusive_use_refusal(self.queue, self.vhost)
        return None

    def add(self, consumer: Consumer) -> Refusal | None:
        refusal = self.check_exclusive(consumer.exclusive)
        if refusal is not None:
            return refusal
        assert consumer.key not in self._by_key, "the channel refuses a reused consumer tag"
        self._registrations += 1
        consumer.registered = self._registrations
        self._by_key[consumer.key] = consumer
        line = self._lines.get(consumer.priority)
        if line is None:
            line = self._lines[consumer.priority] = deque()
            self._priorities.append(consumer.priority)
            self._priorities.sort(reverse=True)
        line.append(consumer)
        if consumer.exclusive:
            self._exclusive = consumer
        return None

    def remove(self, channel: Hashable, tag: str) -> Consumer | None:
        consumer = self._by_key.pop((channel, tag), None)
        if consumer is None:
            return None
        line = self._lines[consumer.priority]
        if consumer in self._blocked:
            self._blocked.remove(consumer)
        else:
            line.remove(consumer)
        if not line and all(c.priority != consumer.priority for c in self._by_key.values()):
            del self._lines[consumer.priority]
            self._priorities.remove(consumer.priority)
        if self._exclusive is consumer:
            self._exclusive = None
        return consumer

    def remove_channel(self, channel: Hashable) -> list[Consumer]:
        """A channel closed: drop all its consumers, returned in registration order."""
        gone = [c for c in self._by_key.values() if c.channel == channel]
        for consumer in gone:
            self.remove(consumer.channel, consumer.tag)
        return gone

    def next_consumer(self, has_credit: Callable[[Consumer], bool]) -> Consumer | None:
        """The consumer to hand the next message to, or None if nobody can take one.

        The chosen consumer moves to the back of its line, so calling this once per
        delivered message is the round robin.
        """
        if self.single_active:
            active = self.active
            return active if active is not None and has_credit(active) else None
        if self._blocked:  # inline: this runs once per message
            self.unblock(has_credit)
        for priority in self._priorities:
            line = self._lines[priority]
            while line:
                consumer = line[0]
                if has_credit(consumer):
                    line.rotate(-1)
                    return consumer
                # rabbit_queue_consumers:deliver_to_consumer blocks it (block_consumer).
                line.popleft()
                self._blocked.append(consumer)
        return None

    def unblock(self, has_credit: Callable[[Consumer], bool]) -> None:
        """Blocked consumers that have credit again rejoin their lines at the back, in the
        order they were blocked (rabbit_queue_consumers:unblock/2 after an ack)."""
        if not self._blocked:
            return
        still: list[Consumer] = []
        for consumer in self._blocked:
            if has_credit(consumer):
                self._lines[consumer.priority].append(consumer)
            else:
                still.append(consumer)
        self._blocked = still
