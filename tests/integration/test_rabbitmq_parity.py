"""Cases where Leveret answered differently from RabbitMQ 3.10, found by the seeded
differential test (tests/differential) and pinned here with RabbitMQ's answers. Each test
passes against RabbitMQ too (LEVERET_COMPARE_URL=amqp://guest:guest@127.0.0.1:5690/)."""

from __future__ import annotations

import time

import pika
import pytest

from tests.integration.conftest import channel_error, connect, connection_error, drain, message_count, unique, wait_until


def test_an_empty_queue_name_means_the_queue_this_channel_declared_last(conn):
    ch = conn.channel()
    q = unique("mrdq")
    ch.queue_declare(q)
    # queue.bind with an empty name and routing key: the last queue, bound with its own name.
    ch.queue_bind("", "amq.direct")
    ch.basic_publish("amq.direct", q, b"routed by the queue's name")
    ch.confirm_delivery()
    method, _props, body = ch.basic_get("", auto_ack=True)
    assert body == b"routed by the queue's name"
    ch.basic_publish("", q, b"purged")
    assert ch.queue_purge("").method.message_count == 1
    assert ch.queue_delete("").method.message_count == 0
    check = conn.channel()
    assert channel_error(lambda: check.queue_declare(q, passive=True))[0] == 404


def test_an_empty_queue_name_without_a_declared_queue_is_refused(conn):
    for use in (lambda ch: ch.basic_get("", auto_ack=True),
                lambda ch: ch.queue_bind("", "amq.direct", "k"),
                lambda ch: ch.queue_purge(""),
                lambda ch: ch.queue_delete("")):
        ch = conn.channel()
        assert channel_error(lambda: use(ch)) == (404, "NOT_FOUND - no previously declared queue")


def test_a_bad_publish_in_a_transaction_fails_when_it_arrives(conn):
    ch = conn.channel()
    ch.tx_select()
    missing = unique("no-such-exchange")
    ch.basic_publish(missing, "k", b"never")
    # RabbitMQ closes the channel at the publish, so the next synchronous method meets it.
    assert channel_error(ch.tx_rollback) == (404, f"NOT_FOUND - no exchange '{missing}' in vhost '/'")
    ch = conn.channel()
    ch.tx_select()
    ch.basic_publish("", "k", b"never", pika.BasicProperties(expiration="-1"))
    assert channel_error(ch.tx_commit) == (406, "PRECONDITION_FAILED - invalid expiration '-1': {value_negative,-1}")


def test_redeclaring_a_queue_compares_arguments_before_validating_them(conn):
    ch = conn.channel()
    q = unique("equiv")
    ch.queue_declare(q)
    assert channel_error(lambda: ch.queue_declare(q, arguments={"x-max-priority": 256})) == (
        406, f"PRECONDITION_FAILED - inequivalent arg 'x-max-priority' for queue '{q}' in vhost '/': "
             "received the value '256' of type 'signedint' but current is none")
    conn.channel().queue_delete(q)


def test_another_connections_exclusive_queue_is_locked_whatever_the_arguments(amqp_url, conn):
    ch = conn.channel()
    q = unique("locked")
    ch.queue_declare(q, exclusive=True)
    other = connect(amqp_url)
    try:
        code, text = channel_error(lambda: other.channel().queue_declare(q, arguments={"x-expires": "soon"}))
        assert code == 405 and text.startswith("RESOURCE_LOCKED - cannot obtain exclusive access to locked queue")
    finally:
        other.close()


def test_the_reserved_prefix_is_checked_before_the_arguments(conn):
    ch = conn.channel()
    assert channel_error(lambda: ch.queue_declare("amq.reserved", arguments={"x-expires": 0})) == (
        403, "ACCESS_REFUSED - queue name 'amq.reserved' contains reserved prefix 'amq.*'")


def test_an_unknown_exchange_type_is_refused_before_the_default_exchange_is(amqp_url):
    c = connect(amqp_url)
    try:
        ch = c.channel()
        assert connection_error(lambda: ch.exchange_declare("", exchange_type="x-bogus")) == (
            503, "COMMAND_INVALID - unknown exchange type 'x-bogus'")
    finally:
        if c.is_open:
            c.close()


def test_an_exclusive_queue_is_never_durable(conn):
    ch = conn.channel()
    q = unique("excl-durable")
    ch.queue_declare(q, durable=True, exclusive=True)
    # Declared durable, it is not: a non-durable redeclaration is equivalent.
    ch.queue_declare(q, durable=False, exclusive=True)
    ch.queue_delete(q)


def test_get_ok_counts_what_is_left_after_expired_messages(conn):
    ch = conn.channel()
    q = unique("get-count")
    ch.queue_declare(q)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"kept")
    ch.basic_publish("", q, b"expired", pika.BasicProperties(expiration="0"))
    method, _props, body = ch.basic_get(q, auto_ack=True)
    assert body == b"kept" and method.message_count == 0
    assert ch.basic_get(q, auto_ack=True)[0] is None
    ch.queue_delete(q)


def test_a_full_global_prefetch_holds_back_auto_ack_consumers_of_the_channel_too(amqp_url):
    c = connect(amqp_url)
    try:
        ch = c.channel()
        q = unique("global-full")
        ch.queue_declare(q)
        got: list[tuple[str, bytes]] = []
        ch.basic_consume(q, lambda _c, m, _p, b: got.append(("auto", b)), auto_ack=True)
        ch.basic_consume(q, lambda _c, m, _p, b: got.append(("manual", b)), auto_ack=False)
        ch.basic_qos(prefetch_count=1, global_qos=True)
        pub = c.channel()
        pub.confirm_delivery()
        for n in range(3):
            pub.basic_publish("", q, b"m%d" % n)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            c.process_data_events(time_limit=0.05)
        # Round robin: m0 to the auto-ack consumer, m1 to the manual one, which fills the
        # channel's global prefetch of 1; then m2 waits, for the auto-ack consumer too.
        assert got == [("auto", b"m0"), ("manual", b"m1")]
        assert message_count(c, q) == 1
        ch.queue_delete(q)
    finally:
        if c.is_open:
            c.close()


def test_a_per_consumer_qos_lifts_the_channels_global_limit(amqp_url):
    c = connect(amqp_url)
    try:
        ch = c.channel()
        q = unique("qos-lift")
        ch.queue_declare(q)
        got: list[bytes] = []
        ch.basic_consume(q, lambda _c, m, _p, b: got.append(b), auto_ack=False)
        ch.basic_qos(prefetch_count=2, global_qos=True)
        ch.basic_qos(prefetch_count=1, global_qos=False)  # for later consumers; the global 2 is gone
        pub = c.channel()
        pub.confirm_delivery()
        for n in range(3):
            pub.basic_publish("", q, b"m%d" % n)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and len(got) < 3:
            c.process_data_events(time_limit=0.05)
        assert got == [b"m0", b"m1", b"m2"]
        ch.queue_delete(q)
    finally:
        if c.is_open:
            c.close()


def test_an_exclusive_consumer_of_a_single_active_consumer_queue_is_refused(conn):
    ch = conn.channel()
    q = unique("sac-excl")
    ch.queue_declare(q, auto_delete=True, arguments={"x-single-active-consumer": True})
    # No consumer yet, and still "in exclusive use": single active consumer already decides
    # who receives, so RabbitMQ refuses exclusive consumers on such a queue outright.
    assert channel_error(lambda: ch.basic_consume(q, lambda *_: None, exclusive=True)) == (
        403, f"ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use")
    ch = conn.channel()
    ch.basic_consume(q, lambda *_: None)  # a plain consumer is welcome
    ch.queue_delete(q)


def test_a_transactional_publish_is_routed_when_it_arrives_and_delivered_at_commit(conn):
    ch = conn.channel()
    q, gone, late = unique("tx-route"), unique("tx-gone"), unique("tx-late")
    ch.queue_declare(q)
    for x in (gone, late):
        ch.exchange_declare(x, "fanout")
    ch.queue_bind(q, gone)
    returned: list[str] = []
    ch.add_on_return_callback(lambda _c, m, _p, body: returned.append(body.decode()))
    ch.tx_select()
    ch.basic_publish(gone, "", b"to q")  # routed to q now
    ch.basic_publish(late, "", b"nowhere yet", mandatory=True)  # routed to no queue now
    other = conn.channel()
    other.exchange_delete(gone)
    other.queue_bind(q, late)
    assert message_count(conn, q) == 0  # nothing enqueued before the commit
    ch.tx_commit()
    conn.process_data_events(time_limit=0.2)
    # The exchange deleted since is no error, and the binding made since routes nothing.
    assert drain(ch, q) == [b"to q"]
    assert returned == ["nowhere yet"]
    other.queue_delete(q)
    other.exchange_delete(late)


def test_a_transactional_publish_meets_the_queue_of_its_name_at_commit(conn):
    ch = conn.channel()
    q = unique("tx-recreated")
    ch.queue_declare(q)
    ch.tx_select()
    ch.basic_publish("", q, b"routed to the old queue")
    other = conn.channel()
    other.queue_delete(q)
    other.queue_declare(q, arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    # Routed by name when it arrived, delivered at commit to the queue now bearing that name,
    # which refuses it: the commit fails.
    assert channel_error(ch.tx_commit) == (406, "PRECONDITION_FAILED - partial tx completion")
    other.queue_delete(q)


def test_queue_delete_checks_if_empty_before_if_unused(conn):
    ch = conn.channel()
    q = unique("del-order")
    ch.queue_declare(q)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"keeps it non-empty")
    consumer = conn.channel()
    consumer.basic_qos(prefetch_count=1)
    consumer.basic_consume(q, lambda *_: None)
    ch.basic_publish("", q, b"still ready")  # the consumer holds the first, unacked
    assert channel_error(lambda: ch.queue_delete(q, if_unused=True, if_empty=True)) == (
        406, f"PRECONDITION_FAILED - queue '{q}' in vhost '/' not empty")
    conn.channel().queue_delete(q)


def test_a_deleted_queue_cancels_a_channels_consumers_in_tag_order(conn):
    ch = conn.channel()
    q = unique("cancel-order")
    ch.queue_declare(q)
    cancelled: list[str] = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    for tag in ("c2", "c0", "c1"):
        ch.basic_consume(q, lambda *_: None, consumer_tag=tag)
    conn.channel().queue_delete(q)
    ch.exchange_declare("amq.direct", passive=True)  # a round trip: the cancels came first
    conn.process_data_events(time_limit=0)
    assert cancelled == ["c0", "c1", "c2"]


def test_a_publish_reaches_all_its_queues_before_a_dead_letter_one_of_them_produces(conn):
    ch = conn.channel()
    x, sink = unique("dl-order-x"), unique("dl-order-sink")
    full = [unique("dl-order-full") for _ in range(4)]
    ch.exchange_declare(x, "fanout", auto_delete=True)
    ch.queue_declare(sink)
    for q in full:
        ch.queue_declare(q, arguments={"x-max-length": 0, "x-overflow": "reject-publish-dlx",
                                       "x-dead-letter-exchange": "", "x-dead-letter-routing-key": sink})
        ch.queue_bind(q, x)
    ch.queue_bind(sink, x)
    got = []
    for n in range(2):
        # No confirms: reject-publish-dlx nacks what a full queue refused.
        ch.basic_publish(x, "", b"m%d" % n)
        time.sleep(0.1)  # dead-lettering is asynchronous in RabbitMQ
        while (r := ch.basic_get(sink, auto_ack=True))[0] is not None:
            got.append((r[2], "dead" if r[1].headers else "direct"))
    # Whichever order the exchange's queues come in, the copy straight from the exchange
    # arrives first, then the four dead-lettered by the full queues.
    assert got == [(b"m0", "direct")] + [(b"m0", "dead")] * 4 + [(b"m1", "direct")] + [(b"m1", "dead")] * 4
    for q in full + [sink]:
        ch.queue_delete(q)


def _recover_with_two_consumers(amqp_url: str, prefetch: int, get_first: bool) -> list[tuple[str, bytes]]:
    c = connect(amqp_url)
    try:
        ch = c.channel()
        q = unique("recover-groups")
        ch.queue_declare(q)
        ch.basic_qos(prefetch_count=prefetch)
        if get_first:
            ch.basic_publish("", q, b"g")
            wait_until(lambda: ch.basic_get(q)[0] is not None)
        got: list[tuple[str, bytes]] = []
        for tag in ("c2", "c1"):  # registered c2 first: the requeue order is the tags' order
            ch.basic_consume(q, lambda _c, m, _p, b, tag=tag: got.append((tag, b)), consumer_tag=tag)
        for n in range(4):
            ch.basic_publish("", q, b"m%d" % n)
        wait_until(lambda: c.process_data_events(time_limit=0.02) or len(got) == 4)
        assert got == [("c2", b"m0"), ("c1", b"m1"), ("c2", b"m2"), ("c1", b"m3")]
        got.clear()
        ch.basic_recover(requeue=True)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            c.process_data_events(time_limit=0.05)
        ch.queue_delete(q)
        return got
    finally:
        if c.is_open:
            c.close()


def test_recover_requeues_each_consumers_deliveries_in_turn_by_tag(amqp_url):
    # RabbitMQ's channel hands unacked deliveries back per consumer tag, basic.get ones
    # first, then the consumers in tag order; the queue requeues and delivers each group
    # before the next arrives.
    assert _recover_with_two_consumers(amqp_url, 0, False) == [
        ("c2", b"m1"), ("c1", b"m3"), ("c2", b"m0"), ("c1", b"m2")]
    assert _recover_with_two_consumers(amqp_url, 0, True) == [
        ("c2", b"g"), ("c1", b"m1"), ("c2", b"m3"), ("c1", b"m0"), ("c2", b"m2")]


def test_recover_gives_a_consumers_prefetch_back_when_its_own_deliveries_are_requeued(amqp_url):
    # c1's deliveries are requeued first, while c2 still counts its own two against its
    # prefetch of 2: c1 takes back both of its own, then c2 its own.
    assert _recover_with_two_consumers(amqp_url, 2, False) == [
        ("c1", b"m1"), ("c1", b"m3"), ("c2", b"m0"), ("c2", b"m2")]


def test_a_publish_checks_the_exchange_as_it_is_now_not_as_it_was(amqp_url, conn):
    ch = conn.channel()
    x = unique("redeclared-internal")
    ch.exchange_declare(x, "fanout")
    ch.basic_publish(x, "", b"fine: not internal yet")
    ch.exchange_declare("amq.direct", passive=True)
    other = connect(amqp_url)
    try:
        och = other.channel()
        och.exchange_delete(x)
        och.exchange_declare(x, "fanout", internal=True)
        ch.basic_publish(x, "", b"refused: internal now")
        assert channel_error(lambda: ch.exchange_declare("amq.direct", passive=True)) == (
            403, f"ACCESS_REFUSED - cannot publish to internal exchange '{x}' in vhost '/'")
        och.exchange_delete(x)
    finally:
        other.close()


def test_the_default_exchange_as_an_alternate_exchange_routes_nothing(conn):
    ch = conn.channel()
    x, q = unique("ae-default"), unique("ae-default-q")
    ch.queue_declare(q)
    ch.exchange_declare(x, "direct", auto_delete=True, arguments={"alternate-exchange": ""})
    ch.confirm_delivery()
    # The default exchange routes by queue name only what is published to it directly.
    with pytest.raises(pika.exceptions.UnroutableError):
        ch.basic_publish(x, q, b"unroutable", mandatory=True)
    assert ch.queue_delete(q).method.message_count == 0


def test_a_consumer_that_waited_for_its_acks_rejoins_the_round_robin_at_the_back(amqp_url):
    c = connect(amqp_url)
    try:
        q = unique("rr-unblocked")
        setup = c.channel()
        setup.queue_declare(q)
        got: list[tuple[str, bytes]] = []

        def consumer(tag: str):
            ch = c.channel()
            ch.basic_qos(prefetch_count=1)
            ch.basic_consume(q, lambda _c, m, _p, b: got.append((tag, b)), consumer_tag=tag)
            return ch

        def settle() -> None:
            for _ in range(3):
                setup.queue_declare(q, passive=True)  # a round trip through the queue
            c.process_data_events(time_limit=0.05)

        a = consumer("a")
        setup.basic_publish("", q, b"m0")
        setup.basic_publish("", q, b"m1")  # offered while a is full: a is blocked
        settle()
        assert setup.basic_get(q, auto_ack=True)[2] == b"m1"
        consumer("b")  # registered while a is blocked
        a.basic_ack(delivery_tag=1)  # a has credit again: it rejoins behind b
        settle()
        setup.basic_publish("", q, b"m2")
        settle()
        assert got == [("a", b"m0"), ("b", b"m2")]
        setup.queue_delete(q)
    finally:
        if c.is_open:
            c.close()
