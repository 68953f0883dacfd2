"""Three-node clusters the nemesis can hurt: real `leveret-server` processes (and, through the
same interface, Debian's RabbitMQ, tests/chaos/rabbit.py), each on its own loopback address.

Node nI has the address 127.0.0.1I and the name `nI@127.0.0.1I`: a node's name says on which
host its peers look up its peer port, so every peer dial goes to the node's own address and a
firewall rule between two addresses (tests/chaos/firewall.py) separates those two nodes. The
cluster's port mapper is one of its own, listening on every address (as the production mapper
does), since nodes register with it on 127.0.0.1 and look each other up on 127.0.0.1I; it is
stopped by its pid when the cluster closes.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import Any, Final, Protocol

from tests.chaos.firewall import Firewall, bridge, isolate
from tests.support.node_process import REPO, NodeProcess, free_port, wait_for_port

ADDRESSES: Final = ("127.0.0.11", "127.0.0.12", "127.0.0.13")


class ChaosCluster(Protocol):
    kind: str
    node_names: list[str]
    endpoints: list[tuple[str, int]]  # AMQP (host, port) per node

    def kill(self, i: int) -> None: ...
    def stop(self, i: int) -> None: ...
    def start(self, i: int) -> None: ...
    def pause(self, i: int) -> None: ...
    def resume(self, i: int) -> None: ...
    def isolate(self, i: int) -> None: ...
    def bridge(self, i: int, j: int) -> None: ...
    def heal(self) -> None: ...
    def wait_whole(self, timeout: float) -> None: ...
    def leader_of(self, queue: str) -> int | None: ...
    def sees_partition(self, i: int) -> bool: ...
    def set_policy(self, name: str, pattern: str, definition: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


def _stop_by_pid(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class LeveretCluster:
    """Three joined `leveret-server` processes on 127.0.0.11-13."""

    kind = "leveret"

    def __init__(self, addresses: tuple[str, ...] = ADDRESSES, config: dict[str, Any] | None = None,
                 firewall: Firewall | None = None) -> None:
        self.addresses = addresses
        self.firewall = firewall
        self.mapper_port = free_port()
        self.mapper = subprocess.Popen([sys.executable, "-m", "cluster.portmapper", "--port", str(self.mapper_port)],
                                       cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
        self.nodes = [
            NodeProcess(name=f"n{i + 1}@{a}", host=a, port=free_port(a), dist_port=free_port(a),
                        port_mapper=self.mapper_port, config=dict(config or {}))
            for i, a in enumerate(addresses)
        ]
        self.node_names = [n.name for n in self.nodes]
        self.endpoints = [(n.host, n.port) for n in self.nodes]

    def form(self) -> "LeveretCluster":
        from tests.support.cluster import join

        try:
            wait_for_port("127.0.0.1", self.mapper_port, 15, self.mapper)
            for n in self.nodes:
                n.launch()
            for n in self.nodes:
                n.wait_ready(60)
            for n in self.nodes[1:]:
                join(n, self.nodes[0].name)
            self.wait_whole(60)
        except BaseException:
            self.close()
            raise
        return self

    # ------------------------------------------------------------------ faults

    def kill(self, i: int) -> None:
        self.nodes[i].kill()

    def stop(self, i: int) -> None:
        self.nodes[i].stop(signal.SIGTERM, timeout=30)

    def start(self, i: int) -> None:
        self.nodes[i].start(timeout=90)

    def pause(self, i: int) -> None:
        self.nodes[i].pause()

    def resume(self, i: int) -> None:
        self.nodes[i].resume()

    def isolate(self, i: int) -> None:
        assert self.firewall is not None, "partitions need a Firewall"
        self.firewall.cut(isolate(self.addresses[i], self.addresses))

    def bridge(self, i: int, j: int) -> None:
        assert self.firewall is not None, "partitions need a Firewall"
        self.firewall.cut(bridge(self.addresses[i], self.addresses[j]))

    def heal(self) -> None:
        if self.firewall is not None:
            self.firewall.heal()

    # ------------------------------------------------------------------ looking

    def ctl(self, i: int, *args: str) -> tuple[int, str, str]:
        from tests.ctl.support import ctl

        r = ctl(self.nodes[i], *args)
        return r.code, r.out, r.err

    def running_nodes(self, i: int) -> list[str] | None:
        code, out, _err = self.ctl(i, "cluster_status", "--formatter", "json")
        if code != 0:
            return None
        status = json.loads(out)
        return sorted(status.get("running_nodes", [])) if not status.get("partitions") else None

    def wait_whole(self, timeout: float) -> None:
        """Until every node accepts AMQP and sees all three running with no partition."""
        deadline = time.monotonic() + timeout
        for i, n in enumerate(self.nodes):
            wait_for_port(n.host, n.port, max(1.0, deadline - time.monotonic()), n.proc)
        for i in range(len(self.nodes)):
            while self.running_nodes(i) != sorted(self.node_names):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.node_names[i]} does not see the whole cluster after {timeout}s")
                time.sleep(0.5)

    def sees_partition(self, i: int) -> bool:
        """Whether node i reports a peer down or a partition (what a cut should make it say)."""
        return self.running_nodes(i) != sorted(self.node_names)

    def leader_of(self, queue: str) -> int | None:
        """The node that lists `queue` among its local ones (`list_queues --local`: the home
        node, master or quorum leader), asked node by node."""
        for i in range(len(self.node_names)):
            code, out, _ = self.ctl(i, "list_queues", "--local", "name", "--formatter", "json")
            if code == 0 and any(row.get("name") == queue for row in json.loads(out or "[]")):
                return i
        return None

    def set_policy(self, name: str, pattern: str, definition: dict[str, Any]) -> None:
        code, out, err = self.ctl(0, "set_policy", name, pattern, json.dumps(definition))
        assert code == 0, (out, err)

    def logs(self) -> dict[str, str]:
        return {n.name: n.log_text() for n in self.nodes}

    def close(self) -> None:
        for n in self.nodes:
            n.resume()
        for n in self.nodes:
            n.stop()
        _stop_by_pid(self.mapper)
