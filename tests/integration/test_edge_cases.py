"""Edge cases of acks, requeues, deletions and limits that clients run into."""

from __future__ import annotations

import time

from tests.integration.conftest import (
    channel_error, connect, get_body, message_count, unique, wait_until,
)


def _pump(conn, until, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.02)
    return until()


def test_ack_after_the_queue_was_deleted_is_harmless(conn):
    ch = conn.channel()
    q = unique("gone")
    ch.queue_declare(q)
    ch.basic_publish("", q, b"m")
    method = wait_until(lambda: ch.basic_get(q)[0])
    conn.channel().queue_delete(q)
    ch.basic_ack(method.delivery_tag)
    ch.basic_qos(prefetch_count=0)
    assert ch.is_open


def test_ack_multiple_with_tag_zero_acks_everything(conn):
    ch = conn.channel()
    q = unique("ackall")
    ch.queue_declare(q)
    for b in (b"1", b"2", b"3"):
        ch.basic_publish("", q, b)
    wait_until(lambda: message_count(conn, q) == 3)
    for _ in range(3):
        ch.basic_get(q)
    ch.basic_ack(0, multiple=True)
    ch.close()
    time.sleep(0.1)
    assert message_count(conn, q) == 0
    conn.channel().queue_delete(q)


def test_reject_requeue_goes_back_to_the_same_prefetch_one_consumer(conn):
    ch = conn.channel()
    q = unique("again")
    ch.queue_declare(q)
    ch.basic_qos(prefetch_count=1)
    got: list = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(m))
    ch.basic_publish("", q, b"m")
    assert _pump(conn, lambda: len(got) == 1)
    ch.basic_reject(got[0].delivery_tag, requeue=True)
    assert _pump(conn, lambda: len(got) == 2)
    assert got[1].redelivered and got[1].delivery_tag == got[0].delivery_tag + 1
    ch.basic_ack(got[1].delivery_tag)
    ch.queue_delete(q)


def test_unacked_message_does_not_expire(conn):
    ch = conn.channel()
    q = unique("ttl-unacked")
    ch.queue_declare(q, arguments={"x-message-ttl": 100})
    ch.basic_publish("", q, b"held")
    method = wait_until(lambda: ch.basic_get(q)[0])
    time.sleep(0.3)
    ch.basic_reject(method.delivery_tag, requeue=True)
    # Requeued past its TTL: RabbitMQ expires it once back in the queue.
    wait_until(lambda: message_count(conn, q) == 0, timeout=3)
    assert ch.basic_get(q)[0] is None
    ch.queue_delete(q)


def test_dead_letter_exchange_that_does_not_exist_drops_the_message(conn):
    ch = conn.channel()
    q = unique("dlx-missing")
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": unique("nowhere")})
    ch.basic_publish("", q, b"m")
    method = wait_until(lambda: ch.basic_get(q)[0])
    ch.basic_reject(method.delivery_tag, requeue=False)
    ch.basic_qos(prefetch_count=0)
    assert message_count(conn, q) == 0
    ch.queue_delete(q)


def test_dead_letter_cycle_without_rejection_is_dropped(conn):
    """Expired in a loop back to its own queue: RabbitMQ drops it rather than cycling forever."""
    ch = conn.channel()
    q = unique("selfloop")
    ch.queue_declare(q, arguments={"x-message-ttl": 20, "x-dead-letter-exchange": ""})
    ch.basic_publish("", q, b"m")
    time.sleep(0.4)
    assert message_count(conn, q) == 0
    ch.queue_delete(q)


def test_rejected_to_itself_cycles_with_counts(conn):
    """A rejection breaks cycle detection: dead-lettering back to the same queue works."""
    ch = conn.channel()
    q = unique("selfreject")
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": ""})
    ch.basic_publish("", q, b"m")
    for attempt in (1, 2):
        method, props, _b = wait_until(lambda: (lambda r: r if r[0] else None)(ch.basic_get(q)))
        if attempt == 2:
            assert props.headers["x-death"][0]["count"] == 1
            assert props.headers["x-death"][0]["reason"] == "rejected"
        ch.basic_reject(method.delivery_tag, requeue=False)
    ch.queue_delete(q)


def test_deleting_a_queue_cancels_consumers_on_other_connections(amqp_url, conn):
    q = unique("cancel-remote")
    conn.channel().queue_declare(q)
    other = connect(amqp_url)
    och = other.channel()
    cancelled: list = []
    och.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    tag = och.basic_consume(q, lambda *a: None)
    conn.channel().queue_delete(q)
    assert _pump(other, lambda: cancelled)
    assert cancelled == [tag]
    other.close()


def test_exclusive_queue_can_be_used_from_another_channel_of_its_connection(conn):
    q = unique("excl-same-conn")
    conn.channel().queue_declare(q, exclusive=True)
    ch = conn.channel()
    ch.basic_publish("", q, b"m")
    assert get_body(ch, q) == b"m"
    ch.queue_delete(q)


def test_durable_topology_survives_restart(fresh_node):
    c = connect(fresh_node.url)
    ch = c.channel()
    ch.exchange_declare("dur-x", "topic", durable=True)
    ch.exchange_declare("tmp-x", "topic", durable=False)
    ch.queue_declare("dur-q", durable=True, arguments={"x-max-length": 5})
    ch.queue_bind("dur-q", "dur-x", "a.#")
    c.close()
    fresh_node.stop()
    fresh_node.start()
    c = connect(fresh_node.url)
    ch = c.channel()
    ch.exchange_declare("dur-x", passive=True)
    ch.queue_declare("dur-q", durable=True, arguments={"x-max-length": 5})
    ch.basic_publish("dur-x", "a.b.c", b"routed")
    assert get_body(ch, "dur-q") == b"routed"
    code, _ = channel_error(lambda: ch.exchange_declare("tmp-x", passive=True))
    assert code == 404
    c.close()
