"""What clients see of a replicated queue's failover and of its declaration, on real nodes:
consumers on surviving nodes keep consuming unless they asked for x-cancel-on-ha-failover
(then basic.cancel, as RabbitMQ), a queue's type cannot change once declared (406 with
RabbitMQ 3.10.8's texts), and an ha-mode exactly queue re-places a replica whose node stays
down past mirror_replacement_delay."""

from __future__ import annotations

import time
from typing import Any

import pika
import pika.exceptions
import pytest

from tests.ctl.support import connect
from tests.mirroring.support import (
    declare,
    drain,
    node_named,
    publish_confirmed,
    replica_row,
    set_policy,
    start_cluster,
    stop_all,
    wait_for,
    wait_replicas,
)
from tests.support.node_process import NodeProcess

A, B, C = "a@localhost", "b@localhost", "c@localhost"


def test_consumers_keep_consuming_through_a_failover_unless_they_asked_to_be_cancelled(
        cluster: list[NodeProcess]) -> None:
    a, b, c = cluster
    queue = "failover.consumers"
    declare(a, queue, **{"x-queue-type": "quorum"})
    leader = wait_replicas(cluster, queue, {A, B, C})["leader"]
    survivors = [n for n in cluster if n.name != leader]
    conn = connect(survivors[0])
    got: dict[str, list[bytes]] = {"stays": [], "cancels": []}
    cancelled: list[str] = []
    try:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=10)

        def on(tag: str) -> Any:
            def deliver(ch: Any, method: Any, props: Any, body: bytes) -> None:
                got[tag].append(body)
                ch.basic_ack(method.delivery_tag)
            return deliver

        ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
        ch.basic_consume(queue, on("stays"), consumer_tag="stays")
        ch.basic_consume(queue, on("cancels"), consumer_tag="cancels",
                         arguments={"x-cancel-on-ha-failover": True})
        publish_confirmed(survivors[1], queue, [b"before-%d" % i for i in range(10)])
        deadline = time.monotonic() + 20
        while len(got["stays"]) + len(got["cancels"]) < 10 and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
        node_named(cluster, leader).kill()
        deadline = time.monotonic() + 20
        while "cancels" not in cancelled and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
        assert cancelled == ["cancels"]
        after = [b"after-%d" % i for i in range(10)]
        publish_confirmed(survivors[1], queue, after, retry_for=15)
        deadline = time.monotonic() + 30
        while not set(after) <= set(got["stays"]) and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
        # The consumer that did not ask to be cancelled took everything published after.
        assert set(after) <= set(got["stays"])
    finally:
        if conn.is_open:
            conn.close()
        node_named(cluster, leader).start()
    wait_replicas(cluster, queue, {A, B, C}, timeout=60)


def test_publishes_through_a_leaders_kill_wait_for_the_new_leader_instead_of_being_nacked(
        cluster: list[NodeProcess]) -> None:
    a, _, _ = cluster
    queue = "failover.held"
    declare(a, queue, **{"x-queue-type": "quorum"})
    leader = wait_replicas(cluster, queue, {A, B, C})["leader"]
    publisher = next(n for n in cluster if n.name != leader)
    conn = connect(publisher)
    bodies = [b"held-%d" % i for i in range(40)]
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        for body in bodies[:20]:
            ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2), mandatory=True)
        node_named(cluster, leader).kill()
        # No nack: publishes forwarded to the lost leader, and those made before a new one is
        # known, wait for it (2 s at most) and are confirmed by it.
        for body in bodies[20:]:
            ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2), mandatory=True)
    finally:
        if conn.is_open:
            conn.close()
    got = drain(publisher, queue, len(bodies))
    assert set(bodies) <= {body for body, _ in got}
    node_named(cluster, leader).start()
    wait_replicas(cluster, queue, {A, B, C}, timeout=60)


@pytest.mark.parametrize("first, second, text", [
    ({}, {"x-queue-type": "quorum"},
     "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue '{q}' in vhost '/': "
     "received the value 'quorum' of type 'longstr' but current is none"),
    ({"x-queue-type": "quorum"}, {"x-queue-type": "classic"},
     "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue '{q}' in vhost '/': "
     "received 'classic' but current is 'quorum'"),
    ({"x-queue-type": "quorum"}, {},
     "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue '{q}' in vhost '/': "
     "received none but current is the value 'quorum' of type 'longstr'"),
], ids=["classic-to-quorum", "quorum-to-classic", "quorum-to-none"])
def test_a_queues_type_cannot_change(cluster: list[NodeProcess], request: pytest.FixtureRequest,
                                     first: dict, second: dict, text: str) -> None:
    a, b, _ = cluster
    queue = "type." + request.node.callspec.id
    declare(a, queue, **first)
    conn = connect(b)
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            conn.channel().queue_declare(queue, durable=True, arguments=second)
        assert refused.value.args == (406, text.format(q=queue))
    finally:
        if conn.is_open:
            conn.close()


def test_exactly_replaces_a_replica_whose_node_stays_down() -> None:
    """Four nodes, ha-mode exactly 3: one replica's node stays down past the delay (2 s
    here); the queue gets a replica on the fourth node and keeps every confirmed message."""
    names = ("ra@localhost", "rb@localhost", "rc@localhost", "rd@localhost")
    nodes = start_cluster(names, extra_env={"LEVERET_MIRROR_REPLACEMENT_DELAY": "2"})
    try:
        first = nodes[0]
        set_policy(first, "three", r"^three\.", '{"ha-mode":"exactly","ha-params":3,"ha-sync-mode":"automatic"}')
        queue = "three.q"
        declare(first, queue)
        row = wait_for(lambda: (r := replica_row(first, queue)) and len(r["replicas"]) == 3 and r,
                       what="3 replicas")
        replicas = set(row["replicas"])
        wait_replicas(nodes, queue, replicas)
        bodies = [b"kept-%d" % i for i in range(30)]
        publish_confirmed(first, queue, bodies)
        victim = next(n for n in nodes if n.name in replicas and n.name != row["leader"])
        victim.kill()
        spare = next(n.name for n in nodes if n.name not in replicas)
        expected = replicas - {victim.name} | {spare}
        survivors = [n for n in nodes if n is not victim]
        wait_replicas(survivors, queue, expected, timeout=60)
        got = drain(node_named(nodes, spare), queue, len(bodies))
        assert sorted({body for body, _ in got}) == sorted(bodies)
    finally:
        stop_all(nodes)
