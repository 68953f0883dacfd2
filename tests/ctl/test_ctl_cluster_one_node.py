"""leveretctl's cluster commands on a cluster of one: reset, node types, waiting for nodes,
rename refused. Texts and exit codes as rabbitmqctl 3.10.8's
(tests/ctl/rabbitmq-3.10.8-cluster-commands.txt)."""

from __future__ import annotations

import json

import pika
import pika.exceptions
import pytest

from tests.ctl.support import connect, ctl, ok
from tests.support.node_process import NodeProcess


@pytest.fixture
def node():
    with NodeProcess(name="one@localhost").start() as proc:
        yield proc


def test_reset_returns_the_node_to_its_virgin_state(node: NodeProcess) -> None:
    conn = connect(node)
    ch = conn.channel()
    ch.queue_declare("kept-until-reset", durable=True)
    ch.confirm_delivery()
    ch.basic_publish("", "kept-until-reset", b"x", pika.BasicProperties(delivery_mode=2))
    conn.close()
    ok(node, "add_user", "ops", "s3cret")
    ok(node, "delete_user", "guest")

    refused = ctl(node, "reset")
    assert refused.code == 64
    assert refused.err.startswith("Error: this command requires the 'leveret' app to be stopped on the target node. "
                                  "Stop it with 'leveretctl stop_app'.")
    assert refused.out == ""

    ok(node, "stop_app")
    assert ok(node, "reset").out == f"Resetting node {node.name} ...\n"
    ok(node, "start_app")
    users = ok(node, "list_users", "--formatter", "json").out
    assert [u["user"] for u in json.loads(users)] == ["guest"]
    assert json.loads(ok(node, "list_queues", "name", "--formatter", "json").out) == []
    # The fresh node serves clients, and keeps what they do across a restart.
    conn = connect(node)
    ch = conn.channel()
    ch.queue_declare("after-reset", durable=True)
    conn.close()
    node.stop()
    node.start()
    assert [q["name"] for q in json.loads(ok(node, "list_queues", "name", "--formatter", "json").out)] == [
        "after-reset"]


def test_force_reset_and_node_types(node: NodeProcess) -> None:
    ok(node, "stop_app")
    assert ok(node, "force_reset").out == f"Forcefully resetting node {node.name} ...\n"
    assert ok(node, "change_cluster_node_type", "disc").out == (
        f"Turning {node.name} into a disc node\nNode type is already disc\n")
    ram = ctl(node, "change_cluster_node_type", "ram")
    assert ram.code == 69 and "Every Leveret node is a disc node" in ram.err
    assert ctl(node, "change_cluster_node_type", "floppy").code == 64
    ok(node, "start_app")


def test_await_online_nodes_and_rename(node: NodeProcess) -> None:
    assert ok(node, "await_online_nodes", "1").out == (
        f"Will wait for at least 1 nodes to join the cluster of {node.name}. Timeout: 300 seconds.\n")
    waited = ctl(node, "-t", "1", "await_online_nodes", "2")
    assert waited.code == 70
    assert waited.err == f"Error:\nError: timed out while waiting. Not enough nodes joined {node.name}'s cluster.\n"
    renamed = ctl(node, "rename_cluster_node", node.name, "other@localhost")
    assert renamed.code == 64 and "not supported" in renamed.err
    status = json.loads(ok(node, "cluster_status", "--formatter", "json").out)
    assert status["disk_nodes"] == status["running_nodes"] == [node.name] and status["partitions"] == {}
