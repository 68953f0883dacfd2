"""kombu (over py-amqp) against a real node: the API Celery is built on.

`SimpleQueue`, `Producer` / `Consumer` with direct and topic exchanges,
`drain_events`, `maybe_declare`, queues with `max_priority` (kombu declares
them with `x-max-priority`), message TTL and reject / requeue.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.common import maybe_declare
from kombu.simple import SimpleQueue

from tests.clients.common import BrokerAddress, unique


@pytest.fixture
def conn(broker: BrokerAddress) -> Iterator[Connection]:
    with Connection(broker.url, connect_timeout=5, transport_options={"confirm_publish": True}) as c:
        c.ensure_connection(max_retries=1)
        yield c


def drain_until(conn: Connection, done: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        left = deadline - time.monotonic()
        assert left > 0, "no message within the time limit"
        try:
            conn.drain_events(timeout=min(left, 0.5))
        except socket.timeout:
            pass


def test_simple_queue_round_trip(conn: Connection) -> None:
    name = unique("kombu-simple")
    q: SimpleQueue = conn.SimpleQueue(name)
    try:
        q.put({"hello": "world", "n": [1, 2, 3]})
        q.put("second", headers={"attempt": 1})
        assert q.qsize() == 2
        m = q.get(block=True, timeout=5)
        assert m.payload == {"hello": "world", "n": [1, 2, 3]}
        assert m.content_type == "application/json"
        m.ack()
        m = q.get(block=True, timeout=5)
        assert m.payload == "second"
        assert m.headers == {"attempt": 1}
        # Requeued (not acked) messages are delivered again.
        m.requeue()
        m = q.get(block=True, timeout=5)
        assert m.payload == "second"
        assert m.delivery_info["redelivered"] is True
        m.ack()
        with pytest.raises(SimpleQueue.Empty):
            q.get(block=False)
        assert q.qsize() == 0
    finally:
        # Closing first cancels the consumer; deleting a consumed queue would
        # (rightly) send the client a basic.cancel.
        q.close()
        conn.default_channel.queue_delete(name)


def test_direct_exchange_producer_consumer(conn: Connection) -> None:
    ex = Exchange(unique("kombu-direct"), type="direct", durable=False, auto_delete=False)
    red = Queue(unique("kombu-red"), ex, routing_key="red", durable=False, auto_delete=False)
    blue = Queue(unique("kombu-blue"), ex, routing_key="blue", durable=False, auto_delete=False)
    got: list[tuple[str, Any]] = []

    def on_message(body: Any, message: Any) -> None:
        got.append((message.delivery_info["routing_key"], body))
        message.ack()

    channel = conn.channel()
    producer = Producer(channel, exchange=ex)
    with Consumer(conn.channel(), queues=[red, blue], callbacks=[on_message], prefetch_count=5):
        for i in range(6):
            producer.publish({"i": i}, routing_key=("red", "blue", "green")[i % 3],
                             declare=[red, blue], retry=False)
        drain_until(conn, lambda: len(got) == 4)
        with pytest.raises(socket.timeout):
            conn.drain_events(timeout=0.3)
    assert sorted(got, key=lambda g: g[1]["i"]) == [
        ("red", {"i": 0}), ("blue", {"i": 1}), ("red", {"i": 3}), ("blue", {"i": 4})]
    red.bind(channel).delete()
    blue.bind(channel).delete()
    ex.bind(channel).delete()


def test_topic_exchange_and_maybe_declare(conn: Connection) -> None:
    ex = Exchange(unique("kombu-topic"), type="topic", durable=True, auto_delete=False)
    logs = Queue(unique("kombu-logs"), ex, routing_key="log.#", durable=True, auto_delete=False)
    errors = Queue(unique("kombu-errors"), ex, routing_key="*.error", durable=True, auto_delete=False)
    channel = conn.channel()
    assert maybe_declare(logs, channel) is True
    assert maybe_declare(errors, channel) is True
    # Cached: kombu does not declare the same entity twice on one connection.
    assert maybe_declare(logs, channel) is False
    producer = Producer(channel, exchange=ex, serializer="json")
    for key in ("log.info", "log.error", "app.error", "app.info.detail", "log.a.b.c"):
        producer.publish({"key": key}, routing_key=key, delivery_mode=2)
    seen: dict[str, list[str]] = {logs.name: [], errors.name: []}

    def collect(queue: Queue) -> Any:
        def on_message(body: Any, message: Any) -> None:
            seen[queue.name].append(body["key"])
            assert message.properties["delivery_mode"] == 2
            message.ack()
        return on_message

    with Consumer(channel, queues=[logs], callbacks=[collect(logs)]), \
            Consumer(channel, queues=[errors], callbacks=[collect(errors)]):
        drain_until(conn, lambda: len(seen[logs.name]) == 3 and len(seen[errors.name]) == 2)
    assert seen == {logs.name: ["log.info", "log.error", "log.a.b.c"], errors.name: ["log.error", "app.error"]}
    # A passive declare of what exists succeeds; of what does not, fails with 404.
    Exchange(ex.name, type="topic", passive=True)(channel).declare()
    from amqp.exceptions import NotFound

    with pytest.raises(NotFound):
        Queue(unique("kombu-absent"))(conn.channel()).queue_declare(passive=True)
    logs(channel).delete()
    errors(channel).delete()
    ex(channel).delete()


def test_max_priority_queue_delivers_highest_first(conn: Connection) -> None:
    q = Queue(unique("kombu-prio"), max_priority=10, durable=False, auto_delete=False)
    channel = conn.channel()
    bound = q(channel)
    bound.declare()
    producer = Producer(channel)
    for prio in (1, 5, 10, 0, 5, 12):
        producer.publish({"p": prio}, routing_key=q.name, priority=prio)
    order = []
    while (m := bound.get(no_ack=True)) is not None:
        order.append(m.payload["p"])
    # Above the maximum counts as the maximum; equal priorities keep publish order.
    assert order == [10, 12, 5, 5, 1, 0]
    # Redeclaring with another maximum is refused with RabbitMQ's text.
    from amqp.exceptions import PreconditionFailed

    with pytest.raises(PreconditionFailed) as info:
        Queue(q.name, max_priority=3, durable=False, auto_delete=False)(conn.channel()).declare()
    assert info.value.reply_text == (
        f"PRECONDITION_FAILED - inequivalent arg 'x-max-priority' for queue '{q.name}' in vhost '/': "
        "received '3' but current is '10'")
    bound.delete()


def test_message_ttl_and_dead_letter_exchange(conn: Connection) -> None:
    dlx = Exchange(unique("kombu-dlx"), type="fanout", durable=False, auto_delete=False)
    dead = Queue(unique("kombu-dead"), dlx, durable=False, auto_delete=False)
    short = Queue(unique("kombu-short"), durable=False, auto_delete=False, message_ttl=0.1,
                  queue_arguments={"x-dead-letter-exchange": dlx.name})
    channel = conn.channel()
    dead(channel).declare()
    short(channel).declare()
    Producer(channel).publish("expires", routing_key=short.name)
    deadline = time.monotonic() + 5
    while (m := dead(channel).get(no_ack=True)) is None:
        assert time.monotonic() < deadline, "message did not expire to the dead-letter queue"
        time.sleep(0.05)
    assert m.payload == "expires"
    death = m.headers["x-death"][0]
    assert (death["reason"], death["queue"], death["count"]) == ("expired", short.name, 1)
    assert short(channel).get(no_ack=True) is None
    short(channel).delete()
    dead(channel).delete()
    dlx(channel).delete()


def test_reject_without_requeue_drops(conn: Connection) -> None:
    q = Queue(unique("kombu-reject"), durable=False, auto_delete=False)
    channel = conn.channel()
    q(channel).declare()
    Producer(channel).publish("a", routing_key=q.name)
    got: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        got.append(body)
        message.reject()

    with Consumer(channel, queues=[q], callbacks=[on_message]):
        drain_until(conn, lambda: got)
    assert got == ["a"]
    assert q(channel).queue_declare(passive=True).message_count == 0
    q(channel).delete()
