"""`QueueRates`: the node's message-rate history of the queues it leads.

Only a queue's leader counts its messages, so only the leader's node can turn the counts
into rates. Every node samples the counters and lengths of the queues it leads each
`SAMPLE_INTERVAL_S` (whether or not it serves the management API: RabbitMQ's management
agent too runs on every node), and answers their rates with their counters when another
node lists them (`broker.replica_status`), and keeps their past samples (bounded: 10 minutes
of 5 s samples, then one a minute for an hour, unchanged ones not at all) for the charts,
answered only when a chart asks. The rates and the history themselves are the pure
`broker.management.rates.RateSamples` and `History`; this is only their clock (the wall
clock, as the charts' timestamps are).

One per node, kept across core resets (a queue no longer led here is forgotten at the
next sample).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import trio

from broker.management.rates import SAMPLE_INTERVAL_S, History, RateSamples, SampleRange, message_stats_counts
from broker.node_view import NodeView

if TYPE_CHECKING:
    from broker.node import Node


class QueueRates:
    def __init__(self) -> None:
        self.samples = RateSamples()
        self.history = History()

    def sample(self, view: NodeView, now: float) -> None:
        """One pass: the counters and lengths of every queue led here at `now` (wall clock, s)."""
        counts = {(vhost, name): {**message_stats_counts(counters), **lengths}
                  for vhost, name, counters, lengths in view.queue_activity()}
        self.samples.record(now, counts)
        self.history.record(now, counts)

    def values(self, vhost: str, name: str, names: Sequence[str], at: SampleRange) -> dict[str, list[int]]:
        """A queue led here: its past values of `names` at `at`'s times (empty before its
        first sample)."""
        return self.history.values((vhost, name), names, at)

    def rates(self, vhost: str, name: str) -> dict[str, float]:
        """The rates of a queue led here, by counter and length name (empty before its first
        sample; every rate 0.0 until its second)."""
        return self.samples.rates((vhost, name))

    async def run(self, node: "Node") -> None:
        """Sample forever (the node's nursery cancels it)."""
        view = NodeView(node)
        while True:
            self.sample(view, time.time())
            await trio.sleep(SAMPLE_INTERVAL_S)
