"""Management clients nobody here wrote, unmodified, against Leveret's API: RabbitMQ 3.10's
own rabbitmqadmin (from Debian's rabbitmq-server package) and pyrabbit2 from PyPI. Each
lists, declares, publishes and gets, and what it did is checked over AMQP (pika)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pika
import pytest
from pyrabbit2.api import Client

from tests.support.node_process import NodeProcess
from tests.support.rabbitmqadmin import rabbitmqadmin_command, rabbitmqadmin_path


@pytest.fixture(scope="module")
def rabbitmqadmin() -> Path:
    path, why = rabbitmqadmin_path()
    if path is None:
        print(f"rabbitmqadmin tests skipped: {why}")
        pytest.skip(f"rabbitmqadmin could not be installed: {why}")
    return path


def run_admin(path: Path, node: NodeProcess, *args: str, user: str = "guest", password: str = "guest") -> str:
    result = subprocess.run(rabbitmqadmin_command(path, node.host, node.management_port, user, password, *args),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, (args, result.returncode, result.stdout, result.stderr)
    return result.stdout


def test_rabbitmqadmin_declares_lists_publishes_and_gets(rabbitmqadmin: Path, http_node: NodeProcess) -> None:
    run_admin(rabbitmqadmin, http_node, "declare", "exchange", "name=ra-x", "type=topic")
    run_admin(rabbitmqadmin, http_node, "declare", "queue", "name=ra-q", "durable=false",
              'arguments={"x-max-length": 100}')
    run_admin(rabbitmqadmin, http_node, "declare", "binding", "source=ra-x", "destination=ra-q",
              "routing_key=ra.#")
    queues = json.loads(run_admin(rabbitmqadmin, http_node, "-f", "raw_json", "list", "queues"))
    [queue] = [q for q in queues if q["name"] == "ra-q"]
    assert queue["arguments"] == {"x-max-length": 100} and queue["durable"] is False
    table = run_admin(rabbitmqadmin, http_node, "list", "queues", "name", "messages")
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in table.splitlines() if line.startswith("|")]
    assert rows[0] == ["name", "messages"] and ["ra-q", "0"] in rows[1:], table
    assert "ra-x" in run_admin(rabbitmqadmin, http_node, "list", "exchanges", "name", "type")
    assert "ra.#" in run_admin(rabbitmqadmin, http_node, "list", "bindings")
    assert "guest" in run_admin(rabbitmqadmin, http_node, "list", "users")
    out = run_admin(rabbitmqadmin, http_node, "publish", "exchange=ra-x", "routing_key=ra.one",
                    "payload=from rabbitmqadmin")
    assert "Message published" in out and "NOT routed" not in out
    got = json.loads(run_admin(rabbitmqadmin, http_node, "-f", "raw_json", "get", "queue=ra-q",
                               "ackmode=ack_requeue_false"))
    assert [(m["payload"], m["routing_key"], m["exchange"]) for m in got] == [("from rabbitmqadmin", "ra.one", "ra-x")]
    run_admin(rabbitmqadmin, http_node, "publish", "routing_key=ra-q", "payload=second")
    run_admin(rabbitmqadmin, http_node, "purge", "queue", "name=ra-q")
    conn = pika.BlockingConnection(pika.URLParameters(http_node.url))
    try:
        assert conn.channel().queue_declare("ra-q", passive=True).method.message_count == 0
    finally:
        conn.close()
    overview = json.loads(run_admin(rabbitmqadmin, http_node, "-f", "raw_json", "show", "overview"))
    assert overview[0]["node"] == http_node.name
    run_admin(rabbitmqadmin, http_node, "delete", "queue", "name=ra-q")
    run_admin(rabbitmqadmin, http_node, "delete", "exchange", "name=ra-x")
    assert "ra-q" not in run_admin(rabbitmqadmin, http_node, "list", "queues", "name")


def test_rabbitmqadmin_reports_refusals(rabbitmqadmin: Path, http_node: NodeProcess) -> None:
    cmd = rabbitmqadmin_command(rabbitmqadmin, http_node.host, http_node.management_port, "guest", "wrong",
                                "list", "queues")
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "Access refused: /api/queues" in refused.stdout + refused.stderr
    cmd = rabbitmqadmin_command(rabbitmqadmin, http_node.host, http_node.management_port, "guest", "guest",
                                "declare", "exchange", "name=ra-bad", "type=nope")
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "unknown exchange type 'nope'" in bad.stdout + bad.stderr


def test_pyrabbit2_declares_lists_publishes_and_gets(http_node: NodeProcess) -> None:
    client = Client(f"{http_node.host}:{http_node.management_port}", "guest", "guest")
    assert client.is_alive()
    assert "/" in client.get_vhost_names()
    assert client.get_whoami()["name"] == "guest"
    client.create_exchange("/", "py-x", "direct")
    client.create_queue("/", "py-q", durable=False)
    client.create_binding("/", "py-x", "py-q", "py-key")
    assert "py-q" in [q["name"] for q in client.get_queues("/")]
    assert [q["name"] for q in client.get_queues(pattern="^py-q$", regex=True)] == ["py-q"]
    assert client.publish("/", "py-x", "py-key", "from pyrabbit2")
    assert client.get_queue_depth("/", "py-q") == 1
    messages = client.get_messages("/", "py-q", count=1, requeue=True)
    assert messages[0]["payload"] == "from pyrabbit2"
    assert client.get_queue_depth("/", "py-q") == 1
    conn = pika.BlockingConnection(pika.URLParameters(http_node.url))
    try:
        _method, _props, body = conn.channel().basic_get("py-q", auto_ack=True)
        assert body == b"from pyrabbit2"
    finally:
        conn.close()
    assert client.get_messages("/", "py-q", count=1) == []
    assert [b["routing_key"] for b in client.get_queue_bindings("/", "py-q")] == ["py-q", "py-key"]
    client.delete_binding("/", "py-x", "py-q", "py-key")
    client.delete_queue("/", "py-q")
    client.delete_exchange("/", "py-x")
    assert "py-q" not in [q["name"] for q in client.get_queues("/")]
