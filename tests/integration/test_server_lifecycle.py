"""leveret-server start-up and shutdown as an operator sees them."""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import pika
import pytest

from tests.support.node_process import NodeProcess


def test_banner_names_version_node_listeners_data_dir_and_config() -> None:
    node = NodeProcess(name="banner@localhost", config={"heartbeat": 30}).start()
    try:
        deadline = time.monotonic() + 10
        while "Starting broker... completed." not in node.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        log = node.log_text()
    finally:
        node.stop()
    assert "Leveret 0.1.0" in log
    assert "Node:          banner@localhost" in log
    assert f"Listener:      amqp on [127.0.0.1]:{node.port}" in log
    assert f"Data dir:      {node.data_dir}" in log
    assert "Config file:   " in log and ".yaml" in log


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_closes_clients_with_connection_forced(sig: int) -> None:
    node = NodeProcess(name="stopping@localhost").start()
    try:
        conn = pika.BlockingConnection(pika.URLParameters(node.url))
        conn.channel().queue_declare("stop_q")
        closed: list[BaseException] = []

        def wait() -> None:
            try:
                conn.process_data_events(10)
            except pika.exceptions.AMQPConnectionError as exc:
                closed.append(exc)

        t = threading.Thread(target=wait)
        t.start()
        time.sleep(0.2)
        node.proc.send_signal(sig)
        t.join(15)
        assert node.proc.wait(15) == 0
    finally:
        node.stop()
    assert len(closed) == 1
    err = closed[0]
    assert isinstance(err, pika.exceptions.ConnectionClosedByBroker)
    assert err.reply_code == 320
    assert err.reply_text == "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"


@pytest.mark.parametrize(
    "config, message",
    [
        ({"nod_port": 5672}, "unknown key 'nod_port'"),
        ({"node_port": "abc"}, "'node_port' must be an integer between 1 and 65535"),
        ({"vm_memory_high_watermark": "lots"}, "'vm_memory_high_watermark'"),
    ],
)
def test_bad_config_stops_the_server_naming_the_key(config: dict, message: str) -> None:
    node = NodeProcess(name="badconfig@localhost", config=config)
    result = subprocess.run(node.command(), env=node.env(), capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert message in result.stderr
