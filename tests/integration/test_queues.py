"""Queues: declare (durable, transient, exclusive, auto-delete, server-named, passive),
equivalence checks, purge and delete with their counts and preconditions."""

from __future__ import annotations

import time

import pika
import pytest

from tests.integration.conftest import channel_error, connect, drain, message_count, unique, wait_until

LOCKED = ("RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in vhost '/'. It could be "
          "originally declared on another connection or the exclusive property value does not match that "
          "of the original declaration.")


def _gone(conn, queue: str) -> bool:
    try:
        conn.channel().queue_declare(queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker as e:
        if e.reply_code == 404:
            return True
        assert e.reply_code == 405, e
    return False


def test_declare_ok_reports_messages_and_consumers(conn, ch):
    q = unique("counts")
    ok = ch.queue_declare(q)
    assert (ok.method.queue, ok.method.message_count, ok.method.consumer_count) == (q, 0, 0)
    for i in range(3):
        ch.basic_publish("", q, b"m")
    consumer_conn_ch = conn.channel()
    consumer_conn_ch.basic_qos(prefetch_count=1)
    consumer_conn_ch.basic_consume(q, lambda *a: None)
    ok = wait_until(lambda: (lambda o: o if o.method.message_count == 2 else None)(ch.queue_declare(q)))
    assert (ok.method.message_count, ok.method.consumer_count) == (2, 1)
    passive = ch.queue_declare(q, passive=True)
    assert (passive.method.message_count, passive.method.consumer_count) == (2, 1)
    ch.queue_delete(q)


def test_server_named_queues_are_distinct_amq_gen(ch):
    names = {ch.queue_declare("", exclusive=True).method.queue for _ in range(5)}
    assert len(names) == 5
    assert all(n.startswith("amq.gen-") and len(n) > len("amq.gen-") for n in names)


def test_queue_name_with_amq_prefix_is_refused(ch):
    code, text = channel_error(lambda: ch.queue_declare("amq.mine"))
    assert (code, text) == (403, "ACCESS_REFUSED - queue name 'amq.mine' contains reserved prefix 'amq.*'")


def test_passive_declare_of_missing_queue(ch):
    q = unique("missing")
    code, text = channel_error(lambda: ch.queue_declare(q, passive=True))
    assert (code, text) == (404, f"NOT_FOUND - no queue '{q}' in vhost '/'")


@pytest.mark.parametrize("operation", ["purge", "get", "consume"])
def test_operations_on_missing_queue(ch, operation):
    q = unique("missing")
    actions = {
        "purge": lambda: ch.queue_purge(q),
        "get": lambda: ch.basic_get(q),
        "consume": lambda: ch.basic_consume(q, lambda *a: None),
    }
    code, text = channel_error(actions[operation])
    assert (code, text) == (404, f"NOT_FOUND - no queue '{q}' in vhost '/'")


def test_delete_of_missing_queue_and_unbind_of_missing_queue_are_ok(ch):
    assert ch.queue_delete(unique("missing")).method.message_count == 0
    ch.queue_unbind(unique("missing"), "amq.direct", "k")


def test_durable_and_transient_equivalence(conn):
    q = unique("eq")
    ch = conn.channel()
    ch.queue_declare(q)
    ch.queue_declare(q)
    code, text = channel_error(lambda: ch.queue_declare(q, durable=True))
    assert (code, text) == (406, f"PRECONDITION_FAILED - inequivalent arg 'durable' for queue '{q}' in vhost "
                                 "'/': received 'true' but current is 'false'")
    ch = conn.channel()
    code, text = channel_error(lambda: ch.queue_declare(q, auto_delete=True))
    assert (code, text) == (406, f"PRECONDITION_FAILED - inequivalent arg 'auto_delete' for queue '{q}' in "
                                 "vhost '/': received 'true' but current is 'false'")
    ch = conn.channel()
    code, text = channel_error(lambda: ch.queue_declare(q, exclusive=True))
    assert (code, text) == (405, LOCKED.format(q=q))
    conn.channel().queue_delete(q)


def test_argument_equivalence(conn):
    q = unique("eqargs")
    ch = conn.channel()
    ch.queue_declare(q, arguments={"x-message-ttl": 1000})
    ch.queue_declare(q, arguments={"x-message-ttl": 1000})
    code, text = channel_error(lambda: ch.queue_declare(q, arguments={"x-message-ttl": 2000}))
    assert (code, text) == (406, f"PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue '{q}' in "
                                 "vhost '/': received '2000' but current is '1000'")
    ch = conn.channel()
    code, text = channel_error(lambda: ch.queue_declare(q))
    assert (code, text) == (406, f"PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue '{q}' in "
                                 "vhost '/': received none but current is the value '1000' of type 'signedint'")
    ch = conn.channel()
    ch.queue_delete(q)
    ch.queue_declare(q)
    code, text = channel_error(lambda: ch.queue_declare(q, arguments={"x-message-ttl": 2000}))
    assert (code, text) == (406, f"PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue '{q}' in "
                                 "vhost '/': received the value '2000' of type 'signedint' but current is none")
    conn.channel().queue_delete(q)


def test_exclusive_queue_is_locked_for_other_connections(amqp_url, conn):
    owner = conn.channel()
    q = unique("excl")
    owner.queue_declare(q, exclusive=True)
    owner.basic_publish("", q, b"mine")
    other = connect(amqp_url)
    try:
        actions = {
            "declare": lambda ch: ch.queue_declare(q),
            "passive": lambda ch: ch.queue_declare(q, passive=True),
            "consume": lambda ch: ch.basic_consume(q, lambda *a: None),
            "get": lambda ch: ch.basic_get(q),
            "purge": lambda ch: ch.queue_purge(q),
            "delete": lambda ch: ch.queue_delete(q),
        }
        for name, action in actions.items():
            ch = other.channel()
            code, text = channel_error(lambda: action(ch))
            assert (code, text) == (405, LOCKED.format(q=q)), name
        assert other.is_open
    finally:
        other.close()
    # The owner still has it, message and all.
    assert drain(owner, q) == [b"mine"]


def test_exclusive_queue_is_deleted_when_its_connection_closes(amqp_url, conn):
    owner = connect(amqp_url)
    q = unique("excl")
    owner.channel().queue_declare(q, exclusive=True, durable=True)
    assert not _gone(conn, q)
    owner.close()
    wait_until(lambda: _gone(conn, q))


def test_auto_delete_queue_goes_when_its_last_consumer_cancels(conn):
    ch = conn.channel()
    q = unique("autodel")
    ch.queue_declare(q, auto_delete=True)
    # Never consumed from: it stays.
    time.sleep(0.05)
    assert not _gone(conn, q)
    t1 = ch.basic_consume(q, lambda *a: None)
    t2 = ch.basic_consume(q, lambda *a: None)
    ch.basic_cancel(t1)
    assert not _gone(conn, q)
    ch.basic_cancel(t2)
    wait_until(lambda: _gone(conn, q))


def test_auto_delete_queue_goes_when_its_consumer_channel_closes(conn):
    ch = conn.channel()
    q = unique("autodel")
    ch.queue_declare(q, auto_delete=True)
    ch.basic_consume(q, lambda *a: None)
    ch.close()
    wait_until(lambda: _gone(conn, q))


def test_purge_returns_the_count_of_ready_messages(conn, ch):
    q = unique("purge")
    ch.queue_declare(q)
    for i in range(5):
        ch.basic_publish("", q, str(i).encode())
    method, _p, _b = ch.basic_get(q)  # one unacked: not purged
    assert ch.queue_purge(q).method.message_count == 4
    assert message_count(conn, q) == 0
    ch.basic_reject(method.delivery_tag, requeue=True)
    assert wait_until(lambda: message_count(conn, q) == 1)
    assert ch.queue_purge(q).method.message_count == 1
    ch.queue_delete(q)


def test_delete_returns_the_count_and_removes_the_queue(conn, ch):
    q = unique("delete")
    ch.queue_declare(q)
    for i in range(3):
        ch.basic_publish("", q, b"m")
    wait_until(lambda: message_count(conn, q) == 3)
    assert ch.queue_delete(q).method.message_count == 3
    assert _gone(conn, q)


def test_delete_if_unused(conn):
    ch = conn.channel()
    q = unique("ifunused")
    ch.queue_declare(q)
    tag = ch.basic_consume(q, lambda *a: None)
    code, text = channel_error(lambda: conn.channel().queue_delete(q, if_unused=True))
    assert (code, text) == (406, f"PRECONDITION_FAILED - queue '{q}' in vhost '/' in use")
    ch.basic_cancel(tag)
    conn.channel().queue_delete(q, if_unused=True)
    assert _gone(conn, q)


def test_delete_if_empty(conn):
    ch = conn.channel()
    q = unique("ifempty")
    ch.queue_declare(q)
    ch.basic_publish("", q, b"m")
    wait_until(lambda: message_count(conn, q) == 1)
    code, text = channel_error(lambda: conn.channel().queue_delete(q, if_empty=True))
    assert (code, text) == (406, f"PRECONDITION_FAILED - queue '{q}' in vhost '/' not empty")
    ch.queue_purge(q)
    conn.channel().queue_delete(q, if_empty=True)
    assert _gone(conn, q)


def test_queue_redeclare_after_delete_starts_empty(ch):
    q = unique("again")
    ch.queue_declare(q)
    ch.basic_publish("", q, b"old")
    ch.queue_delete(q)
    ch.queue_declare(q)
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    ch.queue_delete(q)


def test_durable_queue_with_persistent_messages_survives_restart(fresh_node):
    c = connect(fresh_node.url)
    ch = c.channel()
    ch.confirm_delivery()
    ch.queue_declare("durable-q", durable=True)
    ch.queue_declare("transient-q")
    ch.basic_publish("", "durable-q", b"persistent", pika.BasicProperties(delivery_mode=2))
    ch.basic_publish("", "durable-q", b"transient-msg", pika.BasicProperties(delivery_mode=1))
    ch.basic_publish("", "transient-q", b"gone", pika.BasicProperties(delivery_mode=2))
    c.close()
    fresh_node.stop()
    fresh_node.start()
    c = connect(fresh_node.url)
    ch = c.channel()
    assert ch.queue_declare("durable-q", passive=True).method.message_count == 1
    method, _p, body = ch.basic_get("durable-q", auto_ack=True)
    assert body == b"persistent" and method.redelivered
    code, _ = channel_error(lambda: ch.queue_declare("transient-q", passive=True))
    assert code == 404
    c.close()


def test_delete_if_empty_ignores_unacked_messages(conn):
    ch = conn.channel()
    q = unique("ifempty-unacked")
    ch.queue_declare(q)
    ch.basic_publish("", q, b"m")
    assert wait_until(lambda: ch.basic_get(q)[0])  # delivered, not acked
    # RabbitMQ counts only ready messages: a queue holding just unacked ones is empty.
    assert conn.channel().queue_delete(q, if_empty=True).method.message_count == 0
    assert _gone(conn, q)
