"""The broker's resident memory: which process it is, and its peak RSS during a scenario.

The broker process is given (`--broker-pid`), or found as the process listening
on the URL's TCP port (psutil; needs the right to see other users' sockets, which
root has), or, for the reference RabbitMQ, read from the pid file that
`scripts/rabbitmq-ref` writes. RSS is sampled every 100 ms by a trio task; the
peak of the samples is what a scenario reports.
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import trio

__all__ = ["RssSampler", "find_broker_pid"]

REF_PID_FILE = Path(os.environ.get("RMQ_REF_BASE", "/tmp/leveret-rabbitmq-ref")) / "ref.pid"


def find_broker_pid(port: int) -> int | None:
    """The pid of the process listening on TCP `port`, else RabbitMQ's pid file's, else None."""
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return conn.pid
    except (psutil.AccessDenied, PermissionError):
        pass
    ref_port = int(os.environ.get("RMQ_REF_PORT", "5690"))
    if port == ref_port and REF_PID_FILE.exists():
        try:
            pid = int(REF_PID_FILE.read_text().strip())
        except ValueError:
            return None
        return pid if psutil.pid_exists(pid) else None
    return None


class RssSampler:
    """Samples one process's RSS; `peak` is the largest sample since `reset`."""

    def __init__(self, pid: int | None, interval: float = 0.1) -> None:
        self.interval = interval
        self.peak = 0
        self._process: psutil.Process | None = None
        if pid is not None:
            try:
                self._process = psutil.Process(pid)
            except psutil.NoSuchProcess:
                self._process = None

    @property
    def available(self) -> bool:
        return self._process is not None

    def sample(self) -> int:
        """Current RSS in bytes (0 when unknown); also raises the peak."""
        if self._process is None:
            return 0
        try:
            rss = self._process.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            self._process = None
            return 0
        if rss > self.peak:
            self.peak = rss
        return rss

    def reset(self) -> None:
        self.peak = 0
        self.sample()

    async def run(self) -> None:
        """Sample until cancelled."""
        while self._process is not None:
            self.sample()
            await trio.sleep(self.interval)
