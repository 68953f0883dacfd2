"""A latency histogram with fixed buckets, in the shape Prometheus exposes one: cumulative
counts per upper bound, the sum and the count of observations.

The group-commit writer observes the duration of every durable write (the LMDB commit and
its fsyncs) from its worker thread; a scrape reads a `HistogramSnapshot` from the trio
thread. Each observation updates a few integers and a float under a lock, so a snapshot
is never torn (a reader sees all of an observation or none of it).
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass
from typing import Final

# Upper bounds in seconds: from a fast NVMe fsync (~50 µs) to a stalled disk (several seconds).
FSYNC_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                        1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    bounds: tuple[float, ...]  # upper bounds, ascending (+Inf is implied)
    cumulative: tuple[int, ...]  # observations <= each bound, then the total (+Inf)
    sum: float
    count: int


class LatencyHistogram:
    def __init__(self, bounds: tuple[float, ...] = FSYNC_BUCKETS) -> None:
        assert list(bounds) == sorted(bounds) and len(set(bounds)) == len(bounds)
        self._bounds = tuple(bounds)
        self._counts = [0] * (len(bounds) + 1)  # per bucket (not cumulative); the last is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        # bisect_left: a value equal to a bound falls in that bound's bucket (le = "less or equal").
        index = bisect.bisect_left(self._bounds, seconds)
        with self._lock:
            self._counts[index] += 1
            self._sum += seconds

    def snapshot(self) -> HistogramSnapshot:
        with self._lock:
            counts = list(self._counts)
            total = self._sum
        cumulative = []
        running = 0
        for c in counts:
            running += c
            cumulative.append(running)
        return HistogramSnapshot(self._bounds, tuple(cumulative), total, running)
