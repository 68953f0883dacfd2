"""Real `leveret-server` processes for integration tests, on loopback with free ports."""

from __future__ import annotations

import atexit
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
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    import pytest

REPO = Path(__file__).resolve().parents[2]

_scratch: Path | None = None


def scratch_dir() -> Path:
    """A fresh directory for one node's data (its log and YAML go next to it), inside one
    directory per test process that is removed when the process exits: a test may still
    open a stopped node's data, but nothing is left in /tmp after the run."""
    global _scratch
    if _scratch is None:
        _scratch = Path(tempfile.mkdtemp(prefix="leveret-tests-"))
        atexit.register(shutil.rmtree, _scratch, True)
    return Path(tempfile.mkdtemp(prefix="node-", dir=_scratch))


_port_mapper: tuple[subprocess.Popen, int] | None = None


def port_mapper_port() -> int:
    """The port of this test process's own port mapper (started on first use, stopped by its
    pid when the process exits), so that test nodes never share, or spawn, the host's."""
    global _port_mapper
    if _port_mapper is None:
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "cluster.portmapper", "--port", str(port),
                                 "--host", "127.0.0.1"], cwd=REPO, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        atexit.register(_stop_port_mapper, proc)
        wait_for_port("127.0.0.1", port, 15, proc)
        _port_mapper = (proc, port)
    return _port_mapper[1]


def _stop_port_mapper(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"leveret-server exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


@dataclass
class NodeProcess:
    """One `leveret-server` process. `start()` waits until its AMQP port accepts."""

    name: str = "test@localhost"
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    data_dir: Path = field(default_factory=scratch_dir)
    cookie: str = "TESTCOOKIEABCDEFGHIJ"
    # The HTTP listeners are off unless asked for: `with_http()` picks free ports for both.
    management_port: int = 0
    prometheus_port: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    # Settings written to a YAML file passed with --config (e.g. {"heartbeat": 5}).
    config: dict | None = None
    # The port mapper this node registers with and looks its peers up in: the test process's
    # own (127.0.0.1 only) unless given, e.g. a mapper that also answers on the node addresses
    # 127.0.0.11.. of a cluster whose node names carry those addresses (tests/chaos).
    port_mapper: int | None = None
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.port}/"

    def with_http(self) -> Self:
        """Turn on the management API and the Prometheus metrics, each on a free loopback port."""
        self.management_port, self.prometheus_port = free_port(self.host), free_port(self.host)
        return self

    @property
    def management_url(self) -> str:
        return f"http://{self.host}:{self.management_port}"

    @property
    def prometheus_url(self) -> str:
        return f"http://{self.host}:{self.prometheus_port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "LEVERET_NODENAME": self.name,
            "LEVERET_NODE_IP_ADDRESS": self.host,
            "LEVERET_NODE_PORT": str(self.port),
            "LEVERET_DIST_PORT": str(self.dist_port),
            "LEVERET_MANAGEMENT_PORT": str(self.management_port),
            "LEVERET_PROMETHEUS_PORT": str(self.prometheus_port),
            "LEVERET_DATA_DIR": str(self.data_dir),
            "LEVERET_COOKIE": self.cookie,
            "LEVERET_LOG_LEVEL": "info",
            "LEVERET_PORT_MAPPER_PORT": str(self.port_mapper or port_mapper_port()),
            # The test's own mapper is stopped by its pid; a node must not start a detached
            # one that outlives the run when it does not answer.
            "LEVERET_PORT_MAPPER_AUTOSTART": "false",
        })
        env.update(self.extra_env)
        return env

    def command(self) -> list[str]:
        cmd = [sys.executable, "-c", "from cli.server import main; main()"]
        if self.config is not None:
            import yaml

            path = self.data_dir.parent / f"{self.data_dir.name}.yaml"
            path.write_text(yaml.safe_dump(self.config))
            cmd += ["--config", str(path)]
        return cmd

    def start(self, timeout: float = 30.0) -> "NodeProcess":
        self.launch()
        return self.wait_ready(timeout)

    def launch(self) -> "NodeProcess":
        """Start the process without waiting for it (nodes that wait for each other)."""
        if self.log_path is None:
            self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), env=self.env(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self

    def wait_ready(self, timeout: float = 30.0) -> "NodeProcess":
        """Until the AMQP port accepts."""
        wait_for_port(self.host, self.port, timeout, self.proc)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            if sig != signal.SIGKILL:
                # A paused (SIGSTOP) process would not act on the signal until resumed.
                self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        code = self.proc.returncode
        self.proc = None
        return code

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kill(self) -> None:
        """SIGKILL: nothing is flushed, as after a power cut of the process."""
        self.stop(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: the process stays, its sockets stay open, and nothing answers (a long GC
        pause, a stalled VM)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""


# The two ways the protocol tests that take this parameter run: on the session's one node, or
# on the client node of `queues_across_nodes` (tests/conftest.py).
ONE_NODE_OR_ACROSS_NODES = ["one node", "queues across two nodes"]


def url_for_param(request: "pytest.FixtureRequest", override_env: str) -> str:
    """The AMQP URL for a fixture parametrised with ONE_NODE_OR_ACROSS_NODES: the environment's
    `override_env` when set (an already running broker), else the node the parameter names."""
    override = os.environ.get(override_env)
    if override:
        return override
    fixture = "node" if request.param == "one node" else "queues_across_nodes"
    return request.getfixturevalue(fixture).url
