"""Three fresh nodes started together with the same `cluster_nodes` form one cluster by
themselves, deterministically: the lowest-named seed bootstraps, the others join it."""

from __future__ import annotations

import json

from tests.ctl.support import ok, wait_until
from tests.support.node_process import NodeProcess

NAMES = ("f1@localhost", "f2@localhost", "f3@localhost")


def test_nodes_started_together_form_one_cluster() -> None:
    seeds = ",".join(NAMES)
    # Started in reverse: the ones that must wait for f1 are up first.
    nodes = [NodeProcess(name=n, extra_env={"LEVERET_CLUSTER_NODES": seeds}) for n in reversed(NAMES)]
    try:
        for n in nodes:
            n.launch()
        for n in nodes:
            n.wait_ready(90)
        for n in nodes:
            wait_until(lambda n=n: json.loads(ok(n, "cluster_status", "--formatter", "json").out)["disk_nodes"]
                       == list(NAMES), 60)
        ok(nodes[0], "add_user", "everywhere", "pw")
        for n in nodes:
            wait_until(lambda n=n: "everywhere" in ok(n, "list_users").out, 20)
        # Defaults were made once, by the cluster.
        assert sum(n.log_text().count("creating user") for n in nodes) == 1
        assert "forming a new cluster" in nodes[2].log_text()  # f1
    finally:
        for n in nodes:
            n.stop()
