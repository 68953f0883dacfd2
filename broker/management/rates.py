"""Message rates from counters the node samples (pure: the sample time is passed in).

RabbitMQ's "basic" rates mode reports, for each counter, its value and the rate over the
last sample interval (5 s by default) as `{"name": n, "name_details": {"rate": r}}`. The
node's sampler (`broker.queue_rates`) reads the `QueueCounters` and lengths of every queue
it leads each interval and hands them here with the time; a rate is the difference between
the last two samples over the time between them (0.0 until there are two). A queue's rates
travel with its counters from its leader's node (`broker.replica_status`), so any node
shows them; a vhost's and the overview's are the sums of their queues' rates.

Charts: RabbitMQ's API adds `samples` to a `*_details` object when asked
(`?msg_rates_age=600&msg_rates_incr=5`, `lengths_age` / `lengths_incr`): the value at each of
`age / incr + 1` times `incr` apart, aligned on multiples of `incr`, newest first (0 before the
object has a sample), with `avg` (their mean) and `avg_rate` (newest minus oldest over the
span). So every object's samples are also kept in a `History`: each sample for the last
`FINE_KEEP_S` (10 minutes at 5 s), then the last one of each `COARSE_STEP_S` minute up to
`COARSE_KEEP_S` (an hour), and a sample equal to the one before it is not kept at all (the
value at a time is that of the latest sample at or before it), so an idle queue costs one
sample. A `SampleRange` is the times a chart asks for; the node answering for a queue gives
its values at those times, and a vhost's or the overview's chart is the sum of its queues'.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

# The queue counters RabbitMQ's message_stats shows, in its order.
MESSAGE_STATS = ("ack", "deliver", "deliver_get", "deliver_no_ack", "get", "get_empty", "get_no_ack",
                 "publish", "redeliver")
# Queue lengths whose change is charted as *_details rates.
QUEUE_TOTALS = ("messages", "messages_ready", "messages_unacknowledged")

SAMPLE_INTERVAL_S = 5.0
# What a History keeps (seconds): every sample for FINE_KEEP_S, then one per COARSE_STEP_S
# up to COARSE_KEEP_S (RabbitMQ's basic retention: 5 s samples for 10 minutes, 60 s for an hour).
FINE_KEEP_S = 600.0
COARSE_STEP_S = 60.0
COARSE_KEEP_S = 3600.0
# The values a History keeps per sample, in this order (counters, then lengths).
SAMPLED: tuple[str, ...] = (*MESSAGE_STATS, *QUEUE_TOTALS)
# The most sample times one chart may ask for (a day at 60 s): bounds each answer.
MAX_CHART_SAMPLES = 1441


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


def with_details(counts: Mapping[str, int], rates: Mapping[str, float], names: tuple[str, ...],
                 charted: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """`{"name": n, "name_details": {"rate": r}}` for each of `names` present in `counts`, the
    rate from `rates` (0.0 for one not there: not sampled yet, or its leader did not answer),
    and the name's chart items from `charted` when a chart was asked for (`charts`)."""
    out: dict[str, Any] = {}
    for name in names:
        if name in counts:
            out[name] = counts[name]
            out[f"{name}_details"] = {"rate": float(rates.get(name, 0.0)), **(charted or {}).get(name, {})}
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


@dataclass(frozen=True, slots=True)
class SampleRange:
    """The times a chart asks values for: `count` times `incr_ms` apart, the newest `end_ms`,
    newest first (RabbitMQ's `samples` order)."""

    end_ms: int
    incr_ms: int
    count: int

    @classmethod
    def last(cls, now_ms: int, age_s: int, incr_s: int) -> "SampleRange":
        """`age_s` seconds back from now, every `incr_s` seconds, aligned on multiples of it."""
        assert age_s >= 0 and incr_s > 0
        incr_ms = incr_s * 1000
        return cls(now_ms // incr_ms * incr_ms, incr_ms, min(age_s // incr_s + 1, MAX_CHART_SAMPLES))

    def times_ms(self) -> list[int]:
        return [self.end_ms - i * self.incr_ms for i in range(self.count)]

    def wire(self) -> list[int]:
        return [self.end_ms, self.incr_ms, self.count]

    @classmethod
    def from_wire(cls, value: object) -> "SampleRange | None":
        """A range sent by another node; None if it is not one (or asks for too many times)."""
        if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(type(v) is int for v in value):
            return None
        end_ms, incr_ms, count = value
        if incr_ms <= 0 or not 0 < count <= MAX_CHART_SAMPLES:
            return None
        return cls(end_ms, incr_ms, count)


Sample = tuple[float, tuple[int, ...]]


@dataclass
class History:
    """Every object's past samples (of SAMPLED), bounded in time and count."""

    _fine: dict[Hashable, deque[Sample]] = field(default_factory=dict)
    _coarse: dict[Hashable, deque[Sample]] = field(default_factory=dict)

    def record(self, now: float, samples: Mapping[Hashable, Mapping[str, int]]) -> None:
        """One sampling pass at `now` (seconds); objects not in it are forgotten."""
        for key in [k for k in self._fine if k not in samples]:
            del self._fine[key]
            self._coarse.pop(key, None)
        for key, counts in samples.items():
            values = tuple(int(counts.get(name, 0)) for name in SAMPLED)
            fine = self._fine.setdefault(key, deque())
            if not fine or fine[-1][1] != values:
                fine.append((now, values))
            coarse = self._coarse.setdefault(key, deque())
            # Older than the fine window: keep the last sample of each coarse step, and of
            # those older than the coarse window only the newest (the value from then on).
            while len(fine) > 1 and fine[0][0] < now - FINE_KEEP_S:
                old = fine.popleft()
                if coarse and coarse[-1][0] // COARSE_STEP_S == old[0] // COARSE_STEP_S:
                    coarse[-1] = old
                else:
                    coarse.append(old)
            while len(coarse) > 1 and coarse[1][0] <= now - COARSE_KEEP_S:
                coarse.popleft()

    def kept(self, key: Hashable) -> int:
        """How many samples of `key` are kept (what its history costs)."""
        return len(self._fine.get(key, ())) + len(self._coarse.get(key, ()))

    def values(self, key: Hashable, names: Sequence[str], at: SampleRange) -> dict[str, list[int]]:
        """The value of each of `names` at each of `at`'s times, newest first: that of the
        latest sample at or before the time, 0 before the first (empty for an unknown key)."""
        fine = self._fine.get(key)
        if fine is None:
            return {}
        entries = [*self._coarse.get(key, ()), *fine]
        columns = [SAMPLED.index(name) for name in names]
        out: dict[str, list[int]] = {name: [] for name in names}
        i = len(entries) - 1
        for t_ms in at.times_ms():  # newest first, so the walk only goes back
            while i >= 0 and entries[i][0] * 1000 > t_ms:
                i -= 1
            for name, column in zip(names, columns):
                out[name].append(entries[i][1][column] if i >= 0 else 0)
        return out


def sum_values(many: Sequence[Mapping[str, Sequence[int]]], names: Sequence[str], at: SampleRange) -> dict[str, list[int]]:
    """A chart of a set of objects (a vhost's queues, the cluster's): the sum at each time.
    An object without values (its leader did not answer) counts as 0."""
    out = {name: [0] * at.count for name in names}
    for values in many:
        for name in names:
            column = values.get(name)
            if column is None or len(column) != at.count:
                continue
            total = out[name]
            for i, v in enumerate(column):
                total[i] += int(v)
    return out


def chart(values: Sequence[int], at: SampleRange) -> dict[str, Any]:
    """The chart items RabbitMQ adds to a `*_details` object: the samples with their times,
    their mean, and the change from the oldest to the newest per second of the span."""
    span_s = (at.count - 1) * at.incr_ms / 1000
    return {
        "samples": [{"sample": v, "timestamp": t} for v, t in zip(values, at.times_ms())],
        "avg_rate": (values[0] - values[-1]) / span_s if span_s > 0 and values else 0.0,
        "avg": sum(values) / len(values) if values else 0.0,
    }


def charts(values: Mapping[str, Sequence[int]], ranges: Mapping[str, SampleRange]) -> dict[str, dict[str, Any]]:
    """The chart items of each name in `values`, by name, each on the range of its group
    (`ranges`: "msg" for the message_stats counters, "lengths" for the queue lengths)."""
    out: dict[str, dict[str, Any]] = {}
    for name, column in values.items():
        at = ranges.get("lengths" if name in QUEUE_TOTALS else "msg")
        if at is not None:
            out[name] = chart(column, at)
    return out


# The query parameters of each chart group (RabbitMQ's names): (age, incr).
CHART_PARAMS: Mapping[str, tuple[str, str]] = {"msg": ("msg_rates_age", "msg_rates_incr"),
                                               "lengths": ("lengths_age", "lengths_incr")}


def chart_ranges(query: Mapping[str, str], now_ms: int) -> dict[str, SampleRange] | str:
    """The charts a request asks for, by group (none without both `*_age` and `*_incr`), or
    why they cannot be drawn (not whole seconds, an increment of 0, too many samples)."""
    out: dict[str, SampleRange] = {}
    for group, (age_key, incr_key) in CHART_PARAMS.items():
        if age_key not in query or incr_key not in query:
            continue
        try:
            age, incr = int(query[age_key]), int(query[incr_key])
        except ValueError:
            return f"{age_key} and {incr_key} must be whole numbers of seconds"
        if age < 0 or incr <= 0:
            return f"{age_key} must be 0 or more and {incr_key} more than 0"
        if age // incr + 1 > MAX_CHART_SAMPLES:
            return f"{age_key} / {incr_key} asks for more than {MAX_CHART_SAMPLES} samples"
        out[group] = SampleRange.last(now_ms, age, incr)
    return out
