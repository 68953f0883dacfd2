"""Any node serves any queue: a queue declared on node a, published to on node b and consumed
on node c, with confirms, manual acks, prefetch, requeues, cancels and nodes killed."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pika
import pika.exceptions
import pytest

from tests.clustering.test_join_and_metadata import NAMES, join
from tests.ctl.support import connect, wait_until
from tests.support.node_process import NodeProcess


@pytest.fixture
def cluster() -> Iterator[list[NodeProcess]]:
    nodes = [NodeProcess(name=n) for n in NAMES]
    try:
        for n in nodes:
            n.start()
        a, b, c = nodes
        join(b, a.name)
        join(c, a.name)
        yield nodes
    finally:
        for n in nodes:
            n.stop()


def ready_on(node: NodeProcess, queue: str) -> int:
    conn = connect(node)
    try:
        return conn.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        conn.close()


def publish_confirmed(node: NodeProcess, queue: str, bodies: list[bytes]) -> None:
    conn = connect(node)
    ch = conn.channel()
    ch.confirm_delivery()
    for body in bodies:
        ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
    conn.close()


class Received:
    """What a pika consumer got, with its delivery tags, unacknowledged until told."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[int, bytes, bool]] = []
        self.cancelled = False

    def __call__(self, ch: object, method: pika.spec.Basic.Deliver, props: object, body: bytes) -> None:
        self.deliveries.append((method.delivery_tag, body, method.redelivered))

    def on_cancel(self, frame: object) -> None:
        self.cancelled = True

    @property
    def bodies(self) -> list[bytes]:
        return [d[1] for d in self.deliveries]


def pump(conn: pika.BlockingConnection, until: object = None, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.1)
        if until is not None and until():  # type: ignore[operator]
            return
    if until is not None:
        raise AssertionError("condition not met in time")


def test_declare_on_one_publish_on_another_consume_on_a_third(cluster: list[NodeProcess]) -> None:
    a, b, c = cluster
    conn_a = connect(a)
    conn_a.channel().queue_declare("q", durable=True)
    conn_a.close()
    bodies = [b"m%03d" % i for i in range(100)]
    publish_confirmed(b, "q", bodies)
    wait_until(lambda: ready_on(a, "q") == 100)

    conn_c = connect(c)
    ch = conn_c.channel()
    ch.basic_qos(prefetch_count=10)
    got = Received()
    ch.basic_consume("q", got)
    pump(conn_c, lambda: len(got.deliveries) >= 10)
    pump(conn_c, timeout=1.0)
    # Prefetch holds across nodes: never more than 10 unacknowledged at the client.
    assert got.bodies == bodies[:10]
    assert not any(d[2] for d in got.deliveries)
    # Requeue one: it comes back redelivered (ahead of the rest, as RabbitMQ puts it back in place).
    ch.basic_nack(got.deliveries[0][0], requeue=True)
    pump(conn_c, lambda: len(got.deliveries) == 11)
    assert got.deliveries[10][1] == bodies[0] and got.deliveries[10][2]
    # Ack everything as it comes: every message once, in order, the requeued one first.
    for tag, _, _ in got.deliveries[1:]:
        ch.basic_ack(tag)
    acked = len(got.deliveries)

    def ack_new() -> bool:
        nonlocal acked
        for tag, _, _ in got.deliveries[acked:]:
            ch.basic_ack(tag)
        acked = len(got.deliveries)
        return acked >= 101

    pump(conn_c, ack_new, timeout=30)
    assert got.bodies == bodies[:10] + [bodies[0]] + bodies[10:]
    assert [d[2] for d in got.deliveries].count(True) == 1
    wait_until(lambda: ready_on(a, "q") == 0)
    conn_c.close()


def test_closing_the_channel_returns_unacked_and_deleting_cancels(cluster: list[NodeProcess]) -> None:
    a, b, c = cluster
    conn_a = connect(a)
    conn_a.channel().queue_declare("q2", durable=True)
    publish_confirmed(b, "q2", [b"a", b"b", b"c"])
    conn_c = connect(c)
    ch = conn_c.channel()
    ch.basic_qos(prefetch_count=2)
    got = Received()
    ch.basic_consume("q2", got)
    pump(conn_c, lambda: len(got.deliveries) == 2)
    wait_until(lambda: ready_on(a, "q2") == 1)
    ch.close()
    wait_until(lambda: ready_on(a, "q2") == 3)
    # Consume again; the queue deleted on its home node cancels the consumer (basic.cancel).
    ch = conn_c.channel()
    again = Received()
    ch.add_on_cancel_callback(again.on_cancel)
    ch.basic_consume("q2", again, auto_ack=True)
    pump(conn_c, lambda: len(again.deliveries) == 3)
    assert again.bodies == [b"a", b"b", b"c"]
    assert [d[2] for d in again.deliveries] == [True, True, False]  # "c" was never delivered
    conn_a.channel().queue_delete("q2")
    pump(conn_c, lambda: again.cancelled)
    conn_c.close()
    conn_a.close()


def test_killed_consumer_node_returns_its_unacked(cluster: list[NodeProcess]) -> None:
    a, b, c = cluster
    conn_a = connect(a)
    conn_a.channel().queue_declare("q3", durable=True)
    conn_a.close()
    publish_confirmed(b, "q3", [b"%d" % i for i in range(5)])
    conn_c = connect(c)
    ch = conn_c.channel()
    ch.basic_qos(prefetch_count=3)
    got = Received()
    ch.basic_consume("q3", got)
    pump(conn_c, lambda: len(got.deliveries) == 3)
    wait_until(lambda: ready_on(a, "q3") == 2)
    c.kill()
    wait_until(lambda: ready_on(a, "q3") == 5, 30)


def test_a_publish_whose_home_node_was_killed_is_nacked(cluster: list[NodeProcess]) -> None:
    a, b, c = cluster
    conn_a = connect(a)
    conn_a.channel().queue_declare("q4", durable=True)
    conn_a.close()
    conn_b = connect(b)
    ch = conn_b.channel()
    ch.confirm_delivery()
    ch.basic_publish("", "q4", b"before", pika.BasicProperties(delivery_mode=2))
    a.kill()
    with pytest.raises((pika.exceptions.NackError, pika.exceptions.ChannelClosedByBroker)):
        for _ in range(20):
            ch.basic_publish("", "q4", b"after", pika.BasicProperties(delivery_mode=2))
            time.sleep(0.1)
    conn_b.close()
