"""Edge cases of acks, requeues, deletions and limits that clients run into."""

from __future__ import annotations

import time

import pika
import pytest

from tests.integration.conftest import (
    channel_error, connect, connection_error, get_body, message_count, unique, wait_until,
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


def test_max_length_counts_only_ready_messages(conn):
    ch = conn.channel()
    q = unique("maxlen-unacked")
    ch.queue_declare(q, arguments={"x-max-length": 1})
    ch.basic_publish("", q, b"held")
    held = wait_until(lambda: ch.basic_get(q)[0])
    ch.basic_publish("", q, b"ready")
    ch.basic_qos(prefetch_count=0)
    assert message_count(conn, q) == 1
    ch.basic_nack(held.delivery_tag, requeue=True)
    # Requeued past the limit: the head (oldest) is dropped, as drop-head does.
    wait_until(lambda: message_count(conn, q) == 1)
    m, _p, body = ch.basic_get(q, auto_ack=True)
    assert body == b"ready"
    ch.queue_delete(q)


def test_requeued_message_keeps_its_place_in_a_priority_queue(conn):
    ch = conn.channel()
    q = unique("prio-requeue")
    ch.queue_declare(q, arguments={"x-max-priority": 3})
    for body, prio in ((b"low-1", 1), (b"low-2", 1), (b"high", 3)):
        ch.basic_publish("", q, body, pika.BasicProperties(priority=prio))
    ch.basic_qos(prefetch_count=0)
    first = ch.basic_get(q)
    second = ch.basic_get(q)
    assert (first[2], second[2]) == (b"high", b"low-1")
    ch.basic_nack(second[0].delivery_tag, multiple=True, requeue=True)
    got = []
    for _ in range(3):
        got.append(ch.basic_get(q, auto_ack=True)[2])
    assert got == [b"high", b"low-1", b"low-2"]
    ch.queue_delete(q)


def test_prefetch_size_is_not_implemented(amqp_url):
    c = connect(amqp_url)
    ch = c.channel()
    code, text = connection_error(lambda: ch.basic_qos(prefetch_size=1000, prefetch_count=1))
    assert (code, text) == (540, "NOT_IMPLEMENTED - prefetch_size!=0 (1000)")


def test_channel_flow_off_is_not_implemented(amqp_url):
    c = connect(amqp_url)
    ch = c.channel()
    code, text = connection_error(lambda: ch.flow(False))
    assert (code, text) == (540, "NOT_IMPLEMENTED - active=false")


@pytest.mark.parametrize("x_match,routed", [
    # Plain all/any ignore x- arguments of the binding (and extra message headers).
    ("all", [b"plain", b"with-x"]),
    ("any", [b"plain", b"with-x"]),
    ("all-with-x", [b"with-x"]),
    ("any-with-x", [b"plain", b"x-only", b"with-x"]),
])
def test_headers_exchange_x_match_with_x_variants(conn, x_match, routed):
    ch = conn.channel()
    ex = unique("hdrs-x")
    ch.exchange_declare(ex, "headers")
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, ex, arguments={"x-match": x_match, "k": "v", "x-tag": "t"})
    sends = {
        b"plain": {"k": "v"},
        b"x-only": {"x-tag": "t"},
        b"with-x": {"k": "v", "x-tag": "t"},
    }
    for body, headers in sends.items():
        ch.basic_publish(ex, "", body, pika.BasicProperties(headers=headers))
    ch.basic_qos(prefetch_count=0)
    got = []
    while True:
        m, _p, body = ch.basic_get(q, auto_ack=True)
        if m is None:
            break
        got.append(body)
    assert got == routed
    ch.exchange_delete(ex)


def test_exclusive_durable_queue_is_allowed_and_still_exclusive(conn):
    ch = conn.channel()
    q = unique("excl-durable")
    ok = ch.queue_declare(q, exclusive=True, durable=True)
    assert ok.method.queue == q
    other_channel = conn.channel()
    other_channel.queue_declare(q, exclusive=True, durable=True)  # same connection: fine
    ch.queue_delete(q)


def test_many_channels_on_one_connection(conn):
    channels = [conn.channel() for _ in range(50)]
    q = channels[0].queue_declare("", exclusive=True).method.queue
    for i, ch in enumerate(channels):
        ch.basic_publish("", q, str(i).encode())
    channels[0].basic_qos(prefetch_count=0)
    for ch in channels[1:]:
        ch.close()
    got = []
    while True:
        m, _p, body = channels[0].basic_get(q, auto_ack=True)
        if m is None:
            break
        got.append(int(body))
    assert sorted(got) == list(range(50))
