"""Running `leveretctl` as a subprocess against a real node, as an operator would."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import pika

from tests.support.node_process import REPO, NodeProcess


@dataclass
class Result:
    out: str
    err: str
    code: int

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


def ctl(node: NodeProcess, *args: str, cookie: str | None = None, port: int | None = None,
        node_name: str | None = None, env: dict[str, str] | None = None, stdin: str | None = None) -> Result:
    full_env = dict(os.environ)
    full_env["LEVERET_COOKIE"] = node.cookie if cookie is None else cookie
    full_env.update(env or {})
    cmd = [sys.executable, "-c", "from cli.ctl import main; main()",
           "-n", node_name or node.name, "--port", str(port or node.dist_port), *args]
    # Bytes, decoded here: text mode would turn the "\r\n" rabbitmqctl prints in places into "\n".
    proc = subprocess.run(cmd, env=full_env, cwd=REPO, capture_output=True, timeout=90,
                          input=stdin.encode() if stdin is not None else None)
    return Result(proc.stdout.decode(), proc.stderr.decode(), proc.returncode)


def ok(node: NodeProcess, *args: str) -> Result:
    result = ctl(node, *args)
    assert result.code == 0, (args, result)
    assert result.err == "", (args, result)
    return result


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def connect(node: NodeProcess, vhost: str = "/") -> pika.BlockingConnection:
    """A pika connection to `node` as guest, in `vhost`."""
    params = pika.URLParameters(node.url)
    params.virtual_host = vhost
    return pika.BlockingConnection(params)
