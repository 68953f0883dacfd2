"""The seeded nemesis: which fault strikes which node when, one fault at a time.

`plan(seed, kinds, ...)` is pure: the same seed gives the same schedule, so a failing run
is replayed by its seed. `Nemesis.run` carries a plan out against a `ChaosCluster`
(tests/chaos/cluster.py) and records each fault's span for the checker's failover times.

Fault kinds (each ends before the next starts, and the cluster is whole between them):
- kill:    SIGKILL a node, wait, start it again on the same data (a power cut).
- pause:   SIGSTOP a node, wait, SIGCONT (sockets stay open, nothing answers).
- isolate: cut one node from the other two (it is the minority).
- bridge:  cut two nodes from each other; both still see the third.
- restart: SIGTERM a node (a graceful stop), then start it again.
A target of LEADER means the node that leads the first queue of the workload at the moment
the fault strikes, as `list_queues pid` names it (RabbitMQ: the quorum leader's or the
classic master's process; Leveret: the queue's home node).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from tests.chaos.checker import FaultSpan

if TYPE_CHECKING:
    from tests.chaos.cluster import ChaosCluster

KINDS: Final = ("kill", "pause", "isolate", "bridge", "restart")
PARTITIONS: Final = ("isolate", "bridge")
LEADER: Final = -1


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str
    target: int  # a node index, or LEADER
    at: float  # seconds after the workload started
    duration: float  # how long the fault lasts before it is healed
    # For a bridge: the second node that loses `target` (the third sees both).
    other: int | None = None

    def describe(self) -> str:
        who = "leader" if self.target == LEADER else f"n{self.target + 1}"
        if self.kind == "bridge" and self.other is not None:
            who += f"/n{self.other + 1}"
        return f"{self.kind} {who} @{self.at:.1f}s for {self.duration:.1f}s"


def plan(seed: int, kinds: Sequence[str], *, nodes: int = 3, faults: int = 2, first_at: float = 4.0,
         duration: tuple[float, float] = (3.0, 6.0), gap: tuple[float, float] = (4.0, 8.0),
         leader_share: float = 0.5) -> list[Fault]:
    """`faults` faults drawn from `kinds`, the first at `first_at`, each lasting a draw from
    `duration`, the next starting a draw from `gap` after the previous one ended (the nemesis
    also waits until the cluster is whole again, so real starts can be later)."""
    unknown = set(kinds) - set(KINDS)
    assert not unknown, f"unknown fault kinds {sorted(unknown)}"
    assert kinds and nodes >= 3
    rng = random.Random(seed)
    at = first_at
    out: list[Fault] = []
    for _ in range(faults):
        kind = rng.choice(list(kinds))
        length = round(rng.uniform(*duration), 2)
        if kind == "bridge":
            a, b = rng.sample(range(nodes), 2)
            out.append(Fault(kind, a, round(at, 2), length, other=b))
        else:
            target = LEADER if rng.random() < leader_share else rng.randrange(nodes)
            out.append(Fault(kind, target, round(at, 2), length))
        at += length + rng.uniform(*gap)
    return out


def end_of(schedule: Sequence[Fault]) -> float:
    return max((f.at + f.duration for f in schedule), default=0.0)


class Nemesis:
    """Carries out a plan against a cluster; `spans` holds what happened, in node names."""

    def __init__(self, cluster: "ChaosCluster", schedule: Sequence[Fault], *, clock: Callable[[], float],
                 leader_queue: str, log: Callable[[str], None] = lambda _line: None) -> None:
        self.cluster = cluster
        self.schedule = list(schedule)
        self.clock = clock  # seconds since the run started
        self.leader_queue = leader_queue
        self.spans: list[FaultSpan] = []
        # Partitions the cluster never noticed (a cut that separated nothing proves nothing).
        self.unobserved: list[str] = []
        self.log = log

    def _target(self, fault: Fault) -> int:
        if fault.target != LEADER:
            return fault.target
        found = self.cluster.leader_of(self.leader_queue)
        return found if found is not None else 0

    def run(self, stop: Callable[[], bool]) -> None:
        """Every fault of the plan in order; returns early (healed) once `stop()` is true."""
        for fault in self.schedule:
            while self.clock() < fault.at:
                if stop():
                    return
                time.sleep(min(0.1, max(0.0, fault.at - self.clock())))
            target = self._target(fault)
            names = self._strike(fault, target)
            start = self.clock()
            self.log(f"{start:7.2f}s fault {fault.kind} on {', '.join(names)}")
            deadline = start + fault.duration
            observed = fault.kind not in PARTITIONS
            while self.clock() < deadline and not stop():
                if not observed:
                    observed = self.cluster.sees_partition(target)
                    if observed:
                        self.log(f"{self.clock():7.2f}s {names[0]} sees the partition")
                time.sleep(0.05)
            if not observed:
                self.unobserved.append(f"{fault.describe()}: {names[0]} never saw the partition")
            self._heal(fault, target)
            self.cluster.wait_whole(timeout=90)
            end = self.clock()
            self.log(f"{end:7.2f}s healed {fault.kind} on {', '.join(names)}")
            self.spans.append(FaultSpan(fault.kind, names, start, end))

    def _strike(self, fault: Fault, target: int) -> tuple[str, ...]:
        c = self.cluster
        name = c.node_names[target]
        if fault.kind == "kill":
            c.kill(target)
        elif fault.kind == "pause":
            c.pause(target)
        elif fault.kind == "restart":
            c.stop(target)
        elif fault.kind == "isolate":
            c.isolate(target)
        elif fault.kind == "bridge":
            other = fault.other if fault.other is not None else (target + 1) % len(c.node_names)
            c.bridge(target, other)
            return (name, c.node_names[other])
        else:
            raise AssertionError(fault.kind)
        return (name,)

    def _heal(self, fault: Fault, target: int) -> None:
        c = self.cluster
        if fault.kind in ("kill", "restart"):
            c.start(target)
        elif fault.kind == "pause":
            c.resume(target)
        else:
            c.heal()
