"""No confirmed message is lost: three real nodes, pika clients with multi-host lists, and a
seeded nemesis. The default run is short (kill -9 of the first queue's leader, a pause);
`--slow` runs every fault kind under several seeds and every queue mode."""

from __future__ import annotations

import pytest

from tests.chaos.cluster import LeveretCluster
from tests.chaos.run import MODES, SCENARIOS, explain, run, run_with_timeout

RUN_TIMEOUT = 300.0


def _check(cluster: LeveretCluster, scenario: str, seed: int, mode: str) -> None:
    report = run_with_timeout(lambda: run(cluster, SCENARIOS[scenario], seed, mode), RUN_TIMEOUT)
    v = report.verdict
    assert report.faults, "the nemesis struck no fault"
    assert v.confirmed > 100, f"too little got through to prove anything\n{explain(report)}"
    assert report.ok, explain(report)
    # Publishers on the nodes the fault spared kept getting confirms.
    assert any(t is not None for t in v.failover), explain(report)


@pytest.mark.parametrize("scenario", ["kill-leader", "pause"])
def test_no_confirmed_message_is_lost(leveret_cluster: LeveretCluster, scenario: str) -> None:
    _check(leveret_cluster, scenario, 1, "quorum")


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", [11, 12, 13])
@pytest.mark.parametrize("scenario", ["kill", "pause", "restart"])
def test_matrix_without_partitions(leveret_cluster: LeveretCluster, scenario: str, seed: int, mode: str) -> None:
    _check(leveret_cluster, scenario, seed, mode)


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", [11, 12, 13])
@pytest.mark.parametrize("scenario", ["isolate", "bridge", "mixed"])
def test_matrix_with_partitions(partitionable_cluster: LeveretCluster, scenario: str, seed: int, mode: str) -> None:
    _check(partitionable_cluster, scenario, seed, mode)
