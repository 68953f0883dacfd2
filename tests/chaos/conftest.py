"""Fixtures of the chaos suite: the LEVERET-CHAOS firewall chain (removed after every test,
and at exit) and a fresh three-node Leveret cluster per run (stopped by pid)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.chaos.cluster import LeveretCluster
from tests.chaos.firewall import Firewall
from tests.support.node_process import REPO


def _ensure_iptables() -> None:
    if shutil.which("iptables") or os.path.exists("/usr/sbin/iptables"):
        return
    # The project installs what its tests need (Debian's iptables); it needs root, as the rules do.
    done = subprocess.run([str(REPO / "scripts" / "install-chaos-tools")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"scripts/install-chaos-tools failed: {done.stderr.strip()}"


@pytest.fixture
def firewall() -> Iterator[Firewall]:
    assert os.geteuid() == 0, "partitions need root (iptables)"
    _ensure_iptables()
    fw = Firewall().install()
    try:
        yield fw
    finally:
        fw.remove()


@pytest.fixture
def leveret_cluster() -> Iterator[LeveretCluster]:
    cluster = LeveretCluster().form()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def partitionable_cluster(firewall: Firewall) -> Iterator[LeveretCluster]:
    cluster = LeveretCluster(firewall=firewall).form()
    try:
        yield cluster
    finally:
        cluster.heal()
        cluster.close()
