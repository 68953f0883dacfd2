"""Three real nodes on loopback: join_cluster, cluster_status, metadata replicated by Raft over
peer links, a killed node catching up, a minority refusing changes, forget_cluster_node."""

from __future__ import annotations

import json
import time

import pika
import pika.exceptions
import pytest

from tests.ctl.support import connect, ctl, ok, wait_until
from tests.support.node_process import NodeProcess

from tests.support.cluster import NAMES, join  # noqa: F401 (used by other test modules too)


@pytest.fixture
def trio_nodes():
    nodes = [NodeProcess(name=n) for n in NAMES]
    try:
        for n in nodes:
            n.start()
        yield nodes
    finally:
        for n in nodes:
            n.stop()


def status(node: NodeProcess) -> dict:
    return json.loads(ok(node, "cluster_status", "--formatter", "json").out)


def users(node: NodeProcess) -> list[str]:
    return sorted(u["user"] for u in json.loads(ok(node, "list_users", "--formatter", "json").out))


def known_everywhere(nodes: list[NodeProcess], *queues: str) -> None:
    """Wait until every node applied the declares: a node answers once the change is applied
    on itself, the others follow a moment later."""
    for n in nodes:
        for q in queues:
            wait_until(lambda: _exists(n, q))


def _exists(node: NodeProcess, queue: str) -> bool:
    conn = connect(node)
    try:
        conn.channel().queue_declare(queue, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker:
        return False
    finally:
        if conn.is_open:
            conn.close()


def test_join_replicate_lose_a_node_and_catch_up(trio_nodes: list[NodeProcess]) -> None:
    a, b, c = trio_nodes
    join(b, a.name)
    join(c, b.name)  # through any member
    for n in trio_nodes:
        s = status(n)
        assert s["disk_nodes"] == list(NAMES)
        assert sorted(s["running_nodes"]) == list(NAMES)
        assert s["partitions"] == {}
        assert sorted(s["versions"]) == list(NAMES)
    text = ok(a, "cluster_status").out
    assert "Disk Nodes\n\na@localhost\nb@localhost\nc@localhost\n" in text
    # Joining again is a no-op, as in RabbitMQ.
    ok(c, "stop_app")
    assert ok(c, "join_cluster", a.name).lines[-1] == "The node is already a member of this cluster"
    ok(c, "start_app")

    # A change made on any node is on every node once its reply came back.
    ok(c, "add_user", "from-c", "pw")
    conn = connect(a)
    ch = conn.channel()
    ch.exchange_declare("x.replicated", "topic", durable=True)
    ch.queue_declare("q.replicated", durable=True)
    ch.queue_bind("q.replicated", "x.replicated", "k.#")
    conn.close()
    for n in trio_nodes:
        assert users(n) == ["from-c", "guest"]
        exchanges = json.loads(ok(n, "list_exchanges", "name", "--formatter", "json").out)
        assert "x.replicated" in {e["name"] for e in exchanges}
        bindings = json.loads(ok(n, "list_bindings", "source_name", "destination_name", "--formatter", "json").out)
        assert {"source_name": "x.replicated", "destination_name": "q.replicated"} in bindings

    # kill -9 a node: the majority keeps changing metadata; the node catches up on restart.
    c.kill()
    ok(a, "add_user", "while-c-down", "pw")
    wait_until(lambda: sorted(status(a)["running_nodes"]) == ["a@localhost", "b@localhost"], 20)
    assert status(a)["partitions"] == {"a@localhost": ["c@localhost"]}
    c.start()
    wait_until(lambda: "while-c-down" in users(c), 30)
    wait_until(lambda: sorted(status(a)["running_nodes"]) == list(NAMES), 20)


def test_a_minority_refuses_changes_then_catches_up(trio_nodes: list[NodeProcess]) -> None:
    a, b, c = trio_nodes
    join(b, a.name)
    join(c, a.name)
    a.kill()
    b.kill()
    # The AMQP client gets a channel error 541 naming the cause, within the 5 s bound.
    conn = connect(c)
    ch = conn.channel()
    started = time.monotonic()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        ch.queue_declare("q.minority", durable=True)
    assert time.monotonic() - started < 15
    assert refused.value.reply_code == 541
    assert "not committed" in refused.value.reply_text and "c@localhost" in refused.value.reply_text
    assert conn.is_open  # a channel error, not a connection error
    conn.close()
    failed = ctl(c, "add_user", "lost", "pw")
    assert failed.code == 69 and "not committed" in failed.err
    a.start(timeout=60)
    b.start(timeout=60)
    wait_until(lambda: ctl(c, "add_user", "after-heal", "pw").code == 0, 60)
    assert "after-heal" in users(a)


def test_forget_a_dead_node_and_reset_leaves(trio_nodes: list[NodeProcess]) -> None:
    a, b, c = trio_nodes
    join(b, a.name)
    join(c, a.name)
    running = ctl(a, "forget_cluster_node", c.name)
    assert running.code == 69 and "must be stopped" in running.err
    unknown = ctl(a, "forget_cluster_node", "nobody@localhost")
    assert unknown.code == 69 and "not_a_cluster_node" in unknown.err
    on_c = connect(c)
    on_c.channel().queue_declare("transient-on-c", durable=False)
    wait_until(lambda: "transient-on-c" in ok(a, "list_queues", "name").out, 10)
    c.kill()
    assert ok(a, "forget_cluster_node", c.name).out == f"Removing node {c.name} from the cluster\n"
    # Its non-durable queue left with it.
    wait_until(lambda: "transient-on-c" not in ok(b, "list_queues", "name").out, 10)
    assert status(b)["disk_nodes"] == ["a@localhost", "b@localhost"]
    # reset leaves the cluster cleanly: the other member carries on alone.
    ok(b, "stop_app")
    ok(b, "reset")
    ok(b, "start_app")
    assert status(b)["disk_nodes"] == ["b@localhost"]
    wait_until(lambda: status(a)["disk_nodes"] == ["a@localhost"], 20)
    ok(a, "add_user", "alone", "pw")


def test_a_node_with_another_cookie_cannot_join(trio_nodes: list[NodeProcess]) -> None:
    a, b, c = trio_nodes
    c.stop()
    stranger = NodeProcess(name=c.name, dist_port=c.dist_port, port=c.port, data_dir=c.data_dir,
                           cookie="ANOTHERCOOKIEXYZ")
    trio_nodes[2] = stranger.start()
    ok(stranger, "stop_app")
    refused = ctl(stranger, "join_cluster", a.name)
    assert refused.code == 69 and "the cookie differs" in refused.err
    assert "cookie differs" in a.log_text()
    assert status(a)["disk_nodes"] == ["a@localhost"]


def test_a_queue_homed_on_another_node_is_fully_usable_from_it(trio_nodes: list[NodeProcess]) -> None:
    """A queue declared on one node is served on another: a confirmed publish reaches the home
    node and is confirmed by it; get, purge, passive declare counts and delete work there."""
    a, b, c = trio_nodes
    join(b, a.name)
    on_a = connect(a)
    on_a.channel().queue_declare("homed-on-a", durable=True)
    known_everywhere([a, b], "homed-on-a")
    on_b = connect(b)
    ch = on_b.channel()
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", "homed-on-a", b"x%d" % i,
                         pika.BasicProperties(delivery_mode=2, priority=1, headers={"h": i}))
    assert ch.queue_declare("homed-on-a", passive=True).method.message_count == 3
    method, props, body = ch.basic_get("homed-on-a")
    assert body == b"x0" and props.headers == {"h": 0} and props.delivery_mode == 2 and not method.redelivered
    ch.basic_nack(method.delivery_tag, requeue=True)
    method, _, body = ch.basic_get("homed-on-a")
    assert body == b"x0" and method.redelivered
    ch.basic_ack(method.delivery_tag)
    assert ch.queue_purge("homed-on-a").method.message_count == 2
    assert on_a.channel().queue_declare("homed-on-a", passive=True).method.message_count == 0
    ch.basic_publish("", "homed-on-a", b"kept")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        ch.queue_delete("homed-on-a", if_empty=True)
    assert refused.value.reply_code == 406
    on_b.channel().queue_delete("homed-on-a")
    on_b.close()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        on_a.channel().queue_declare("homed-on-a", passive=True)
    on_a.close()


def test_a_joining_node_never_makes_defaults_of_its_own(trio_nodes: list[NodeProcess]) -> None:
    """Item 9 of the hardening issue, for clusters: the cluster decided its defaults once; a node
    that joins takes the cluster's metadata (guest deleted there) and keeps it across restarts."""
    a, b, c = trio_nodes
    ok(a, "add_user", "admin", "pw")
    ok(a, "delete_user", "guest")
    join(b, a.name)
    assert users(b) == ["admin"]
    for _ in range(3):
        b.stop()
        b.start(timeout=60)
        assert users(b) == ["admin"]
    # Once, by b's own first start before it joined; never after.
    assert b.log_text().count("creating user") == 1
    assert users(a) == ["admin"]


def test_leveretctl_finds_a_node_by_name_through_the_port_mapper(trio_nodes: list[NodeProcess]) -> None:
    """Several nodes on one host, each on its own peer port: `-n name` alone reaches the right
    one, as rabbitmqctl finds nodes through epmd."""
    import os
    import subprocess
    import sys

    from tests.support.node_process import REPO, port_mapper_port

    env = dict(os.environ, LEVERET_COOKIE=trio_nodes[0].cookie, LEVERET_PORT_MAPPER_PORT=str(port_mapper_port()))
    env.pop("LEVERET_DIST_PORT", None)
    for node in trio_nodes:
        done = subprocess.run([sys.executable, "-c", "from cli.ctl import main; main()", "-n", node.name,
                               "cluster_status", "--formatter", "json"],
                              env=env, cwd=REPO, capture_output=True, timeout=60)
        assert done.returncode == 0, done
        assert json.loads(done.stdout)["running_nodes"] == [node.name]


def test_a_pika_client_with_every_node_listed_reconnects_to_a_live_one(trio_nodes: list[NodeProcess]) -> None:
    """The seed documents' client: all three nodes as a multi-host parameter list. When its node
    is killed it connects to the next live one, where the cluster's metadata is already there."""
    a, b, c = trio_nodes
    join(b, a.name)
    join(c, a.name)
    params = [pika.URLParameters(n.url) for n in trio_nodes]
    for p in params:
        p.connection_attempts = 1
    conn = pika.BlockingConnection(params)
    conn.channel().exchange_declare("x.everywhere", "fanout", durable=True)
    conn.close()
    a.kill()
    conn = pika.BlockingConnection(params)
    try:
        ch = conn.channel()
        ch.exchange_declare("x.everywhere", "fanout", durable=True, passive=True)
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, "x.everywhere")
        ch.confirm_delivery()
        ch.basic_publish("x.everywhere", "", b"after failover")
        assert ch.basic_get(q, auto_ack=True)[2] == b"after failover"
    finally:
        conn.close()


def test_an_exclusive_queue_is_gone_when_close_ok_arrives_on_any_node(trio_nodes: list[NodeProcess]) -> None:
    """Its deletion goes through the metadata leader, which may be another node: still done
    before the owner's close-ok, so a declare right after never gets 405."""
    a, b, c = trio_nodes
    join(b, a.name)
    join(c, a.name)
    for node in (b, c, a):
        for i in range(10):
            owner = connect(node)
            owner.channel().queue_declare(f"excl-{node.name}-{i}", exclusive=True)
            owner.close()
            other = connect(node)
            other.channel().queue_declare(f"excl-{node.name}-{i}", exclusive=True)
            other.close()


def test_the_whole_cluster_stops_and_starts_in_any_order(trio_nodes: list[NodeProcess]) -> None:
    """Every member waits at start for a majority of the cluster, so the members of a stopped
    cluster may be started in any order (each waits for the others, as RabbitMQ nodes do)."""
    a, b, c = trio_nodes
    join(b, a.name)
    join(c, a.name)
    ok(b, "add_user", "survivor", "pw")
    for n in (a, b, c):
        n.stop()
    for n in (c, a, b):
        n.launch()
    for n in (c, a, b):
        n.wait_ready(90)
    for n in trio_nodes:
        assert users(n) == ["guest", "survivor"]
        assert status(n)["disk_nodes"] == list(NAMES)
    ok(c, "add_user", "after-restart", "pw")
