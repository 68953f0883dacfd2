"""The HTTP listeners' settings: `prometheus_port` beside `management_port` (0 turns each
off), and a port already in use stopping the node at start with a message naming it."""

from __future__ import annotations

import socket
import subprocess

import pytest

from broker.config import ConfigError, Settings, resolve_settings
from tests.management.http import Api
from tests.support.node_process import NodeProcess, free_port, wait_for_port


def settings(env: dict[str, str], file_values: dict | None = None) -> Settings:
    return resolve_settings(file_values=file_values, file_label="leveret.yaml", env=env, overrides={},
                            hostname="box")


def test_prometheus_port_setting() -> None:
    assert settings({}).prometheus_port == 15692
    assert settings({"LEVERET_PROMETHEUS_PORT": "0"}).prometheus_port == 0
    assert settings({}, {"prometheus_port": 9419}).prometheus_port == 9419
    with pytest.raises(ConfigError, match="'prometheus_port' must be an integer between 0 and 65535"):
        settings({}, {"prometheus_port": 70000})


def test_a_port_of_zero_turns_a_listener_off() -> None:
    node = NodeProcess(name="http-off@localhost")
    node.management_port = free_port()
    with node:
        node.start()
        wait_for_port(node.host, node.management_port, 10)
        overview = Api(node.management_url).ok("GET", "/api/overview")
        assert {listener["protocol"] for listener in overview["listeners"]} == {"amqp", "clustering", "http"}


@pytest.mark.parametrize("setting", ["management_port", "prometheus_port"])
def test_a_port_in_use_stops_the_node_naming_it(setting: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = NodeProcess(name="http-busy@localhost").with_http()
        setattr(node, setting, port)
        node.log_path = node.data_dir.parent / f"{node.data_dir.name}.log"
        with open(node.log_path, "ab") as log:
            proc = subprocess.Popen(node.command(), env=node.env(), stdout=log, stderr=subprocess.STDOUT)
        try:
            code = proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code == 69
    text = node.log_text()
    assert f"127.0.0.1:{port} ({setting})" in text and "Address already in use" in text, text[-2000:]
