"""What a chaos run must prove, computed from its history alone (pure: no I/O, no clock).

A run's history says which message ids publishers attempted, which the broker confirmed
(basic.ack, and only that: a nack, a return, a connection error or a confirm that never
came leaves the id unconfirmed), which nodes faulted when, and every delivery consumers
and the final drain received. The verdict:

- lost: confirmed ids that no consumer ever received. Must be empty.
- unexpected: delivered ids that no publisher ever attempted. Must be empty.
- duplicated: ids received more than once (a redelivery after a lost ack or a consumer's
  connection lost mid-flight; AMQP allows it, so it is counted and reported, not failed).
- unconfirmed ids may or may not arrive; both are fine.

The rule does not depend on how many replicas a queue has: with single-replica queues a
confirmed message survives a crash because it was fsynced on its home node, which comes
back; with mirrored queues it survives because a majority holds it. Either way every
confirmed id must come out, so the checker is exactly as strict once mirroring exists.

Failover times: for each fault, how long each publisher connected to a node the fault did
not touch waited for its next confirm; the worst of those is the fault's failover time
(None when no surviving publisher got a confirm before the run ended). Recovery times: for
each fault, how long until every queue confirmed a publish again (the queue the fault hurt
most decides): with single-replica queues that is the node's restart, with mirrored queues
the election of a new leader.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Confirm:
    id: str
    at: float  # seconds since the run started
    publisher: int
    node: str  # the node the publisher was connected to
    queue: str = ""


@dataclass(frozen=True, slots=True)
class FaultSpan:
    kind: str
    nodes: tuple[str, ...]  # the nodes the fault touched
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Verdict:
    published: int
    confirmed: int
    delivered: int  # distinct ids received
    lost: tuple[str, ...]
    unexpected: tuple[str, ...]
    duplicated: int  # deliveries beyond the first of each id
    duplicated_ids: int  # ids received more than once
    failover: tuple[float | None, ...] = field(default=())
    recovery: tuple[float | None, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.lost and not self.unexpected


def check(published: Iterable[str], confirmed: Iterable[str], delivered: Iterable[str]) -> Verdict:
    """The verdict on one run: `published` every id a publisher attempted (once each),
    `confirmed` those basic.ack'ed, `delivered` every id received, once per delivery."""
    attempted = set(published)
    acked = set(confirmed)
    not_attempted = acked - attempted
    # A confirm for an id nobody sent is a fault in the harness, not a broker result.
    assert not not_attempted, f"confirmed but never attempted: {sorted(not_attempted)[:5]}"
    counts = Counter(delivered)
    received = set(counts)
    extra = sum(c - 1 for c in counts.values())
    return Verdict(
        published=len(attempted),
        confirmed=len(acked),
        delivered=len(received),
        lost=tuple(sorted(acked - received)),
        unexpected=tuple(sorted(received - attempted)),
        duplicated=extra,
        duplicated_ids=sum(1 for c in counts.values() if c > 1),
    )


def failover_times(faults: Sequence[FaultSpan], confirms: Sequence[Confirm]) -> tuple[float | None, ...]:
    """Per fault: the longest any surviving publisher (one whose connection at the fault was
    to a node the fault did not touch) waited from the fault's start to its next confirm."""
    by_publisher: dict[int, list[Confirm]] = {}
    for c in sorted(confirms, key=lambda c: c.at):
        by_publisher.setdefault(c.publisher, []).append(c)
    times: list[float | None] = []
    for fault in faults:
        worst: float | None = None
        for history in by_publisher.values():
            before = [c for c in history if c.at <= fault.start]
            if not before or before[-1].node in fault.nodes:
                continue  # not connected yet, or connected to a node the fault touched
            after = next((c for c in history if c.at > fault.start), None)
            if after is None:
                continue
            waited = after.at - fault.start
            worst = waited if worst is None else max(worst, waited)
        times.append(worst)
    return tuple(times)


def recovery_times(faults: Sequence[FaultSpan], confirms: Sequence[Confirm]) -> tuple[float | None, ...]:
    """Per fault: from its start until the last of the queues confirmed a publish again (None
    when some queue that confirmed before the fault never confirmed after it)."""
    ordered = sorted(confirms, key=lambda c: c.at)
    times: list[float | None] = []
    for fault in faults:
        queues = {c.queue for c in ordered if c.at <= fault.start}
        first_after: dict[str, float] = {}
        for c in ordered:
            if c.at > fault.start and c.queue in queues and c.queue not in first_after:
                first_after[c.queue] = c.at
        if not queues or set(first_after) != queues:
            times.append(None)
        else:
            times.append(max(first_after.values()) - fault.start)
    return tuple(times)


def summarise(times: Iterable[float | None]) -> str:
    """`median/max` seconds of the measured failover times, '-' when none."""
    known = [t for t in times if t is not None]
    if not known:
        return "-"
    return f"{statistics.median(known):.2f}/{max(known):.2f}"
