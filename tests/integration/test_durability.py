"""What a restart keeps: persistent messages of durable queues that were not settled,
and nothing that was acked, purged, expired, dead-lettered away or deleted."""

from __future__ import annotations

import pika

from tests.integration.conftest import connect, drain, wait_until

PERSISTENT = pika.BasicProperties(delivery_mode=2)


def _count(ch, q):
    return ch.queue_declare(q, passive=True).method.message_count


def test_restart_keeps_exactly_the_unsettled_persistent_messages(fresh_node):
    c = connect(fresh_node.url)
    ch = c.channel()
    ch.confirm_delivery()
    for q in ("acked", "unacked", "purged", "rejected", "requeued", "dlq", "ttl", "deleted", "maxlen"):
        args = {}
        if q == "rejected":
            args = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dlq"}
        elif q == "ttl":
            args = {"x-message-ttl": 50}
        elif q == "maxlen":
            args = {"x-max-length": 2}
        ch.queue_declare(q, durable=True, arguments=args)
        for i in range(3):
            ch.basic_publish("", q, f"{q}-{i}".encode(), PERSISTENT)

    getter = c.channel()
    for _ in range(3):
        m = getter.basic_get("acked")[0]
        getter.basic_ack(m.delivery_tag)
    held = [getter.basic_get("unacked")[0] for _ in range(2)]  # unacked at the restart
    assert all(held)
    getter.queue_purge("purged")
    m = getter.basic_get("rejected")[0]
    getter.basic_reject(m.delivery_tag, requeue=False)  # -> dlq
    m = getter.basic_get("requeued")[0]
    getter.basic_reject(m.delivery_tag, requeue=True)
    getter.queue_delete("deleted")
    wait_until(lambda: _count(c.channel(), "ttl") == 0, timeout=5)
    assert _count(c.channel(), "dlq") == 4
    fresh_node.stop()
    fresh_node.start()

    c = connect(fresh_node.url)
    ch = c.channel()
    assert drain(ch, "acked") == []
    assert drain(ch, "unacked") == [b"unacked-0", b"unacked-1", b"unacked-2"]
    assert drain(ch, "purged") == []
    assert drain(ch, "rejected") == [b"rejected-1", b"rejected-2"]
    assert drain(ch, "dlq") == [b"dlq-0", b"dlq-1", b"dlq-2", b"rejected-0"]
    assert drain(ch, "requeued") == [b"requeued-0", b"requeued-1", b"requeued-2"]
    assert drain(ch, "ttl") == []
    assert drain(ch, "maxlen") == [b"maxlen-1", b"maxlen-2"]
    ch.queue_declare("deleted", durable=True)
    assert drain(ch, "deleted") == []
    c.close()


def test_auto_ack_consumption_is_not_recovered(fresh_node):
    c = connect(fresh_node.url)
    ch = c.channel()
    ch.confirm_delivery()
    ch.queue_declare("q", durable=True)
    for i in range(5):
        ch.basic_publish("", "q", str(i).encode(), PERSISTENT)
    got: list = []
    ch.basic_consume("q", lambda c_, m, p, b: got.append(b), auto_ack=True)
    deadline_ok = wait_until(lambda: (c.process_data_events(time_limit=0.02), len(got) == 5)[1])
    assert deadline_ok
    c.close()
    fresh_node.stop()
    fresh_node.start()
    c = connect(fresh_node.url)
    assert drain(c.channel(), "q") == []
    c.close()


def test_per_message_ttl_still_applies_after_a_restart(fresh_node):
    c = connect(fresh_node.url)
    ch = c.channel()
    ch.confirm_delivery()
    ch.queue_declare("msg_ttl_restart", durable=True)
    ch.basic_publish("", "msg_ttl_restart", b"short",
                     pika.BasicProperties(delivery_mode=2, expiration="1500"))
    ch.basic_publish("", "msg_ttl_restart", b"forever", PERSISTENT)
    c.close()
    fresh_node.stop()
    fresh_node.start()
    c = connect(fresh_node.url)
    ch = c.channel()
    assert _count(ch, "msg_ttl_restart") == 2
    # The TTL counts again from recovery; after it the short-lived message is gone.
    wait_until(lambda: _count(ch, "msg_ttl_restart") == 1, timeout=10)
    assert drain(ch, "msg_ttl_restart") == [b"forever"]
    c.close()
