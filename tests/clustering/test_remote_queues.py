"""Any node serves any queue: a queue declared on node a, published to on node b and consumed
on node c, with confirms, manual acks, prefetch, requeues, cancels and nodes killed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
import pytest

from tests.clustering.test_join_and_metadata import known_everywhere
from tests.support.cluster import NAMES, joined_cluster
from tests.ctl.support import connect, ok, wait_until
from tests.support.node_process import NodeProcess


@pytest.fixture
def cluster() -> Iterator[list[NodeProcess]]:
    # Afterwards: the queue traffic never failed on a node (a cast handler's exception is
    # only logged, and a traceback in a log fails the test).
    with joined_cluster([NodeProcess(name=n) for n in NAMES]) as nodes:
        yield nodes


def declare_durable(cluster: list[NodeProcess], queue: str) -> None:
    """Declare `queue` on the first node (its home) and wait until every node knows it."""
    conn = connect(cluster[0])
    conn.channel().queue_declare(queue, durable=True)
    conn.close()
    known_everywhere(cluster, queue)


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


def consume_unacked(node: NodeProcess, queue: str, prefetch: int, count: int,
                    ) -> tuple[pika.BlockingConnection, BlockingChannel, Received]:
    """A consumer on `node` with manual acks and `prefetch`, once it holds `count` deliveries."""
    conn = connect(node)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=prefetch)
    got = Received()
    ch.basic_consume(queue, got)
    pump(conn, lambda: len(got.deliveries) >= count)
    return conn, ch, got


def test_declare_on_one_publish_on_another_consume_on_a_third(cluster: list[NodeProcess]) -> None:
    a, b, c = cluster
    declare_durable(cluster, "q")
    bodies = [b"m%03d" % i for i in range(100)]
    publish_confirmed(b, "q", bodies)
    wait_until(lambda: ready_on(a, "q") == 100)

    conn_c, ch, got = consume_unacked(c, "q", prefetch=10, count=10)
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
    known_everywhere(cluster, "q2")
    publish_confirmed(b, "q2", [b"a", b"b", b"c"])
    conn_c, ch, got = consume_unacked(c, "q2", prefetch=2, count=2)
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
    declare_durable(cluster, "q3")
    publish_confirmed(b, "q3", [b"%d" % i for i in range(5)])
    held = consume_unacked(c, "q3", prefetch=3, count=3)  # kept open until the node dies
    wait_until(lambda: ready_on(a, "q3") == 2)
    c.kill()
    wait_until(lambda: ready_on(a, "q3") == 5, 30)
    assert held[2].bodies == [b"0", b"1", b"2"]


def test_a_publish_whose_home_node_was_killed_is_nacked(cluster: list[NodeProcess]) -> None:
    a, b, c = cluster
    declare_durable(cluster, "q4")
    conn_b = connect(b)
    ch = conn_b.channel()
    ch.confirm_delivery()
    ch.basic_publish("", "q4", b"before", pika.BasicProperties(delivery_mode=2))
    a.kill()
    with pytest.raises((pika.exceptions.NackError, pika.exceptions.ChannelClosedByBroker)):
        for _ in range(20):
            ch.basic_publish("", "q4", b"after", pika.BasicProperties(delivery_mode=2))
            time.sleep(0.1)
    # The queue answers as RabbitMQ's does while its home node is down.
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as down:
        conn_b.channel().basic_get("q4")
    assert down.value.reply_code == 404
    assert down.value.reply_text == ("NOT_FOUND - home node 'a@localhost' of durable queue 'q4' in vhost '/' "
                                     "is down or inaccessible")
    conn_b.close()


def test_consumer_semantics_are_the_home_nodes(cluster: list[NodeProcess]) -> None:
    """Exclusive consumers, single active consumer and consumer priorities hold across nodes,
    and a home node's refusal of a publish (reject-publish overflow) is a nack on the other."""
    a, b, c = cluster
    conn_a = connect(a)
    ch_a = conn_a.channel()
    ch_a.queue_declare("excl")
    ch_a.queue_declare("sac", arguments={"x-single-active-consumer": True})
    ch_a.queue_declare("prio")
    ch_a.queue_declare("full", arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    known_everywhere(cluster, "excl", "sac", "prio", "full")
    conn_b, conn_c = connect(b), connect(c)

    # Exclusive: held on c, refused on b.
    ch_c = conn_c.channel()
    ch_c.basic_consume("excl", Received(), exclusive=True)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        conn_b.channel().basic_consume("excl", Received())
    assert refused.value.reply_code == 403 and "exclusive use" in refused.value.reply_text

    # Single active consumer: c registered first takes everything; b takes over when c cancels.
    first, second = Received(), Received()
    sac_c = conn_c.channel()
    tag_c = sac_c.basic_consume("sac", first, auto_ack=True)
    pump(conn_c, timeout=0.5)
    sac_b = conn_b.channel()
    sac_b.basic_consume("sac", second, auto_ack=True)
    pump(conn_b, timeout=0.5)
    publish_confirmed(a, "sac", [b"1", b"2"])
    pump(conn_c, lambda: len(first.deliveries) == 2)
    sac_c.basic_cancel(tag_c)
    publish_confirmed(a, "sac", [b"3"])
    pump(conn_b, lambda: len(second.deliveries) == 1)
    assert first.bodies == [b"1", b"2"] and second.bodies == [b"3"]

    # Priorities: the higher-priority consumer (on c) gets all while it has credit.
    high, low = Received(), Received()
    conn_c.channel().basic_consume("prio", high, auto_ack=True, arguments={"x-priority": 10})
    conn_b.channel().basic_consume("prio", low, auto_ack=True)
    pump(conn_c, timeout=0.5)
    pump(conn_b, timeout=0.5)
    publish_confirmed(a, "prio", [b"%d" % i for i in range(10)])
    pump(conn_c, lambda: len(high.deliveries) == 10)
    pump(conn_b, timeout=0.5)
    assert low.deliveries == []

    # The home node refuses the second message: the publisher on b gets a nack.
    ch_b = conn_b.channel()
    ch_b.confirm_delivery()
    ch_b.basic_publish("", "full", b"fits")
    with pytest.raises(pika.exceptions.NackError):
        ch_b.basic_publish("", "full", b"refused")
    for conn in (conn_a, conn_b, conn_c):
        conn.close()


def test_dead_letters_travel_to_a_queue_on_another_node(cluster: list[NodeProcess]) -> None:
    a, b, c = cluster
    conn_c = connect(c)
    conn_c.channel().queue_declare("dlq")
    conn_a = connect(a)
    conn_a.channel().queue_declare("src", arguments={"x-dead-letter-exchange": "",
                                                     "x-dead-letter-routing-key": "dlq"})
    known_everywhere(cluster, "dlq", "src")
    publish_confirmed(b, "src", [b"rejected"])
    conn_b = connect(b)
    ch = conn_b.channel()
    method, _, body = ch.basic_get("src")
    assert body == b"rejected"
    ch.basic_reject(method.delivery_tag, requeue=False)
    conn_a.channel().basic_publish("", "src", b"ttl", pika.BasicProperties(expiration="0"))
    wait_until(lambda: ready_on(c, "dlq") == 2)
    got = [conn_c.channel().basic_get("dlq", auto_ack=True) for _ in range(2)]
    # The reject travels from b and the expiring publish from a client of a: no order between them.
    deaths = {body: props.headers["x-death"][0] for _, props, body in got}
    assert {body: (d["reason"], d["queue"]) for body, d in deaths.items()} == {
        b"rejected": ("rejected", "src"), b"ttl": ("expired", "src")}
    for conn in (conn_a, conn_b, conn_c):
        conn.close()


def test_a_queue_placed_on_another_node_is_used_at_once(cluster: list[NodeProcess]) -> None:
    """Declared through b and homed on c by its locator argument, a queue takes a publish made
    on b right after declare-ok, though c may apply the declare after b: c waits for its
    metadata to catch up with b's before it serves what b sends."""
    a, b, c = cluster
    for node, pad in ((a, "pad-a"), (b, "pad-b")):
        conn = connect(node)
        conn.channel().queue_declare(pad)
        conn.close()
    known_everywhere(cluster, "pad-a", "pad-b")
    conn_b = connect(b)
    ch = conn_b.channel()
    ch.confirm_delivery()
    for i in range(5):
        name = f"placed-{i}"
        # min-masters: a and b lead one queue each, c none (then ties go to the lowest name).
        ch.queue_declare(name, arguments={"x-queue-master-locator": "min-masters"})
        ch.basic_publish("", name, b"at once", pika.BasicProperties(delivery_mode=2))
        assert ch.basic_get(name, auto_ack=True)[2] == b"at once"
    conn_b.close()
    homes = json.loads(ok(b, "list_queues", "name", "pid", "--formatter", "json").out)
    assert {q["name"]: q["pid"].split(".")[0] for q in homes}["placed-0"] == "<c@localhost"


def test_an_auto_ack_consumer_on_another_node_gets_more_than_one_credit_window(
        cluster: list[NodeProcess]) -> None:
    """A consumer with no prefetch limit is given credit for UNLIMITED_WINDOW deliveries ahead;
    no ack renews it, so the deliveries themselves must (it stalled after the first 1,000)."""
    from broker.remote_queue import UNLIMITED_WINDOW

    a, b, _ = cluster
    declare_durable(cluster, "q.auto")
    total = 3 * UNLIMITED_WINDOW + 17
    bodies = [b"m%05d" % i for i in range(total)]
    publish_confirmed(a, "q.auto", bodies)
    conn = connect(b)
    ch = conn.channel()
    got = Received()
    ch.basic_consume("q.auto", got, auto_ack=True)
    pump(conn, lambda: len(got.deliveries) >= total, timeout=30)
    assert got.bodies == bodies
    conn.close()
    wait_until(lambda: ready_on(a, "q.auto") == 0)
