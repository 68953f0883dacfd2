"""Three-node clusters on this machine, for the cross-node benchmarks: Leveret's and RabbitMQ's.

`LeveretCluster` starts three `leveret-server` processes on loopback, each on free
AMQP and peer ports with its own data directory under one temporary directory,
and a port mapper of their own (so they neither use nor spawn the host's on
4370), then joins nodes 2 and 3 to node 1 with `leveretctl` as an operator would
(stop_app, join_cluster, start_app) and waits until every node lists all three as
running. `RabbitCluster` drives `scripts/rabbitmq-ref cluster-start` / `cluster-stop`
(ref1..ref3@localhost) and reads the Erlang VMs' pids from the pid files the script
has each node write.

Both are context managers: leaving the block (normally, on an error or on
KeyboardInterrupt) stops every process they started, by pid, and removes their
state. Only one cluster should run at a time: they compete for the same cores.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

import psutil

__all__ = ["ClusterNode", "LeveretCluster", "RabbitCluster", "RunningCluster", "free_port", "listening",
           "queue_leader", "queue_mirrors", "set_policy"]

REPO = Path(__file__).resolve().parents[2]
REFERENCE_SCRIPT = REPO / "scripts" / "rabbitmq-ref"
RABBIT_CLUSTER_BASE = Path(os.environ.get("RMQ_REF_CLUSTER_BASE", "/tmp/leveret-rabbitmq-ref-cluster"))

# Node names of the benchmark's Leveret cluster (bare names, as the port mapper resolves them).
LEVERET_NAMES = ("perf1@localhost", "perf2@localhost", "perf3@localhost")
COOKIE = "LEVERETPERFCLUSTERCOOKIE"


@dataclass(frozen=True, slots=True)
class ClusterNode:
    name: str
    url: str  # AMQP
    pid: int  # the broker process (for RabbitMQ the Erlang VM, beam.smp)
    peer_port: int  # the port other nodes connect to (Leveret's peer port, Erlang's distribution port)


class RunningCluster(Protocol):
    label: str
    nodes: list[ClusterNode]

    def ctl(self, node: int, *args: str) -> str:
        """The operator CLI (leveretctl / rabbitmqctl) against node `node` (0-based); its stdout."""
        ...

    def kill(self, node: int) -> None:
        """kill -9 node `node`'s broker process (0-based)."""
        ...


def set_policy(cluster: RunningCluster, name: str, pattern: str, definition: dict) -> None:
    """A policy on the default vhost, through node 1 (both CLIs take the same arguments)."""
    cluster.ctl(0, "set_policy", name, pattern, json.dumps(definition))


def queue_leader(cluster: RunningCluster, queue: str) -> int | None:
    """The index of `queue`'s leader (or master) node, if list_queues names it: its `leader`
    (a quorum queue's on RabbitMQ, every replicated queue's on Leveret) or the node in its
    `pid` (Leveret; RabbitMQ prints a classic queue's pid as `#PID<...>`, with no node)."""
    rows = json.loads(cluster.ctl(0, "-q", "list_queues", "name", "pid", "leader", "--formatter", "json") or "[]")
    for row in rows:
        if row.get("name") == queue:
            for i, node in enumerate(cluster.nodes):
                if row.get("leader") == node.name or f"<{node.name}." in str(row.get("pid", "")):
                    return i
    return None


def queue_mirrors(cluster: RunningCluster, queue: str) -> int:
    """How many synchronised mirrors (followers) `queue` has, as list_queues says."""
    rows = json.loads(cluster.ctl(0, "-q", "list_queues", "name", "synchronised_slave_pids", "--formatter", "json")
                      or "[]")  # fmt: skip
    for row in rows:
        if row.get("name") == queue:
            pids = row.get("synchronised_slave_pids")
            return len(pids) if isinstance(pids, list) else 0
    return 0


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _stop_process(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time; always reaped."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class _StartedStopped:
    """`with cluster:` starts it, and stops whatever was started when the block is left, also
    when starting failed halfway or was interrupted."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


@dataclass
class _LeveretProcess:
    name: str
    port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen | None = None


@dataclass
class LeveretCluster(_StartedStopped):
    """Three joined `leveret-server` processes on loopback. Use as `with LeveretCluster() as c:`."""

    label: str = "leveret"
    start_timeout: float = 60.0
    nodes: list[ClusterNode] = field(default_factory=list)
    _root: Path | None = None
    _mapper: subprocess.Popen | None = None
    _mapper_port: int = 0
    _processes: list[_LeveretProcess] = field(default_factory=list)

    def _env(self, p: _LeveretProcess) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "LEVERET_NODENAME": p.name,
            "LEVERET_NODE_IP_ADDRESS": "127.0.0.1",
            "LEVERET_NODE_PORT": str(p.port),
            "LEVERET_DIST_PORT": str(p.peer_port),
            "LEVERET_DATA_DIR": str(p.data_dir),
            "LEVERET_COOKIE": COOKIE,
            "LEVERET_PORT_MAPPER_PORT": str(self._mapper_port),
            "LEVERET_MANAGEMENT_PORT": "0",
            "LEVERET_PROMETHEUS_PORT": "0",
            "LEVERET_LOG_LEVEL": "info",
        })  # fmt: skip
        return env

    def start(self) -> None:
        self._root = Path(tempfile.mkdtemp(prefix="leveret-perf-cluster-"))
        self._mapper_port = free_port()
        # This interpreter and this checkout's code (cwd first on sys.path), as the tests start nodes.
        self._mapper = subprocess.Popen(
            [sys.executable, "-m", "cluster.portmapper", "--port", str(self._mapper_port), "--host", "127.0.0.1"],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self._wait_listening(self._mapper_port, self._mapper, "the port mapper", 15.0)
        for name in LEVERET_NAMES:
            short = name.split("@", 1)[0]
            data_dir = self._root / short
            data_dir.mkdir()
            self._processes.append(
                _LeveretProcess(name, free_port(), free_port(), data_dir, self._root / f"{short}.log")
            )
        for p in self._processes:
            with open(p.log_path, "ab") as log:
                p.proc = subprocess.Popen(
                    [sys.executable, "-c", "from cli.server import main; main()"],
                    cwd=REPO, env=self._env(p), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
        for p in self._processes:
            assert p.proc is not None
            self._wait_listening(p.port, p.proc, p.name, self.start_timeout)
        first = self._processes[0]
        for p in self._processes[1:]:
            self.ctl(p, "stop_app")
            self.ctl(p, "join_cluster", first.name)
            self.ctl(p, "start_app")
        self._wait_all_running()
        self.nodes = [
            ClusterNode(p.name, f"amqp://guest:guest@127.0.0.1:{p.port}/", p.proc.pid, p.peer_port)
            for p in self._processes
            if p.proc is not None
        ]

    def _wait_listening(self, port: int, proc: subprocess.Popen, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not listening(port):
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {port}{self._log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not listen on {port} within {timeout:.0f}s{self._log_tail()}")
            time.sleep(0.1)

    def _log_tail(self) -> str:
        tails = []
        for p in self._processes:
            if p.log_path.exists():
                lines = p.log_path.read_text(errors="replace").strip().splitlines()[-3:]
                if lines:
                    tails.append(f"{p.name}: " + " | ".join(lines))
        return ("; logs: " + "; ".join(tails)) if tails else ""

    def ctl(self, node: "_LeveretProcess | int", *args: str) -> str:
        """Run `leveretctl -n NAME --port PEER_PORT ARGS...` against node `node` (a process, or
        its 0-based index); its stdout."""
        p = self._processes[node] if isinstance(node, int) else node
        command = [sys.executable, "-c", "from cli.ctl import main; main()", "-n", p.name, "--port", str(p.peer_port),
                   *args]  # fmt: skip
        env = dict(os.environ, LEVERET_COOKIE=COOKIE, LEVERET_PORT_MAPPER_PORT=str(self._mapper_port))
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=90)
        if done.returncode != 0:
            raise RuntimeError(f"leveretctl -n {p.name} {' '.join(args)} failed ({done.returncode}): "
                               f"{done.stderr.strip() or done.stdout.strip()}")  # fmt: skip
        return done.stdout

    def _wait_all_running(self, timeout: float = 60.0) -> None:
        """Until every node's cluster_status lists all three nodes as running."""
        wanted = sorted(LEVERET_NAMES)
        deadline = time.monotonic() + timeout
        pending = list(self._processes)
        while pending:
            p = pending[0]
            status = json.loads(self.ctl(p, "cluster_status", "--formatter", "json"))
            if sorted(status.get("running_nodes", [])) == wanted:
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise TimeoutError(f"{p.name} lists {status.get('running_nodes')} as running after {timeout:.0f}s")
            time.sleep(0.2)

    def kill(self, node: int) -> None:
        proc = self._processes[node].proc
        if proc is not None:
            _kill(proc.pid)
            proc.wait(10)

    def stop(self) -> None:
        """Stop every node and the port mapper, by pid, and remove the data directories."""
        for p in reversed(self._processes):
            if p.proc is not None:
                _stop_process(p.proc)
        self._processes.clear()
        self.nodes = []
        if self._mapper is not None:
            _stop_process(self._mapper, 5.0)
            self._mapper = None
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None


@dataclass
class RabbitCluster(_StartedStopped):
    """ref1..ref3@localhost of `scripts/rabbitmq-ref`. Use as `with RabbitCluster() as c:`."""

    label: str = "rabbitmq"
    nodes: list[ClusterNode] = field(default_factory=list)
    _started: bool = False

    def _script(self, action: str) -> str:
        if not REFERENCE_SCRIPT.exists():
            raise RuntimeError(f"{REFERENCE_SCRIPT} not found: the RabbitMQ cluster runs from a source checkout")
        done = subprocess.run([str(REFERENCE_SCRIPT), action], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"scripts/rabbitmq-ref {action} failed: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def start(self) -> None:
        self._started = True
        urls = [line for line in self._script("cluster-start").splitlines() if line.startswith("amqp://")]
        if len(urls) != 3:
            raise RuntimeError(f"scripts/rabbitmq-ref cluster-start printed {len(urls)} URLs, not 3")
        dist_base = int(os.environ.get("RMQ_REF_CLUSTER_DIST_PORT", "25691"))
        for i, url in enumerate(urls, 1):
            pid_file = RABBIT_CLUSTER_BASE / f"ref{i}" / "ref.pid"
            try:
                pid = int(pid_file.read_text().strip())
            except (OSError, ValueError) as exc:
                raise RuntimeError(f"no pid in {pid_file}: {exc}") from None
            if not psutil.pid_exists(pid):
                raise RuntimeError(f"{pid_file} names pid {pid}, which is not running")
            self.nodes.append(ClusterNode(f"ref{i}@localhost", url, pid, dist_base + i - 1))

    def ctl(self, node: int, *args: str) -> str:
        command = ["rabbitmqctl", "-n", self.nodes[node].name, *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=90)
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl -n {self.nodes[node].name} {' '.join(args)} failed "
                               f"({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")  # fmt: skip
        return done.stdout

    def kill(self, node: int) -> None:
        _kill(self.nodes[node].pid)

    def stop(self) -> None:
        """`cluster-stop` stops each node through rabbitmqctl (by its pid file), else kills that pid."""
        if self._started:
            self._started = False
            self.nodes = []
            self._script("cluster-stop")
