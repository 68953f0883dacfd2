"""Message rates from counters the node samples (pure: the sample time is passed in).

RabbitMQ's "basic" rates mode reports, for each counter, its value and the rate over the
last sample interval (5 s by default) as `{"name": n, "name_details": {"rate": r}}`. The
node's sampler (`broker.queue_rates`) reads the `QueueCounters` and lengths of every queue
it leads each interval and hands them here with the time; a rate is the difference between
the last two samples over the time between them (0.0 until there are two). A queue's rates
travel with its counters from its leader's node (`broker.replica_status`), so any node
shows them; a vhost's and the overview's are the sums of their queues' rates.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

# The queue counters RabbitMQ's message_stats shows, in its order.
MESSAGE_STATS = ("ack", "deliver", "deliver_get", "deliver_no_ack", "get", "get_empty", "get_no_ack",
                 "publish", "redeliver")
# Queue lengths whose change is charted as *_details rates.
QUEUE_TOTALS = ("messages", "messages_ready", "messages_unacknowledged")

SAMPLE_INTERVAL_S = 5.0


def message_stats_counts(counters: Any) -> dict[str, int]:
    """A `QueueCounters` as RabbitMQ's message_stats counts (deliver_get sums the four ways out)."""
    return {
        "ack": counters.ack,
        "deliver": counters.deliver,
        "deliver_get": counters.deliver + counters.deliver_no_ack + counters.get + counters.get_no_ack,
        "deliver_no_ack": counters.deliver_no_ack,
        "get": counters.get,
        "get_empty": counters.get_empty,
        "get_no_ack": counters.get_no_ack,
        "publish": counters.publish,
        "redeliver": counters.redeliver,
    }


def counters_message_stats(counters: Mapping[str, int] | None) -> dict[str, int]:
    """The same from a `QueueCounters` sent as a map (a queue's leader on another node
    answers with its counters so; None when no leader answered: no message_stats)."""
    if counters is None:
        return {}
    return message_stats_counts(SimpleNamespace(**{k: int(v) for k, v in counters.items()}))


def sum_counts(many: list[Mapping[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for counts in many:
        for key, value in counts.items():
            total[key] = total.get(key, 0) + value
    return total


@dataclass
class RateSamples:
    """The last two samples of every object's counters, by object key."""

    _previous: dict[Hashable, tuple[float, Mapping[str, int]]] = field(default_factory=dict)
    _latest: dict[Hashable, tuple[float, Mapping[str, int]]] = field(default_factory=dict)

    def record(self, now: float, samples: Mapping[Hashable, Mapping[str, int]]) -> None:
        """One sampling pass: every object's counters at `now`; objects not in it are forgotten."""
        self._previous = {key: self._latest[key] for key in samples if key in self._latest}
        self._latest = {key: (now, dict(counts)) for key, counts in samples.items()}

    def rate(self, key: Hashable, name: str) -> float:
        previous, latest = self._previous.get(key), self._latest.get(key)
        if previous is None or latest is None or latest[0] <= previous[0] or name not in previous[1]:
            return 0.0  # fewer than two samples of it: no rate yet
        delta = latest[1].get(name, 0) - previous[1].get(name, 0)
        return round(delta / (latest[0] - previous[0]), 1)

    def rates(self, key: Hashable) -> dict[str, float]:
        """The rate of every counter of `key`'s latest sample (empty for an object not sampled)."""
        latest = self._latest.get(key)
        return {name: self.rate(key, name) for name in latest[1]} if latest is not None else {}


def with_details(counts: Mapping[str, int], rates: Mapping[str, float], names: tuple[str, ...]) -> dict[str, Any]:
    """`{"name": n, "name_details": {"rate": r}}` for each of `names` present in `counts`, the
    rate from `rates` (0.0 for one not there: not sampled yet, or its leader did not answer)."""
    out: dict[str, Any] = {}
    for name in names:
        if name in counts:
            out[name] = counts[name]
            out[f"{name}_details"] = {"rate": float(rates.get(name, 0.0))}
    return out


def sum_rates(many: list[Mapping[str, float]]) -> dict[str, float]:
    """Rates of a set of queues (a vhost's, the cluster's): the sum of theirs. Each queue is
    sampled by its own leader's node at its own moments, so the sum of the rates is the
    rate of the sum."""
    total: dict[str, float] = {}
    for rates in many:
        for key, value in rates.items():
            total[key] = total.get(key, 0.0) + float(value)
    return {key: round(value, 1) for key, value in total.items()}
