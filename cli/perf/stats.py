"""Summaries of repeated measurements: percentiles, min/median/max and the A/B ratio."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

__all__ = ["Spread", "percentile", "ratio", "spread"]


def percentile(sorted_values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of an ascending list (fraction in [0, 1]); nan when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(frozen=True, slots=True)
class Spread:
    min: float
    median: float
    max: float
    n: int


def spread(values: list[float]) -> Spread:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return Spread(math.nan, math.nan, math.nan, 0)
    return Spread(min(finite), statistics.median(finite), max(finite), len(finite))


def ratio(a_values: list[float], b_values: list[float]) -> Spread:
    """A/B per repetition (run i of A against run i of B, which ran right after it)."""
    pairs = [
        a / b
        for a, b in zip(a_values, b_values)
        if not math.isnan(a) and not math.isnan(b) and b > 0
    ]
    return spread(pairs)
