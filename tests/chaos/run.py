"""One chaos run, start to verdict, and the figures table.

A run: declare the workload's queues (one through each node, so each node leads one), start
publishers and consumers, let the seeded nemesis strike its faults one at a time, stop the
clients, heal, wait until the cluster is whole, drain every queue through every node, and
check the history (tests/chaos/checker.py). The same run drives a Leveret cluster or a
RabbitMQ one: both are a `ChaosCluster`.

Queue modes: `quorum` declares `x-queue-type: quorum`; `ha-all` and `ha-exactly` declare
classic durable queues under a policy (`ha-mode: all`, or `exactly` with 2 replicas, and
`ha-sync-mode: automatic`). Until Leveret replicates queues, all three are single-replica
queues there: a fault of a queue's node costs availability, never a confirmed message.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

import pika

from tests.chaos.checker import Confirm, FaultSpan, Verdict, check, failover_times, recovery_times, summarise
from tests.chaos.cluster import ChaosCluster
from tests.chaos.nemesis import Fault, Nemesis, end_of, plan
from tests.chaos.workload import History, Workload, drain, parameters

MODES: Final = ("quorum", "ha-all", "ha-exactly")
POLICIES: Final[dict[str, dict[str, Any]]] = {
    "ha-all": {"ha-mode": "all", "ha-sync-mode": "automatic"},
    "ha-exactly": {"ha-mode": "exactly", "ha-params": 2, "ha-sync-mode": "automatic"},
}


@dataclass(frozen=True)
class Scenario:
    name: str
    kinds: tuple[str, ...]
    faults: int = 2
    duration: tuple[float, float] = (3.0, 6.0)
    gap: tuple[float, float] = (4.0, 7.0)
    leader_share: float = 0.5
    first_at: float = 4.0
    tail: float = 6.0  # load after the last fault ends (recovery is measured within it)

    def plan(self, seed: int) -> list[Fault]:
        return plan(seed, self.kinds, faults=self.faults, duration=self.duration, gap=self.gap,
                    leader_share=self.leader_share, first_at=self.first_at)


# The default run's scenarios are short; `--slow` runs every kind under several seeds.
SCENARIOS: Final = {
    "kill-leader": Scenario("kill-leader", ("kill",), faults=1, leader_share=1.0, duration=(3.0, 4.0)),
    "pause": Scenario("pause", ("pause",), faults=1, duration=(4.0, 5.0)),
    "kill": Scenario("kill", ("kill",)),
    "restart": Scenario("restart", ("restart",)),
    "isolate": Scenario("isolate", ("isolate",), duration=(6.0, 9.0)),
    "bridge": Scenario("bridge", ("bridge",), duration=(6.0, 9.0)),
    "mixed": Scenario("mixed", ("kill", "pause", "isolate", "bridge", "restart"), faults=4),
}


@dataclass
class RunReport:
    target: str
    scenario: str
    mode: str
    seed: int
    verdict: Verdict
    faults: list[FaultSpan]
    problems: list[str]
    errors: list[str]
    seconds: float
    refused: dict[str, int] = field(default_factory=dict)
    confirms: list[Confirm] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return self.verdict.ok and not self.problems


def declare_queues(cluster: ChaosCluster, mode: str, names: Sequence[str]) -> None:
    if mode in POLICIES:
        cluster.set_policy("chaos-ha", r"^chaos\.", POLICIES[mode])
    for i, q in enumerate(names):
        host, port = cluster.endpoints[i % len(cluster.endpoints)]
        conn = pika.BlockingConnection(parameters([(host, port)], 0)[0])
        try:
            arguments = {"x-queue-type": "quorum"} if mode == "quorum" else {}
            conn.channel().queue_declare(q, durable=True, arguments=arguments)
        finally:
            conn.close()


def delete_queues(cluster: ChaosCluster, names: Sequence[str]) -> None:
    conn = pika.BlockingConnection(parameters(cluster.endpoints, 0))
    try:
        ch = conn.channel()
        for q in names:
            ch.queue_delete(q)
    finally:
        conn.close()


def run(cluster: ChaosCluster, scenario: Scenario, seed: int, mode: str = "quorum", *,
        rate: float = 60.0, log: Callable[[str], None] = print, delete_after: bool = False) -> RunReport:
    assert mode in MODES, mode
    tag = f"{scenario.name}.{mode}.{seed}.{int(time.time())}"
    queues = [f"chaos.{tag}.q{i + 1}" for i in range(len(cluster.endpoints))]
    declare_queues(cluster, mode, queues)
    schedule = scenario.plan(seed)
    log(f"[{cluster.kind} {scenario.name} {mode} seed={seed}] " + "; ".join(f.describe() for f in schedule))
    started = time.monotonic()
    clock = lambda: time.monotonic() - started  # noqa: E731
    history = History(clock=clock)
    workload = Workload(cluster.endpoints, cluster.node_names, queues, history, tag, rate=rate)
    # The clients run until the nemesis is done and `tail` seconds more; the hard deadline only
    # bounds a run whose faults overran their plan (slow restarts, slow leader look-ups).
    hard_deadline = started + end_of(schedule) + scenario.tail + 180
    workload.start(hard_deadline)
    nemesis = Nemesis(cluster, schedule, clock=clock, leader_queue=queues[0], log=log)
    problems: list[str] = []
    try:
        nemesis.run(stop=lambda: time.monotonic() > hard_deadline)
        tail_end = min(time.monotonic() + scenario.tail, hard_deadline)
        while time.monotonic() < tail_end:
            time.sleep(0.1)
    finally:
        stuck = workload.finish(timeout=60)
        problems += [f"client {name} did not stop" for name in stuck]
        cluster.heal()
    problems += nemesis.unobserved
    cluster.wait_whole(timeout=120)
    problems += drain(cluster.endpoints, cluster.node_names, queues, history,
                      limit=2 * len(history.published) + 1000, timeout=180)
    confirmed = [c.id for c in history.confirms]
    verdict = replace(check(history.published, confirmed, [d[0] for d in history.deliveries]),
                      failover=failover_times(nemesis.spans, history.confirms),
                      recovery=recovery_times(nemesis.spans, history.confirms))
    refused: dict[str, int] = {}
    for why in history.refused.values():
        refused[why] = refused.get(why, 0) + 1
    if delete_after:
        delete_queues(cluster, queues)
    report = RunReport(cluster.kind, scenario.name, mode, seed, verdict, nemesis.spans, problems,
                       list(history.errors), clock(), refused, list(history.confirms))
    log(format_table([report]))
    return report


COLUMNS: Final = ("target", "scenario", "mode", "seed", "published", "confirmed", "lost", "unexpected",
                  "duplicated", "failover s (median/max)", "recovery s (median/max)", "faults", "verdict")


def row(r: RunReport) -> list[str]:
    v = r.verdict
    faults = ", ".join(f"{s.kind} {'/'.join(n.split('@')[0] for n in s.nodes)}" for s in r.faults)
    return [r.target, r.scenario, r.mode, str(r.seed), str(v.published), str(v.confirmed), str(len(v.lost)),
            str(len(v.unexpected)), str(v.duplicated), summarise(v.failover), summarise(v.recovery), faults or "-",
            "ok" if r.ok else "FAIL"]


def format_table(reports: Sequence[RunReport]) -> str:
    rows = [list(COLUMNS)] + [row(r) for r in reports]
    widths = [max(len(r[c]) for r in rows) for c in range(len(COLUMNS))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def explain(report: RunReport) -> str:
    """What to read when a run fails: the ids, the problems, the clients' errors."""
    v = report.verdict
    parts = [f"lost ({len(v.lost)}): {list(v.lost[:20])}", f"unexpected ({len(v.unexpected)}): {list(v.unexpected[:20])}"]
    lost = set(v.lost[:20])
    parts += [f"lost {c.id}: confirmed at {c.at:.2f}s to publisher {c.publisher} on {c.node} for {c.queue}"
              for c in report.confirms if c.id in lost]
    parts += [f"fault {s.kind} on {', '.join(s.nodes)} from {s.start:.2f}s to {s.end:.2f}s" for s in report.faults]
    parts += [f"problem: {p}" for p in report.problems]
    parts += [f"refused: {report.refused}"]
    parts += [f"client error: {e}" for e in report.errors[:30]]
    return "\n".join(parts)


def run_with_timeout(fn: Callable[[], RunReport], timeout: float) -> RunReport:
    """`fn()` in a thread of its own, failing (not hanging) when it overruns."""
    result: list[RunReport] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            failure.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if failure:
        raise failure[0]
    if not result:
        raise TimeoutError(f"chaos run did not finish in {timeout}s")
    return result[0]
