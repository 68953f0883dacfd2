"""`leveret-perf cluster-compare`: the cross-node scenarios on a Leveret and a RabbitMQ 3-node cluster.

Only one cluster runs at a time, so the alternation is by round: round i starts a
fresh Leveret cluster, runs every scenario on it, stops it, then does the same
with a fresh RabbitMQ cluster. Machine drift falls on both alike, and run i of A
is paired with run i of B for the ratio, as in `compare`.
"""

from __future__ import annotations

from typing import Callable

import trio

from .cluster import LeveretCluster, RabbitCluster, RunningCluster
from .cluster_scenarios import DESTRUCTIVE, ClusterOptions, run_cluster_scenario
from .report import Broker, Progress, Run
from .scenarios import Measurement

__all__ = ["CLUSTERS", "cluster_brokers", "run_cluster_rounds"]

# Broker key → (label, how to start its cluster). A is Leveret, B is RabbitMQ.
CLUSTERS: dict[str, tuple[str, Callable[[], LeveretCluster | RabbitCluster]]] = {
    "a": ("leveret", LeveretCluster),
    "b": ("rabbitmq", RabbitCluster),
}


def _failure(exc: BaseException) -> Measurement:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return Measurement(problems=[f"run failed: {type(exc).__name__}: {exc}"])


async def _on_cluster(run: Run, key: str, cluster: RunningCluster, options: ClusterOptions, rep: int,
                      progress: Progress, scenarios: list[str]) -> None:  # fmt: skip
    for scenario in scenarios:
        progress.step(f"{scenario} · {cluster.label} · run {rep}/{run.repeat}")
        try:
            measurement = await run_cluster_scenario(scenario, cluster, options)
        except Exception as exc:  # one failed run is a result, not the end of the benchmark
            measurement = _failure(exc)
        run.add(scenario, key, measurement)


def run_cluster_rounds(run: Run, options: ClusterOptions, progress: Progress,
                       clusters: dict[str, tuple[str, Callable[[], LeveretCluster | RabbitCluster]]] = CLUSTERS,
                       ) -> None:  # fmt: skip
    """`run.repeat` rounds; in each, every broker's cluster is started, measured and stopped.
    A scenario that kills a node (`DESTRUCTIVE`) gets a fresh cluster of its own."""
    kept = [s for s in run.scenarios if s not in DESTRUCTIVE]
    groups = ([kept] if kept else []) + [[s] for s in run.scenarios if s in DESTRUCTIVE]
    for rep in range(1, run.repeat + 1):
        for broker in run.brokers:
            for group in groups:
                _round(run, broker.key, clusters, options, rep, progress, group)


def _round(run: Run, key: str, clusters: dict[str, tuple[str, Callable[[], LeveretCluster | RabbitCluster]]],
           options: ClusterOptions, rep: int, progress: Progress, scenarios: list[str]) -> None:  # fmt: skip
    label, make = clusters[key]
    try:
        with make() as cluster:
            trio.run(_on_cluster, run, key, cluster, options, rep, progress, scenarios)
    except Exception as exc:  # a cluster that would not start (or stop) fails this round's runs
        for scenario in scenarios:
            if len(run.results.get((scenario, key), [])) < rep:
                run.add(scenario, key, _failure(exc))
                progress.step(f"{scenario} · {label} · run {rep}/{run.repeat}: cluster failed")


def cluster_brokers(clusters: dict[str, tuple[str, Callable[[], LeveretCluster | RabbitCluster]]] = CLUSTERS,
                    ) -> list[Broker]:  # fmt: skip
    # A fresh cluster per round has fresh ports and pids: the table names the launcher instead.
    where = {"a": "3 nodes on loopback (cli/perf/cluster.py)", "b": "ref1..ref3@localhost (scripts/rabbitmq-ref)"}
    return [Broker(key, label, where.get(key, ""), None) for key, (label, _) in clusters.items()]
