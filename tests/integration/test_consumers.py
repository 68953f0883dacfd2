"""Consumers and acknowledgements: round robin, prefetch (per consumer and global),
consumer priorities, exclusive consumers, server-sent basic.cancel, basic.get,
basic.recover, requeue on channel/connection close, and delivery-tag errors."""

from __future__ import annotations

import time

import pika
import pytest

from tests.integration.conftest import (
    amqp_url_one_node_or_across_nodes,
    channel_error, connect, connection_error, drain, message_count, unique, wait_until,
)

# Every test here runs on one node, and again with queues homed on either of two nodes.
amqp_url = amqp_url_one_node_or_across_nodes


def _pump(conn, until, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.02)
    return until()


def _publish(conn, q, bodies):
    ch = conn.channel()
    for b in bodies:
        ch.basic_publish("", q, b)
    ch.close()


def test_round_robin_between_consumers(conn, ch):
    q = unique("rr")
    ch.queue_declare(q)
    got: dict[int, list[bytes]] = {1: [], 2: [], 3: []}
    for i in got:
        ch.basic_consume(q, lambda c, m, p, b, i=i: got[i].append(b), auto_ack=True)
    _publish(conn, q, [str(n).encode() for n in range(9)])
    assert _pump(conn, lambda: sum(map(len, got.values())) == 9)
    assert got == {1: [b"0", b"3", b"6"], 2: [b"1", b"4", b"7"], 3: [b"2", b"5", b"8"]}
    ch.queue_delete(q)


def test_prefetch_per_consumer(conn):
    ch = conn.channel()
    q = unique("qos")
    ch.queue_declare(q)
    _publish(conn, q, [b"m"] * 10)
    ch.basic_qos(prefetch_count=2)  # global=false: each consumer created afterwards gets 2
    got: dict[int, list] = {1: [], 2: []}
    for i in got:
        ch.basic_consume(q, lambda c, m, p, b, i=i: got[i].append(m))
    _pump(conn, lambda: False, timeout=0.3)
    assert [len(v) for v in got.values()] == [2, 2]
    ch.basic_ack(got[1][0].delivery_tag)
    assert _pump(conn, lambda: len(got[1]) == 3)
    _pump(conn, lambda: False, timeout=0.1)
    assert [len(v) for v in got.values()] == [3, 2]
    ch.queue_delete(q)


def test_prefetch_global_limits_the_channel(conn):
    ch = conn.channel()
    q = unique("qosg")
    ch.queue_declare(q)
    _publish(conn, q, [b"m"] * 10)
    ch.basic_qos(prefetch_count=3, global_qos=True)
    got: list = []
    for _ in range(2):
        ch.basic_consume(q, lambda c, m, p, b: got.append(m))
    _pump(conn, lambda: False, timeout=0.3)
    assert len(got) == 3
    ch.basic_ack(got[-1].delivery_tag, multiple=True)
    assert _pump(conn, lambda: len(got) == 6)
    _pump(conn, lambda: False, timeout=0.1)
    assert len(got) == 6
    ch.queue_delete(q)


def test_prefetch_applies_to_consumers_created_after_it(conn):
    ch = conn.channel()
    q = unique("qos-late")
    ch.queue_declare(q)
    _publish(conn, q, [b"m"] * 6)
    got: list = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(m))  # unlimited
    assert _pump(conn, lambda: len(got) == 6)
    ch.queue_delete(q)


def test_consumer_priorities(conn):
    ch = conn.channel()
    q = unique("cprio")
    ch.queue_declare(q)
    ch.basic_qos(prefetch_count=2)
    got: dict[str, list] = {"low": [], "high": []}
    ch.basic_consume(q, lambda c, m, p, b: got["low"].append(m), arguments={"x-priority": 1})
    ch.basic_consume(q, lambda c, m, p, b: got["high"].append(m), arguments={"x-priority": 10})
    _publish(conn, q, [str(i).encode() for i in range(3)])
    assert _pump(conn, lambda: len(got["low"]) + len(got["high"]) == 3)
    # The high-priority consumer takes what its prefetch allows; only the overflow goes low.
    assert (len(got["high"]), len(got["low"])) == (2, 1)
    ch.queue_delete(q)


def test_consumer_priority_must_be_an_integer(conn, ch):
    q = unique("cprio-bad")
    ch.queue_declare(q)
    code, text = channel_error(lambda: ch.basic_consume(q, lambda *a: None, arguments={"x-priority": "high"}))
    assert (code, text) == (406, f"PRECONDITION_FAILED - invalid arg 'x-priority' for queue '{q}' in vhost '/': "
                                 "\"expected integer, got longstr\"")
    conn.channel().queue_delete(q)


def test_exclusive_consumer(amqp_url, conn):
    ch = conn.channel()
    q = unique("xcons")
    ch.queue_declare(q)
    tag = ch.basic_consume(q, lambda *a: None, exclusive=True)
    other = connect(amqp_url)
    try:
        code, text = channel_error(lambda: other.channel().basic_consume(q, lambda *a: None))
        assert (code, text) == (403, f"ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use")
        ch.basic_cancel(tag)
        ch.basic_consume(q, lambda *a: None)  # a plain consumer now
        code, text = channel_error(lambda: other.channel().basic_consume(q, lambda *a: None, exclusive=True))
        assert (code, text) == (403, f"ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use")
    finally:
        other.close()
    ch.queue_delete(q)


def test_duplicate_consumer_tag_is_a_connection_error(amqp_url):
    # pika refuses a duplicate tag itself; py-amqp sends what it is told.
    import amqp

    p = pika.URLParameters(amqp_url)
    c = amqp.Connection(f"{p.host}:{p.port}", userid="guest", password="guest")
    c.connect()
    try:
        ch = c.channel()
        q = ch.queue_declare("", exclusive=True).queue
        ch.basic_consume(q, consumer_tag="same")
        with pytest.raises(amqp.exceptions.NotAllowed) as info:
            ch.basic_consume(q, consumer_tag="same")
        assert (info.value.reply_code, info.value.reply_text) == \
            (530, "NOT_ALLOWED - attempt to reuse consumer tag 'same'")
    finally:
        c.collect()


def test_server_cancels_consumers_of_a_deleted_queue(conn):
    ch = conn.channel()
    q = unique("cancelled")
    ch.queue_declare(q)
    cancelled: list = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    tag = ch.basic_consume(q, lambda *a: None)
    conn.channel().queue_delete(q)
    assert _pump(conn, lambda: cancelled)
    assert cancelled == [tag]
    # The channel stays usable.
    ch.queue_declare(q)
    ch.queue_delete(q)


def test_basic_get_and_get_empty(conn, ch):
    q = unique("get")
    ch.queue_declare(q)
    assert ch.basic_get(q) == (None, None, None)
    _publish(conn, q, [b"a", b"b", b"c"])
    wait_until(lambda: message_count(conn, q) == 3)
    method, props, body = ch.basic_get(q)
    assert (body, method.message_count, method.redelivered, method.exchange, method.routing_key) == \
        (b"a", 2, False, "", q)
    ch.basic_ack(method.delivery_tag)
    method, _p, body = ch.basic_get(q, auto_ack=True)
    assert (body, method.message_count) == (b"b", 1)
    method, _p, _b = ch.basic_get(q)
    ch.basic_reject(method.delivery_tag, requeue=True)
    method, _p, body = ch.basic_get(q, auto_ack=True)
    assert (body, method.redelivered) == (b"c", True)
    assert ch.basic_get(q) == (None, None, None)
    ch.queue_delete(q)


def test_nack_requeue_returns_to_the_head_flagged_redelivered(conn, ch):
    q = unique("nack")
    ch.queue_declare(q)
    _publish(conn, q, [b"1", b"2", b"3"])
    wait_until(lambda: message_count(conn, q) == 3)
    m1 = ch.basic_get(q)[0]
    m2 = ch.basic_get(q)[0]
    ch.basic_nack(m2.delivery_tag, multiple=True, requeue=True)
    got = [ch.basic_get(q, auto_ack=True) for _ in range(3)]
    assert [(b, m.redelivered) for m, _p, b in got] == [(b"1", True), (b"2", True), (b"3", False)]
    assert m1.delivery_tag < m2.delivery_tag
    ch.queue_delete(q)


def test_ack_multiple(conn, ch):
    q = unique("ackmulti")
    ch.queue_declare(q)
    _publish(conn, q, [b"1", b"2", b"3"])
    wait_until(lambda: message_count(conn, q) == 3)
    tags = [ch.basic_get(q)[0].delivery_tag for _ in range(3)]
    ch.basic_ack(tags[1], multiple=True)
    ch.close()
    # Only the third was unacked: it alone comes back.
    ch = conn.channel()
    wait_until(lambda: message_count(conn, q) == 1)
    assert drain(ch, q) == [b"3"]
    ch.queue_delete(q)


def test_basic_recover_redelivers_unacked(conn):
    ch = conn.channel()
    q = unique("recover")
    ch.queue_declare(q)
    got: list = []
    ch.basic_consume(q, lambda c, m, p, b: got.append((m, b)))
    _publish(conn, q, [b"1", b"2"])
    assert _pump(conn, lambda: len(got) == 2)
    ch.basic_recover(requeue=True)
    assert _pump(conn, lambda: len(got) == 4)
    assert [(b, m.redelivered) for m, b in got] == [(b"1", False), (b"2", False), (b"1", True), (b"2", True)]
    ch.basic_ack(got[-1][0].delivery_tag, multiple=True)
    ch.queue_delete(q)


def test_basic_recover_without_requeue_is_not_implemented(amqp_url):
    c = connect(amqp_url)
    ch = c.channel()
    code, text = connection_error(lambda: ch.basic_recover(requeue=False))
    assert (code, text) == (540, "NOT_IMPLEMENTED - requeue=false")


@pytest.mark.parametrize("close", ["channel", "connection"])
def test_unacked_messages_return_in_order_flagged_redelivered(amqp_url, conn, close):
    q = unique("requeue")
    conn.channel().queue_declare(q)
    _publish(conn, q, [str(i).encode() for i in range(5)])
    wait_until(lambda: message_count(conn, q) == 5)
    consumer = connect(amqp_url)
    cch = consumer.channel()
    got: list = []
    cch.basic_consume(q, lambda c, m, p, b: got.append(b))
    assert _pump(consumer, lambda: len(got) == 5)
    cch.basic_ack(2)  # "1" is done; the rest were never acked
    if close == "channel":
        cch.close()
    else:
        consumer.close()
    ch = conn.channel()
    wait_until(lambda: message_count(conn, q) == 4)
    got = [ch.basic_get(q, auto_ack=True) for _ in range(4)]
    assert [(b, m.redelivered) for m, _p, b in got] == [(b"0", True), (b"2", True), (b"3", True), (b"4", True)]
    if consumer.is_open:
        consumer.close()
    ch.queue_delete(q)


def test_requeued_messages_go_to_another_consumer(amqp_url, conn):
    q = unique("handover")
    ch = conn.channel()
    ch.queue_declare(q)
    first = connect(amqp_url)
    fch = first.channel()
    fch.basic_qos(prefetch_count=1)
    held: list = []
    fch.basic_consume(q, lambda c, m, p, b: held.append(b))
    _publish(conn, q, [b"job"])
    assert _pump(first, lambda: held)
    got: list = []
    ch.basic_consume(q, lambda c, m, p, b: got.append((b, m.redelivered)), auto_ack=True)
    first.close()
    assert _pump(conn, lambda: got)
    assert got == [(b"job", True)]
    ch.queue_delete(q)


@pytest.mark.parametrize("settle", ["ack", "reject", "nack"])
def test_unknown_delivery_tag(conn, settle):
    ch = conn.channel()
    actions = {
        "ack": lambda: ch.basic_ack(99),
        "reject": lambda: ch.basic_reject(99),
        "nack": lambda: ch.basic_nack(99),
    }

    def act():
        actions[settle]()
        ch.basic_qos(prefetch_count=0)

    assert channel_error(act) == (406, "PRECONDITION_FAILED - unknown delivery tag 99")


def test_double_ack_is_an_unknown_delivery_tag(conn, ch):
    q = unique("dblack")
    ch.queue_declare(q)
    ch.basic_publish("", q, b"m")
    method = wait_until(lambda: ch.basic_get(q)[0])
    ch.basic_ack(method.delivery_tag)

    def again():
        ch.basic_ack(method.delivery_tag)
        ch.basic_qos(prefetch_count=0)

    assert channel_error(again) == (406, f"PRECONDITION_FAILED - unknown delivery tag {method.delivery_tag}")
    conn.channel().queue_delete(q)


def test_ack_on_another_channel_is_unknown(conn, ch):
    q = unique("otherch")
    ch.queue_declare(q)
    ch.basic_publish("", q, b"m")
    method = wait_until(lambda: ch.basic_get(q)[0])
    other = conn.channel()

    def ack_elsewhere():
        other.basic_ack(method.delivery_tag)
        other.basic_qos(prefetch_count=0)

    assert channel_error(ack_elsewhere) == (406, f"PRECONDITION_FAILED - unknown delivery tag {method.delivery_tag}")
    ch.queue_delete(q)


def test_auto_ack_consumer_needs_no_acks(conn):
    ch = conn.channel()
    q = unique("noack")
    ch.queue_declare(q)
    got: list = []
    tag = ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    _publish(conn, q, [b"1", b"2"])
    assert _pump(conn, lambda: len(got) == 2)
    ch.basic_cancel(tag)
    ch.close()
    time.sleep(0.05)
    assert message_count(conn, q) == 0
    conn.channel().queue_delete(q)


def test_deliveries_of_a_cancelled_consumer_can_still_be_acked(conn):
    ch = conn.channel()
    q = unique("ack-after-cancel")
    ch.queue_declare(q)
    got: list = []
    tag = ch.basic_consume(q, lambda c, m, p, b: got.append(m))
    _publish(conn, q, [b"1", b"2", b"3"])
    assert _pump(conn, lambda: len(got) == 3)
    ch.basic_cancel(tag)
    ch.basic_ack(got[-1].delivery_tag, multiple=True)
    ch.close()
    time.sleep(0.05)
    assert message_count(conn, q) == 0
    conn.channel().queue_delete(q)


def test_ack_multiple_spans_queues_consumed_on_one_channel(conn):
    ch = conn.channel()
    qa, qb = unique("span-a"), unique("span-b")
    for q in (qa, qb):
        ch.queue_declare(q)
    got: list = []
    ch.basic_consume(qa, lambda c, m, p, b: got.append(m))
    ch.basic_consume(qb, lambda c, m, p, b: got.append(m))
    _publish(conn, qa, [b"a1", b"a2"])
    _publish(conn, qb, [b"b1", b"b2"])
    assert _pump(conn, lambda: len(got) == 4)
    ch.basic_ack(max(m.delivery_tag for m in got), multiple=True)
    ch.close()
    time.sleep(0.05)
    assert (message_count(conn, qa), message_count(conn, qb)) == (0, 0)
    for q in (qa, qb):
        conn.channel().queue_delete(q)


def test_nack_multiple_without_requeue_dead_letters_per_queue(conn):
    ch = conn.channel()
    dlq = unique("dlq")
    ch.queue_declare(dlq)
    qa, qb = unique("dl-a"), unique("dl-b")
    ch.queue_declare(qa, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
    ch.queue_declare(qb)  # no dead-letter exchange: dropped
    _publish(conn, qa, [b"a"])
    _publish(conn, qb, [b"b"])
    wait_until(lambda: message_count(conn, qa) == 1 and message_count(conn, qb) == 1)
    ch.basic_get(qa)
    last = ch.basic_get(qb)[0]
    ch.basic_nack(last.delivery_tag, multiple=True, requeue=False)
    wait_until(lambda: message_count(conn, dlq) == 1)
    assert drain(ch, dlq) == [b"a"]
    assert (message_count(conn, qa), message_count(conn, qb)) == (0, 0)
    for q in (qa, qb, dlq):
        ch.queue_delete(q)


def test_nowait_methods_get_no_reply(amqp_url):
    """py-amqp can send nowait declares, binds and consumes; a reply would desynchronise it."""
    import amqp

    p = pika.URLParameters(amqp_url)
    c = amqp.Connection(f"{p.host}:{p.port}", userid="guest", password="guest")
    c.connect()
    try:
        ch = c.channel()
        q, ex = unique("nowait-q"), unique("nowait-x")
        ch.exchange_declare(ex, "direct", auto_delete=False, nowait=True)
        ch.queue_declare(q, auto_delete=False, nowait=True)
        ch.queue_bind(q, ex, "k", nowait=True)
        ch.basic_qos(0, 10, False)
        got: list = []
        ch.basic_consume(q, callback=lambda m: got.append(m.body), no_ack=True, nowait=True, consumer_tag="nw")
        ch.basic_publish(amqp.Message(b"through"), exchange=ex, routing_key="k")
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            try:
                c.drain_events(timeout=0.1)
            except Exception as e:  # socket.timeout
                if "timed out" not in str(e):
                    raise
        assert got == [b"through"]
        ch.basic_cancel("nw")
        assert ch.queue_delete(q) == 0
        ch.exchange_delete(ex)
    finally:
        c.collect()


def test_requeue_restores_original_order_across_channels(amqp_url, conn):
    q = unique("order")
    conn.channel().queue_declare(q)
    _publish(conn, q, [str(i).encode() for i in range(6)])
    wait_until(lambda: message_count(conn, q) == 6)
    consumer = connect(amqp_url)
    got: list = []
    for k in range(2):
        ch = consumer.channel()
        ch.basic_qos(prefetch_count=3)
        ch.basic_consume(q, lambda c, m, p, b, k=k: got.append((k, b)))
    assert _pump(consumer, lambda: len(got) == 6)
    assert sorted(k for k, _b in got) == [0, 0, 0, 1, 1, 1]  # both channels hold some
    consumer.close()
    wait_until(lambda: message_count(conn, q) == 6)
    assert drain(conn.channel(), q) == [str(i).encode() for i in range(6)]
    conn.channel().queue_delete(q)


def test_basic_recover_requeues_basic_get_deliveries(conn):
    ch = conn.channel()
    q = unique("recover-get")
    ch.queue_declare(q)
    _publish(conn, q, [b"1", b"2"])
    wait_until(lambda: message_count(conn, q) == 2)
    ch.basic_get(q)
    ch.basic_get(q)
    ch.basic_recover(requeue=True)
    wait_until(lambda: message_count(conn, q) == 2)
    got = [ch.basic_get(q, auto_ack=True) for _ in range(2)]
    assert [(b, m.redelivered) for m, _p, b in got] == [(b"1", True), (b"2", True)]
    ch.queue_delete(q)


def test_consumer_count_follows_consumers(conn):
    ch = conn.channel()
    q = unique("ccount")
    ch.queue_declare(q)
    tags = [ch.basic_consume(q, lambda *a: None) for _ in range(3)]
    assert ch.queue_declare(q, passive=True).method.consumer_count == 3
    ch.basic_cancel(tags[0])
    assert ch.queue_declare(q, passive=True).method.consumer_count == 2
    other = conn.channel()
    other.basic_consume(q, lambda *a: None)
    other.close()
    assert conn.channel().queue_declare(q, passive=True).method.consumer_count == 2
    ch.queue_delete(q)


def test_a_consumer_that_stops_reading_gets_everything_in_order_later(amqp_url):
    # The consumer's socket fills while publishes keep arriving one small read at a time:
    # deliveries the socket cannot take yet wait (the node writes what fits, early, from the
    # publisher's reader, and leaves the rest to the consumer's writer); nothing is lost or
    # reordered when the consumer reads again.
    q = unique("stalled")
    consumer = connect(amqp_url)
    publisher = connect(amqp_url)
    try:
        cch = consumer.channel()
        cch.queue_declare(q)
        cch.basic_qos(prefetch_count=0)
        got: list[bytes] = []
        cch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
        consumer.process_data_events(time_limit=0.1)  # consume-ok read; now it stops reading
        pch = publisher.channel()
        body = b"x" * 2000
        count = 3000  # ~6 MB: far more than the consumer's socket buffers hold
        for n in range(count):
            pch.basic_publish("", q, n.to_bytes(4, "big") + body)
        assert _pump(consumer, lambda: len(got) == count, timeout=30)
        assert [int.from_bytes(b[:4], "big") for b in got] == list(range(count))
        assert all(b[4:] == body for b in got)
        cch.queue_delete(q)
    finally:
        for c in (consumer, publisher):
            if c.is_open:
                c.close()
