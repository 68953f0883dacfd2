"""Queue arguments: TTLs, queue expiry, length limits and overflow, dead-lettering with
x-death, priorities, single active consumer, queue mode, and argument validation."""

from __future__ import annotations

import time

import pika
import pytest

from tests.integration.conftest import (
    channel_error, connect, drain, get_body, message_count, unique, wait_until,
)


def _settle(ch):
    ch.basic_qos(prefetch_count=0)


def _gone(conn, queue):
    try:
        conn.channel().queue_declare(queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker as e:
        assert e.reply_code == 404
        return True
    return False


def test_message_ttl_expires_ready_messages(conn, ch):
    q = unique("ttl")
    ch.queue_declare(q, arguments={"x-message-ttl": 100})
    ch.basic_publish("", q, b"short-lived")
    _settle(ch)
    wait_until(lambda: message_count(conn, q) == 0, timeout=3)
    assert ch.basic_get(q)[0] is None
    ch.queue_delete(q)


def test_message_ttl_zero_delivers_only_to_a_waiting_consumer(conn, ch):
    q = unique("ttl0")
    ch.queue_declare(q, arguments={"x-message-ttl": 0})
    ch.basic_publish("", q, b"nobody-waiting")
    _settle(ch)
    assert ch.basic_get(q)[0] is None
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    conn.channel().basic_publish("", q, b"consumer-waiting")
    deadline = time.monotonic() + 3
    while not got and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    assert got == [b"consumer-waiting"]
    ch.queue_delete(q)


def test_per_message_expiration(conn, ch):
    q = unique("expiration")
    ch.queue_declare(q)
    ch.basic_publish("", q, b"short", pika.BasicProperties(expiration="100"))
    ch.basic_publish("", q, b"long", pika.BasicProperties(expiration="60000"))
    ch.basic_publish("", q, b"forever")
    _settle(ch)
    time.sleep(0.3)
    # Expired messages are dropped when they reach the head; "long" is still there.
    got = drain(ch, q)
    assert got == [b"long", b"forever"]
    ch.queue_delete(q)


def test_lower_of_queue_ttl_and_message_expiration_applies(conn, ch):
    q = unique("ttl-min")
    ch.queue_declare(q, arguments={"x-message-ttl": 60000})
    ch.basic_publish("", q, b"m", pika.BasicProperties(expiration="50"))
    _settle(ch)
    time.sleep(0.2)
    assert drain(ch, q) == []
    ch.queue_delete(q)


@pytest.mark.parametrize("expiration,text", [
    ("abc", "PRECONDITION_FAILED - invalid expiration 'abc': no_integer"),
    ("-5", "PRECONDITION_FAILED - invalid expiration '-5': {value_negative,-5}"),
])
def test_invalid_expiration_is_refused(ch, expiration, text):
    def publish():
        ch.basic_publish("", "anything", b"m", pika.BasicProperties(expiration=expiration))
        _settle(ch)

    assert channel_error(publish) == (406, text)


def test_queue_expires_when_unused(conn, ch):
    q = unique("expires")
    ch.queue_declare(q, arguments={"x-expires": 100})
    assert not _gone(conn, q)
    # Poll less often than the expiry: a passive declare renews the lease (see below).
    wait_until(lambda: _gone(conn, q), timeout=5, interval=0.25)


@pytest.mark.parametrize("renew", ["passive-declare", "declare", "get"])
def test_queue_use_renews_its_expiry(conn, ch, renew):
    q = unique("expires")
    args = {"x-expires": 300}
    ch.queue_declare(q, arguments=args)
    actions = {
        "passive-declare": lambda: ch.queue_declare(q, passive=True),
        "declare": lambda: ch.queue_declare(q, arguments=args),
        "get": lambda: ch.basic_get(q),
    }
    for _ in range(8):
        time.sleep(0.1)
        actions[renew]()
    wait_until(lambda: _gone(conn, q), timeout=5, interval=0.4)


def test_queue_with_consumer_does_not_expire(conn, ch):
    q = unique("expires")
    ch.queue_declare(q, arguments={"x-expires": 100})
    tag = ch.basic_consume(q, lambda *a: None)
    time.sleep(0.4)
    assert not _gone(conn, q)
    ch.basic_cancel(tag)
    wait_until(lambda: _gone(conn, q), timeout=5, interval=0.25)


def test_max_length_drops_head_by_default(conn, ch):
    q = unique("maxlen")
    ch.queue_declare(q, arguments={"x-max-length": 2})
    for i in range(5):
        ch.basic_publish("", q, str(i).encode())
    _settle(ch)
    assert drain(ch, q) == [b"3", b"4"]
    ch.queue_delete(q)


def test_max_length_bytes(conn, ch):
    q = unique("maxbytes")
    ch.queue_declare(q, arguments={"x-max-length-bytes": 10})
    for body in (b"aaaa", b"bbbb", b"cccc"):
        ch.basic_publish("", q, body)
    _settle(ch)
    assert drain(ch, q) == [b"bbbb", b"cccc"]
    ch.queue_delete(q)


def test_overflow_reject_publish_nacks_confirmed_publishes(conn):
    ch = conn.channel()
    q = unique("rejectpub")
    ch.queue_declare(q, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"first")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"second")
    assert drain(ch, q) == [b"first"]
    ch.basic_publish("", q, b"third")  # room again
    assert drain(ch, q) == [b"third"]
    ch.queue_delete(q)


def test_overflow_reject_publish_dlx_dead_letters_the_refused(conn):
    ch = conn.channel()
    dlq, q = unique("dlq"), unique("rejectdlx")
    ch.queue_declare(dlq)
    ch.queue_declare(q, arguments={"x-max-length": 1, "x-overflow": "reject-publish-dlx",
                                   "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"kept")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"refused")
    assert drain(ch, q) == [b"kept"]
    method, props, body = ch.basic_get(dlq, auto_ack=True)
    assert body == b"refused"
    death = props.headers["x-death"][0]
    assert (death["reason"], death["queue"], death["count"]) == ("maxlen", q, 1)
    ch.queue_delete(q)
    ch.queue_delete(dlq)


def test_overflow_drop_head_dead_letters_with_reason_maxlen(conn, ch):
    dlq, q = unique("dlq"), unique("drophead")
    ch.queue_declare(dlq)
    ch.queue_declare(q, arguments={"x-max-length": 1, "x-overflow": "drop-head",
                                   "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
    ch.basic_publish("", q, b"old")
    ch.basic_publish("", q, b"new")
    _settle(ch)
    assert drain(ch, q) == [b"new"]
    _m, props, body = ch.basic_get(dlq, auto_ack=True)
    assert body == b"old"
    assert props.headers["x-death"][0]["reason"] == "maxlen"
    ch.queue_delete(q)
    ch.queue_delete(dlq)


def test_dead_letter_on_reject_with_exchange_and_routing_key(conn, ch):
    dlx, dlq, q = unique("dlx"), unique("dlq"), unique("work")
    ch.exchange_declare(dlx, "direct")
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx, "dead")
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": dlx, "x-dead-letter-routing-key": "dead"})
    ch.basic_publish("", q, b"bad", pika.BasicProperties(headers={"h": 1}))
    method, _p, _b = ch.basic_get(q)
    ch.basic_reject(method.delivery_tag, requeue=False)
    wait_until(lambda: message_count(conn, dlq) == 1)
    method, props, body = ch.basic_get(dlq, auto_ack=True)
    assert body == b"bad"
    assert method.exchange == dlx and method.routing_key == "dead"
    assert props.headers["h"] == 1
    (death,) = props.headers["x-death"]
    assert death["reason"] == "rejected"
    assert death["queue"] == q
    assert death["exchange"] == ""
    assert death["routing-keys"] == [q]
    assert death["count"] == 1
    # Typed as long ('l') on the wire, as RabbitMQ does: Java clients cast it to Long.
    assert isinstance(death["count"], pika.compat.long)
    assert props.headers["x-first-death-reason"] == "rejected"
    assert props.headers["x-first-death-queue"] == q
    ch.queue_delete(q)
    ch.queue_delete(dlq)
    ch.exchange_delete(dlx)


def test_dead_letter_keeps_routing_key_without_override_and_on_nack(conn, ch):
    dlx, dlq, q = unique("dlx"), unique("dlq"), unique("work")
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx)
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": dlx})
    ch.basic_publish("", q, b"a")
    ch.basic_publish("", q, b"b")
    first = ch.basic_get(q)[0]
    second = ch.basic_get(q)[0]
    ch.basic_nack(second.delivery_tag, multiple=True, requeue=False)
    wait_until(lambda: message_count(conn, dlq) == 2)
    got = [ch.basic_get(dlq, auto_ack=True) for _ in range(2)]
    assert [b for _m, _p, b in got] == [b"a", b"b"]
    assert all(m.routing_key == q for m, _p, _b in got)
    assert first.delivery_tag < second.delivery_tag
    ch.queue_delete(q)
    ch.queue_delete(dlq)
    ch.exchange_delete(dlx)


def test_dead_letter_on_ttl_expiry(conn, ch):
    dlq, q = unique("dlq"), unique("ttl")
    ch.queue_declare(dlq)
    ch.queue_declare(q, arguments={"x-message-ttl": 50, "x-dead-letter-exchange": "",
                                   "x-dead-letter-routing-key": dlq})
    ch.basic_publish("", q, b"late", pika.BasicProperties(expiration="10000"))
    _settle(ch)
    wait_until(lambda: message_count(conn, dlq) == 1, timeout=3)
    _m, props, body = ch.basic_get(dlq, auto_ack=True)
    assert body == b"late"
    death = props.headers["x-death"][0]
    assert death["reason"] == "expired"
    # The per-message expiration is removed and recorded in x-death (RabbitMQ's rule).
    assert props.expiration is None
    assert death["original-expiration"] == "10000"
    ch.queue_delete(q)
    ch.queue_delete(dlq)


def test_x_death_count_increments_on_each_cycle(conn, ch):
    """work --reject--> retry --ttl--> work --reject--> retry ... the x-death entries count up."""
    work, retry = unique("work"), unique("retry")
    ch.queue_declare(work, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": retry})
    ch.queue_declare(retry, arguments={"x-message-ttl": 20, "x-dead-letter-exchange": "",
                                       "x-dead-letter-routing-key": work})
    ch.basic_publish("", work, b"job")
    props = None
    for attempt in range(1, 4):
        method = wait_until(lambda: ch.basic_get(work), timeout=3)
        method, props = method[0], method[1]
        if method is None:
            continue
        if attempt > 1:
            deaths = {(d["queue"], d["reason"]): d["count"] for d in props.headers["x-death"]}
            assert deaths == {(work, "rejected"): attempt - 1, (retry, "expired"): attempt - 1}
        ch.basic_reject(method.delivery_tag, requeue=False)
    ch.queue_delete(work)
    ch.queue_delete(retry)


def test_max_priority_delivers_higher_priority_first(conn, ch):
    q = unique("prio")
    ch.queue_declare(q, arguments={"x-max-priority": 5})
    for body, prio in ((b"low", 1), (b"none", None), (b"high", 5), (b"over", 9), (b"mid", 3)):
        ch.basic_publish("", q, body, pika.BasicProperties(priority=prio))
    _settle(ch)
    # Priorities above the maximum count as the maximum; equal priorities keep FIFO order.
    assert drain(ch, q) == [b"high", b"over", b"mid", b"low", b"none"]
    ch.queue_delete(q)


def test_priority_ignored_without_max_priority(conn, ch):
    q = unique("noprio")
    ch.queue_declare(q)
    for body, prio in ((b"a", 1), (b"b", 9)):
        ch.basic_publish("", q, body, pika.BasicProperties(priority=prio))
    _settle(ch)
    assert drain(ch, q) == [b"a", b"b"]
    ch.queue_delete(q)


def test_single_active_consumer(conn):
    ch = conn.channel()
    q = unique("sac")
    ch.queue_declare(q, arguments={"x-single-active-consumer": True})
    got: dict[str, list[bytes]] = {"first": [], "second": []}
    c1 = ch.basic_consume(q, lambda c, m, p, b: got["first"].append(b), auto_ack=True)
    ch.basic_consume(q, lambda c, m, p, b: got["second"].append(b), auto_ack=True)
    pub = conn.channel()
    for i in range(4):
        pub.basic_publish("", q, str(i).encode())
    deadline = time.monotonic() + 3
    while len(got["first"]) < 4 and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    assert got == {"first": [b"0", b"1", b"2", b"3"], "second": []}
    ch.basic_cancel(c1)
    pub.basic_publish("", q, b"after")
    deadline = time.monotonic() + 3
    while not got["second"] and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    assert got["second"] == [b"after"]
    ch.queue_delete(q)


def test_queue_mode_lazy_is_accepted_and_works(ch):
    q = unique("lazy")
    ch.queue_declare(q, arguments={"x-queue-mode": "lazy"})
    ch.basic_publish("", q, b"m")
    assert get_body(ch, q) == b"m"
    ch.queue_delete(q)


@pytest.mark.parametrize("arguments,detail", [
    ({"x-message-ttl": -1}, "invalid arg 'x-message-ttl' for queue '{q}' in vhost '/': {{value_negative,-1}}"),
    ({"x-message-ttl": "abc"},
     "invalid arg 'x-message-ttl' for queue '{q}' in vhost '/': \"expected integer, got longstr\""),
    ({"x-expires": 0}, "invalid arg 'x-expires' for queue '{q}' in vhost '/': {{value_zero,0}}"),
    ({"x-max-length": -1}, "invalid arg 'x-max-length' for queue '{q}' in vhost '/': {{value_negative,-1}}"),
    ({"x-max-length-bytes": -1},
     "invalid arg 'x-max-length-bytes' for queue '{q}' in vhost '/': {{value_negative,-1}}"),
    ({"x-overflow": "nope"}, "invalid arg 'x-overflow' for queue '{q}' in vhost '/': invalid_overflow"),
    ({"x-max-priority": 256},
     "invalid arg 'x-max-priority' for queue '{q}' in vhost '/': {{max_value_exceeded,256}}"),
    ({"x-max-priority": -1}, "invalid arg 'x-max-priority' for queue '{q}' in vhost '/': {{value_negative,-1}}"),
    ({"x-single-active-consumer": "yes"},
     "invalid arg 'x-single-active-consumer' for queue '{q}' in vhost '/': {{unacceptable_type,longstr}}"),
    ({"x-queue-mode": "fast"},
     "invalid arg 'x-queue-mode' for queue '{q}' in vhost '/': \"unsupported queue mode 'fast'\""),
    ({"x-dead-letter-exchange": 1},
     "invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue '{q}' in vhost '/'"),
    ({"x-dead-letter-routing-key": "k"},
     "invalid arg 'x-dead-letter-routing-key' for queue '{q}' in vhost '/': routing_key_but_no_dlx_defined"),
    ({"x-queue-type": "weird"},
     "invalid arg 'x-queue-type' for queue '{q}' in vhost '/': \"unsupported queue type 'weird'\""),
])
def test_invalid_queue_arguments(conn, arguments, detail):
    q = unique("badarg")
    ch = conn.channel()
    code, text = channel_error(lambda: ch.queue_declare(q, arguments=arguments))
    assert (code, text) == (406, "PRECONDITION_FAILED - " + detail.format(q=q))
    assert _gone(conn, q)


def test_single_active_consumer_hands_over_unacked_messages_in_order(amqp_url, conn):
    q = unique("sac-handover")
    conn.channel().queue_declare(q, arguments={"x-single-active-consumer": True})
    first = connect(amqp_url)
    held: list = []
    first.channel().basic_consume(q, lambda c, m, p, b: held.append(b))
    ch = conn.channel()
    got: list = []
    ch.basic_consume(q, lambda c, m, p, b: got.append((b, m.redelivered)), auto_ack=True)
    pub = conn.channel()
    for i in range(3):
        pub.basic_publish("", q, str(i).encode())
    deadline = time.monotonic() + 5
    while len(held) < 3 and time.monotonic() < deadline:
        first.process_data_events(time_limit=0.02)
    conn.process_data_events(time_limit=0.1)
    assert held == [b"0", b"1", b"2"] and got == []
    assert ch.queue_declare(q, passive=True).method.consumer_count == 2
    first.close()  # the active consumer goes: the waiting one takes over, redeliveries first
    deadline = time.monotonic() + 5
    while len(got) < 3 and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.02)
    assert got == [(b"0", True), (b"1", True), (b"2", True)]
    ch.queue_delete(q)


def test_purge_leaves_unacked_messages(conn):
    ch = conn.channel()
    q = unique("purge-unacked")
    ch.queue_declare(q)
    for b in (b"1", b"2", b"3"):
        ch.basic_publish("", q, b)
    held = wait_until(lambda: ch.basic_get(q)[0])
    assert ch.queue_purge(q).method.message_count == 2
    ch.basic_nack(held.delivery_tag, requeue=True)
    assert wait_until(lambda: message_count(conn, q) == 1)
    assert drain(ch, q) == [b"1"]
    ch.queue_delete(q)


def test_dead_lettering_keeps_every_header_type(conn, ch):
    """The dead-letter copy is re-encoded with x-death added: the other headers survive intact."""
    import datetime
    import decimal

    dlq, q = unique("dlq"), unique("types")
    ch.queue_declare(dlq)
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
    headers = {
        "str": "unicodé ✓", "int": -7, "big": 2**40, "bool": False, "none": None,
        "decimal": decimal.Decimal("3.14"), "time": datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc),
        "bytes": b"\x00\x01raw", "list": [1, "two", [3], {"four": 4}], "table": {"nested": {"deep": True}},
    }
    props = pika.BasicProperties(headers=headers, content_type="x/y", correlation_id="c", priority=2,
                                 timestamp=1700000000, delivery_mode=2)
    ch.basic_publish("", q, b"m", props)
    method = wait_until(lambda: ch.basic_get(q)[0])
    ch.basic_reject(method.delivery_tag, requeue=False)
    _m, got, body = wait_until(lambda: (lambda r: r if r[0] else None)(ch.basic_get(dlq, auto_ack=True)))
    assert body == b"m"
    out = dict(got.headers)
    assert {k for k in out if k.startswith("x-")} == {"x-death", "x-first-death-exchange", "x-first-death-queue",
                                                       "x-first-death-reason"}
    for k, v in headers.items():
        assert out[k] == v, k
    assert (got.content_type, got.correlation_id, got.priority, got.timestamp, got.delivery_mode) == \
        ("x/y", "c", 2, 1700000000, 2)
    ch.queue_delete(q)
    ch.queue_delete(dlq)
