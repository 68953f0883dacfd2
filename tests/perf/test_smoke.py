"""Smoke run: every scenario for ~2 s against a real leveret-server, through the console script.

This keeps the tool working; it asserts nothing about speed. The node is started
here on free loopback ports with its own data directory and stopped afterwards;
a node that cannot start fails the test with the tail of its log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from cli.perf.cluster import free_port, listening
from cli.perf.scenarios import SCENARIOS
from tests.support.node_process import port_mapper_port

VENV_BIN = Path(sys.executable).parent
SERVER = VENV_BIN / "leveret-server"
PERF = VENV_BIN / "leveret-perf"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """(URL, pid) of a leveret-server started for this module."""
    assert SERVER.exists(), f"{SERVER} is not installed (pip install -e '.[test]')"
    port = free_port()
    data_dir = tmp_path_factory.mktemp("leveret-perf-node")
    env = dict(
        os.environ,
        LEVERET_NODE_PORT=str(port),
        LEVERET_DIST_PORT=str(free_port()),
        LEVERET_MANAGEMENT_PORT="0",
        LEVERET_PROMETHEUS_PORT="0",
        LEVERET_DATA_DIR=str(data_dir),
        LEVERET_NODENAME="perf@localhost",
        # This test process's own mapper, stopped at exit: a node that finds none on the port
        # starts one as a detached daemon, which would outlive the test.
        LEVERET_PORT_MAPPER_PORT=str(port_mapper_port()),
    )
    log = data_dir / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([str(SERVER)], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                state = f"exited with {process.returncode}" if process.poll() is not None else "never listened"
                pytest.fail(f"leveret-server did not start ({state}): {' | '.join(tail) or 'no output'}")
            time.sleep(0.2)
        yield f"amqp://guest:guest@127.0.0.1:{port}/", process.pid
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def test_every_scenario_runs_against_a_local_node(broker: tuple[str, int]) -> None:
    url, pid = broker
    command = [
        str(PERF), "run", "--url", url, "--broker-pid", str(pid), "--label", "leveret",
        "--scenarios", ",".join(SCENARIOS), "--duration", "2", "--repeat", "1", "--procs", "2",
        "--connections", "100", "--backlog-messages", "5000", "--json",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(done.stdout)
    scenarios = report["scenarios"]
    assert set(scenarios) == set(SCENARIOS)
    assert "3-node cluster" in scenarios["mirrored"]["skipped"]
    for name in SCENARIOS:
        if name == "mirrored":
            continue
        entry = scenarios[name]
        assert entry["problems"] == [], (name, entry["problems"])
        assert entry["metrics"], name
    assert scenarios["transient"]["metrics"]["delivered_per_s"]["a"]["median"] > 0
    assert scenarios["connections"]["metrics"]["connections_held"]["a"]["median"] == 100
    assert scenarios["backlog"]["totals"]["a"][0]["delivered"] == 5000
