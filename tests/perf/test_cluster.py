"""The cluster launcher and the cross-node scenarios, briefly, against Leveret only.

A real 3-node cluster is started by `cli.perf.cluster.LeveretCluster` (joined with
leveretctl), a second-long cross-node run goes through it, and every process it
started must be gone afterwards. Nothing here is about speed: the assertions are
that the code path works and the accounting holds.
"""

from __future__ import annotations

from dataclasses import replace

import psutil
import trio

from cli.perf.cluster import LeveretCluster
from cli.perf.cluster_scenarios import ClusterOptions, parse_ss, run_cluster_scenario
from cli.perf.scenarios import Options

OPTIONS = ClusterOptions(Options(duration=1.0, procs=1, drain=10.0), clients_per_node=1, idle_settle=0.0,
                         idle_seconds=1.0)  # fmt: skip

SS_SAMPLE = """\
0      0      127.0.0.1:25691 127.0.0.1:40001
\t cubic wscale:7,7 rto:204 cwnd:10 bytes_sent:120 bytes_acked:100 bytes_received:50 segs_out:2
0      0      127.0.0.1:40001 127.0.0.1:25691
\t cubic wscale:7,7 rto:204 cwnd:10 bytes_sent:50 bytes_acked:50 bytes_received:100 segs_out:2
0      0      [::ffff:127.0.0.1]:25692 [::ffff:127.0.0.1]:40002
\t cubic wscale:7,7 rto:204 cwnd:10 segs_out:1
0      0      127.0.0.1:5691 127.0.0.1:40003
\t cubic wscale:7,7 rto:204 cwnd:10 bytes_acked:999 bytes_received:999
"""


def test_ss_counters_of_the_peer_ports_only_each_link_once() -> None:
    found = parse_ss(SS_SAMPLE, {25691, 25692})
    # The accepting end of each link, both directions; zero counters left out by ss read as 0;
    # the client end of the same link (local 40001) and the AMQP socket are not counted.
    assert found == {(25691, "127.0.0.1:40001"): 150, (25692, "[::ffff:127.0.0.1]:40002"): 0}


def test_launcher_cross_node_scenarios_and_every_process_stopped() -> None:
    cluster = LeveretCluster()
    with cluster:
        nodes = cluster.nodes
        assert len(nodes) == 3
        assert len({n.pid for n in nodes}) == 3 and len({n.url for n in nodes}) == 3
        assert cluster._mapper is not None
        pids = [n.pid for n in nodes] + [cluster._mapper.pid]
        root = cluster._root
        assert root is not None and root.exists()

        transient = trio.run(run_cluster_scenario, "cross-transient", cluster, OPTIONS)
        assert transient.problems == []
        assert transient.totals["delivered"] == transient.totals["sent"] > 0

        confirmed = trio.run(run_cluster_scenario, "cross-confirmed", cluster, OPTIONS)
        assert confirmed.problems == []
        assert confirmed.totals["delivered"] == confirmed.totals["sent"] == confirmed.totals["acked"] > 0

        metadata = trio.run(run_cluster_scenario, "metadata-ops", cluster, OPTIONS)
        assert metadata.problems == []
        assert metadata.totals["clients"] == 3
        # Every node's client got answers (the rate is not judged).
        assert all(metadata.totals[f"ops_node{n}_client1"] > 0 for n in (1, 2, 3))

        idle = trio.run(run_cluster_scenario, "idle", cluster, OPTIONS)
        assert idle.problems == []
        assert idle.totals["peer_links"] >= 3  # one or more between each pair of nodes
        assert set(idle.metrics) >= {"idle_cpu_pct_node1", "idle_cpu_pct_total", "idle_peer_bytes_per_s"}

        mirrored = trio.run(run_cluster_scenario, "mirrored", cluster, OPTIONS)
        assert mirrored.problems == []
        for kind in ("ha", "quorum"):
            assert mirrored.totals[f"{kind}_delivered"] == mirrored.totals[f"{kind}_sent"] == \
                mirrored.totals[f"{kind}_acked"] > 0
            assert 0 < mirrored.metrics[f"{kind}_confirm_p50_ms"] <= mirrored.metrics[f"{kind}_confirm_p99_ms"]
    assert not any(psutil.pid_exists(pid) for pid in pids)
    assert not root.exists()


def test_failover_kills_the_leaders_node_and_accounts_for_every_message() -> None:
    options = replace(OPTIONS, failover_rate=200.0, failover_kill_after=2.0)
    with LeveretCluster() as cluster:
        pids = [n.pid for n in cluster.nodes]
        m = trio.run(run_cluster_scenario, "failover", cluster, options)
        killed = m.totals["killed_node"]
        assert m.totals["leader_listed"] == 1
        assert not psutil.pid_exists(pids[killed - 1])
        # Publishing and consuming went on through the surviving nodes after the kill.
        assert m.metrics["failover_first_new_confirm_ms"] < 10_000 and m.metrics["failover_first_delivery_ms"] < 10_000
        assert m.metrics["failover_first_confirm_ms"] <= m.metrics["failover_first_new_confirm_ms"]
        assert m.metrics["failover_first_delivery_ms"] <= m.metrics["failover_first_new_delivery_ms"] < 10_000
        assert m.metrics["failover_lost"] == 0
        assert m.totals["delivered"] + m.totals["missing"] == m.totals["sent"] > 0
