"""Debian's RabbitMQ 3.10 as a `ChaosCluster`, so the same runs give side-by-side figures.

`scripts/rabbitmq-ref chaos-start HANDLING` forms three nodes refN@127.0.0.1N whose Erlang
distribution listens on and connects from each node's own address (so the same firewall
rules cut the same pairs) with `cluster_partition_handling` HANDLING. Faults act on each
node's Erlang VM by the pid its pid file holds (SIGKILL, SIGSTOP/SIGCONT, SIGTERM, which the
VM takes as a graceful `init:stop`); a killed or stopped node is started again by the script.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Final

from tests.chaos.cluster import ADDRESSES
from tests.chaos.firewall import Firewall, bridge, isolate
from tests.support.node_process import REPO, wait_for_port

SCRIPT: Final = str(REPO / "scripts" / "rabbitmq-ref")
HANDLINGS: Final = ("pause_minority", "ignore", "autoheal")


def _env() -> dict[str, str]:
    return {**os.environ, "RABBITMQ_USE_LONGNAME": "true"}


class RabbitCluster:
    def __init__(self, handling: str = "pause_minority", firewall: Firewall | None = None) -> None:
        assert handling in HANDLINGS, handling
        self.handling = handling
        self.kind = f"rabbitmq({handling})"
        self.firewall = firewall
        self.addresses = ADDRESSES
        self.node_names = [f"ref{i + 1}@{a}" for i, a in enumerate(ADDRESSES)]
        self.endpoints = [(a, 5701 + i) for i, a in enumerate(ADDRESSES)]
        self.base = Path(os.environ.get("RMQ_REF_CHAOS_BASE", "/tmp/leveret-rabbitmq-ref-chaos"))

    def _script(self, *args: str, timeout: float = 300) -> str:
        done = subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=timeout, env=_env())
        assert done.returncode == 0, f"rabbitmq-ref {' '.join(args)} failed: {done.stderr[-2000:]}"
        return done.stdout

    def form(self) -> "RabbitCluster":
        self._script("chaos-stop")  # a fresh cluster: no queue or policy of an earlier run
        self._script("chaos-start", self.handling)
        self.wait_whole(120)
        return self

    def ctl(self, i: int, *args: str, timeout: float = 30) -> tuple[int, str, str]:
        try:
            done = subprocess.run(["rabbitmqctl", "-n", self.node_names[i], "-q", *args], capture_output=True,
                                  text=True, timeout=timeout, env=_env())
        except subprocess.TimeoutExpired:
            return 124, "", "timed out"
        return done.returncode, done.stdout, done.stderr

    def pid(self, i: int) -> int | None:
        path = self.base / f"ref{i + 1}" / "ref.pid"
        try:
            pid = int(path.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if Path(f"/proc/{pid}").exists() else None

    def _signal(self, i: int, sig: int) -> None:
        pid = self.pid(i)
        if pid is not None:
            os.kill(pid, sig)

    def _wait_gone(self, i: int, timeout: float) -> None:
        pid = self.pid(i)
        deadline = time.monotonic() + timeout
        while pid is not None and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)

    # ------------------------------------------------------------------ faults

    def kill(self, i: int) -> None:
        self._signal(i, signal.SIGKILL)
        self._wait_gone(i, 15)

    def stop(self, i: int) -> None:
        self._signal(i, signal.SIGCONT)
        self._signal(i, signal.SIGTERM)
        self._wait_gone(i, 60)

    def start(self, i: int) -> None:
        (self.base / f"ref{i + 1}" / "ref.pid").unlink(missing_ok=True)
        self._script("chaos-node-start", str(i + 1))

    def pause(self, i: int) -> None:
        self._signal(i, signal.SIGSTOP)

    def resume(self, i: int) -> None:
        self._signal(i, signal.SIGCONT)

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

    def _status(self, i: int) -> dict[str, Any] | None:
        code, out, _ = self.ctl(i, "cluster_status", "--formatter", "json")
        if code != 0:
            return None
        try:
            return json.loads(out)
        except ValueError:
            return None

    def wait_whole(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for i, (host, port) in enumerate(self.endpoints):
            while True:
                status = self._status(i)
                whole = status is not None and sorted(status.get("running_nodes", [])) == sorted(self.node_names) \
                    and not status.get("partitions")
                if whole:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.node_names[i]} does not see the whole cluster after {timeout}s")
                if status is not None and status.get("partitions") and self.handling == "ignore":
                    # `ignore` never heals by itself: restart the minority's nodes, as an operator must.
                    self.ctl(i, "stop_app", timeout=60)
                    self.ctl(i, "start_app", timeout=120)
                time.sleep(1.0)
            wait_for_port(host, port, max(1.0, deadline - time.monotonic()))

    def sees_partition(self, i: int) -> bool:
        status = self._status(i)
        if status is None:
            return True  # under pause_minority the minority stops its own app
        return bool(status.get("partitions")) or \
            sorted(status.get("running_nodes", [])) != sorted(self.node_names)

    def leader_of(self, queue: str) -> int | None:
        """The node that lists `queue` among its local ones (`list_queues --local`: the home
        node, master or quorum leader), asked node by node."""
        for i in range(len(self.node_names)):
            code, out, _ = self.ctl(i, "list_queues", "--local", "name", "--formatter", "json", "-t", "10")
            if code == 0 and any(row.get("name") == queue for row in json.loads(out or "[]")):
                return i
        return None

    def set_policy(self, name: str, pattern: str, definition: dict[str, Any]) -> None:
        code, out, err = self.ctl(0, "set_policy", name, pattern, json.dumps(definition), "--apply-to", "queues")
        assert code == 0, (out, err)

    def close(self) -> None:
        for i in range(len(self.node_names)):
            self._signal(i, signal.SIGCONT)
        self._script("chaos-stop")
