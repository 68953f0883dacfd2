"""Exchanges: types and their matching, the default and amq.* exchanges, e2e bindings,
alternate and internal exchanges, auto-delete, and the refusals with RabbitMQ's texts."""

from __future__ import annotations

import time

import pika
import pytest

from tests.integration.conftest import channel_error, connection_error, drain, get_body, unique


def _queues(ch, n):
    return [ch.queue_declare("", exclusive=True).method.queue for _ in range(n)]


def _settle(ch):
    # Publishes are asynchronous; a synchronous round trip on the same channel orders after them.
    ch.basic_qos(prefetch_count=0)


def test_direct_exchange_routes_by_exact_key(ch):
    ex = unique("direct")
    ch.exchange_declare(ex, "direct")
    a, b = _queues(ch, 2)
    ch.queue_bind(a, ex, "k1")
    ch.queue_bind(b, ex, "k1")
    ch.queue_bind(b, ex, "k2")
    for k in ("k1", "k2", "k3", "K1"):
        ch.basic_publish(ex, k, k.encode())
    _settle(ch)
    assert drain(ch, a) == [b"k1"]
    assert drain(ch, b) == [b"k1", b"k2"]
    ch.exchange_delete(ex)


def test_fanout_ignores_routing_key(ch):
    ex = unique("fanout")
    ch.exchange_declare(ex, "fanout")
    a, b = _queues(ch, 2)
    ch.queue_bind(a, ex, "whatever")
    ch.queue_bind(b, ex)
    ch.basic_publish(ex, "any.key", b"m")
    _settle(ch)
    assert drain(ch, a) == [b"m"]
    assert drain(ch, b) == [b"m"]
    ch.exchange_delete(ex)


@pytest.mark.parametrize("pattern,key,matches", [
    ("a.*.c", "a.b.c", True),
    ("a.*.c", "a.c", False),
    ("a.*.c", "a.b.b.c", False),
    ("a.#", "a", True),
    ("a.#", "a.b.c", True),
    ("#.c", "c", True),
    ("#.c", "a.b.c", True),
    ("#", "", True),
    ("#", "x.y", True),
    ("*", "", False),
    ("*", "a.b", False),
    ("a.#.c", "a.c", True),
    ("a.#.c", "a.b.x.c", True),
    ("a.#.#.c", "a.c", True),
    ("#.*", "", False),
    ("#.*", "a", True),
    ("*.#", "a", True),
    ("a.*.#", "a", False),
    ("", "", True),
    ("", "a", False),
    ("a..b", "a..b", True),
    ("a.*.b", "a..b", True),
])
def test_topic_star_and_hash_semantics(ch, pattern, key, matches):
    ex = unique("topic")
    ch.exchange_declare(ex, "topic")
    (q,) = _queues(ch, 1)
    ch.queue_bind(q, ex, pattern)
    ch.basic_publish(ex, key, b"m")
    _settle(ch)
    assert drain(ch, q) == ([b"m"] if matches else [])
    ch.exchange_delete(ex)


def test_topic_delivers_once_when_several_bindings_match(ch):
    ex = unique("topic")
    ch.exchange_declare(ex, "topic")
    (q,) = _queues(ch, 1)
    for pattern in ("a.*", "#", "a.b"):
        ch.queue_bind(q, ex, pattern)
    ch.basic_publish(ex, "a.b", b"once")
    _settle(ch)
    assert drain(ch, q) == [b"once"]
    ch.exchange_delete(ex)


def test_headers_exchange_all_and_any(ch):
    ex = unique("headers")
    ch.exchange_declare(ex, "headers")
    q_all, q_any, q_default = _queues(ch, 3)
    ch.queue_bind(q_all, ex, arguments={"x-match": "all", "format": "pdf", "type": "report"})
    ch.queue_bind(q_any, ex, arguments={"x-match": "any", "format": "pdf", "type": "report"})
    ch.queue_bind(q_default, ex, arguments={"format": "pdf", "type": "report"})  # all by default
    sends = {
        b"both": {"format": "pdf", "type": "report"},
        b"one": {"format": "pdf"},
        b"other-value": {"format": "zip", "type": "report"},
        b"none": {"size": 1},
        b"extra": {"format": "pdf", "type": "report", "x": 1},
    }
    for body, headers in sends.items():
        ch.basic_publish(ex, "ignored", body, pika.BasicProperties(headers=headers))
    ch.basic_publish(ex, "ignored", b"no-headers")
    _settle(ch)
    assert drain(ch, q_all) == [b"both", b"extra"]
    assert drain(ch, q_default) == [b"both", b"extra"]
    assert drain(ch, q_any) == [b"both", b"one", b"other-value", b"extra"]
    ch.exchange_delete(ex)


def test_headers_binding_without_arguments_matches_everything(ch):
    ex = unique("headers")
    ch.exchange_declare(ex, "headers")
    (q,) = _queues(ch, 1)
    ch.queue_bind(q, ex)
    ch.basic_publish(ex, "", b"a", pika.BasicProperties(headers={"k": "v"}))
    ch.basic_publish(ex, "", b"b")
    _settle(ch)
    assert drain(ch, q) == [b"a", b"b"]
    ch.exchange_delete(ex)


def test_amq_exchanges_exist(ch):
    for name, kind in (("amq.direct", "direct"), ("amq.fanout", "fanout"), ("amq.topic", "topic"),
                       ("amq.headers", "headers"), ("amq.match", "headers")):
        ch.exchange_declare(name, passive=True)
        ch.exchange_declare(name, kind, durable=True)  # equivalent redeclare is fine


def test_amq_prefix_is_reserved(ch):
    code, text = channel_error(lambda: ch.exchange_declare("amq.custom", "direct"))
    assert (code, text) == (403, "ACCESS_REFUSED - exchange name 'amq.custom' contains reserved prefix 'amq.*'")


def test_amq_exchange_cannot_be_deleted(conn):
    ch = conn.channel()
    code, text = channel_error(lambda: ch.exchange_delete("amq.direct"))
    assert (code, text) == (403, "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed")


def test_default_exchange_routes_to_queue_by_name(ch):
    q = unique("q")
    ch.queue_declare(q, exclusive=True)
    ch.basic_publish("", q, b"direct")
    assert get_body(ch, q) == b"direct"


@pytest.mark.parametrize("operation", ["bind", "unbind", "delete", "declare-passive"])
def test_default_exchange_cannot_be_bound_unbound_or_deleted(conn, operation):
    ch = conn.channel()
    q = unique("q")
    ch.queue_declare(q, exclusive=True)
    actions = {
        "bind": lambda: ch.queue_bind(q, "", q),
        "unbind": lambda: ch.queue_unbind(q, "", q),
        "delete": lambda: ch.exchange_delete(""),
        "declare-passive": lambda: ch.exchange_declare("", passive=True),
    }
    code, text = channel_error(actions[operation])
    assert (code, text) == (403, "ACCESS_REFUSED - operation not permitted on the default exchange")


def test_default_exchange_cannot_be_declared(ch):
    code, text = channel_error(lambda: ch.exchange_declare("", "direct"))
    assert (code, text) == (403, "ACCESS_REFUSED - operation not permitted on the default exchange")


def test_exchange_declare_equivalence(conn):
    ex = unique("eq")
    ch = conn.channel()
    ch.exchange_declare(ex, "direct")
    ch.exchange_declare(ex, "direct")
    code, text = channel_error(lambda: ch.exchange_declare(ex, "fanout"))
    assert code == 406
    assert text == f"PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{ex}' in vhost '/': " \
                   "received 'fanout' but current is 'direct'"
    ch = conn.channel()
    code, text = channel_error(lambda: ch.exchange_declare(ex, "direct", durable=True))
    assert code == 406
    assert text == f"PRECONDITION_FAILED - inequivalent arg 'durable' for exchange '{ex}' in vhost '/': " \
                   "received 'true' but current is 'false'"
    ch = conn.channel()
    code, text = channel_error(lambda: ch.exchange_declare(ex, "direct", auto_delete=True))
    assert (code, text) == (406, f"PRECONDITION_FAILED - inequivalent arg 'auto_delete' for exchange '{ex}' "
                                 "in vhost '/': received 'true' but current is 'false'")
    conn.channel().exchange_delete(ex)


def test_passive_declare_of_missing_exchange(ch):
    ex = unique("missing")
    code, text = channel_error(lambda: ch.exchange_declare(ex, passive=True))
    assert (code, text) == (404, f"NOT_FOUND - no exchange '{ex}' in vhost '/'")


def test_unknown_exchange_type_is_a_connection_error(amqp_url):
    from tests.integration.conftest import connect

    c = connect(amqp_url)
    ch = c.channel()
    code, text = connection_error(lambda: ch.exchange_declare(unique("bad"), "nonsense"))
    assert (code, text) == (503, "COMMAND_INVALID - unknown exchange type 'nonsense'")


def test_publish_to_missing_exchange(ch):
    ex = unique("missing")

    def publish():
        ch.basic_publish(ex, "k", b"m")
        ch.basic_qos(prefetch_count=0)

    code, text = channel_error(publish)
    assert (code, text) == (404, f"NOT_FOUND - no exchange '{ex}' in vhost '/'")


def test_bind_to_missing_exchange_or_queue(conn):
    ch = conn.channel()
    q = unique("q")
    ch.queue_declare(q, exclusive=True)
    ex = unique("missing")
    code, text = channel_error(lambda: ch.queue_bind(q, ex, "k"))
    assert (code, text) == (404, f"NOT_FOUND - no exchange '{ex}' in vhost '/'")
    ch = conn.channel()
    missing_q = unique("missing")
    code, text = channel_error(lambda: ch.queue_bind(missing_q, "amq.direct", "k"))
    assert (code, text) == (404, f"NOT_FOUND - no queue '{missing_q}' in vhost '/'")


def test_delete_missing_exchange_is_ok(ch):
    ch.exchange_delete(unique("missing"))


def test_exchange_delete_if_unused(conn):
    ch = conn.channel()
    ex = unique("ifunused")
    ch.exchange_declare(ex, "direct")
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, ex, "k")
    code, text = channel_error(lambda: ch.exchange_delete(ex, if_unused=True))
    assert (code, text) == (406, f"PRECONDITION_FAILED - exchange '{ex}' in vhost '/' in use")
    ch = conn.channel()
    ch.queue_unbind(q, ex, "k")
    ch.exchange_delete(ex, if_unused=True)
    code, _ = channel_error(lambda: ch.exchange_declare(ex, passive=True))
    assert code == 404


def test_deleting_an_exchange_removes_its_bindings(ch):
    ex = unique("gone")
    ch.exchange_declare(ex, "fanout")
    (q,) = _queues(ch, 1)
    ch.queue_bind(q, ex)
    ch.exchange_delete(ex)
    ch.exchange_declare(ex, "fanout")
    ch.basic_publish(ex, "", b"m")
    _settle(ch)
    assert drain(ch, q) == []
    ch.exchange_delete(ex)


def test_unbind_stops_routing(ch):
    ex = unique("unbind")
    ch.exchange_declare(ex, "direct")
    (q,) = _queues(ch, 1)
    ch.queue_bind(q, ex, "k")
    ch.basic_publish(ex, "k", b"1")
    ch.queue_unbind(q, ex, "k")
    ch.basic_publish(ex, "k", b"2")
    _settle(ch)
    assert drain(ch, q) == [b"1"]
    ch.queue_unbind(q, ex, "never-bound")  # unbinding a missing binding is ok
    ch.exchange_delete(ex)


def test_exchange_to_exchange_bindings(ch):
    src, mid, dst = unique("src"), unique("mid"), unique("dst")
    ch.exchange_declare(src, "topic")
    ch.exchange_declare(mid, "direct")
    ch.exchange_declare(dst, "fanout")
    q_mid, q_dst = _queues(ch, 2)
    ch.exchange_bind(mid, src, "a.*")
    ch.exchange_bind(dst, mid, "a.b")
    ch.queue_bind(q_mid, mid, "a.c")
    ch.queue_bind(q_dst, dst)
    for k in ("a.b", "a.c", "x.y"):
        ch.basic_publish(src, k, k.encode())
    _settle(ch)
    assert drain(ch, q_dst) == [b"a.b"]
    assert drain(ch, q_mid) == [b"a.c"]
    ch.exchange_unbind(dst, mid, "a.b")
    ch.basic_publish(src, "a.b", b"again")
    _settle(ch)
    assert drain(ch, q_dst) == []
    for ex in (src, mid, dst):
        ch.exchange_delete(ex)


def test_exchange_binding_cycle_delivers_once(ch):
    a, b = unique("cyc-a"), unique("cyc-b")
    ch.exchange_declare(a, "fanout")
    ch.exchange_declare(b, "fanout")
    ch.exchange_bind(b, a)
    ch.exchange_bind(a, b)
    (q,) = _queues(ch, 1)
    ch.queue_bind(q, a)
    ch.queue_bind(q, b)
    ch.basic_publish(a, "", b"m")
    _settle(ch)
    assert drain(ch, q) == [b"m"]
    ch.exchange_delete(a)
    ch.exchange_delete(b)


def test_exchange_bind_to_missing_source(ch):
    dst = unique("dst")
    ch.exchange_declare(dst, "fanout")
    src = unique("missing")
    code, text = channel_error(lambda: ch.exchange_bind(dst, src, "k"))
    assert (code, text) == (404, f"NOT_FOUND - no exchange '{src}' in vhost '/'")


def test_alternate_exchange_gets_unroutable_messages(ch):
    ae, ex = unique("ae"), unique("main")
    ch.exchange_declare(ae, "fanout")
    ch.exchange_declare(ex, "direct", arguments={"alternate-exchange": ae})
    routed, unrouted = _queues(ch, 2)
    ch.queue_bind(routed, ex, "known")
    ch.queue_bind(unrouted, ae)
    ch.basic_publish(ex, "known", b"in")
    ch.basic_publish(ex, "unknown", b"out")
    _settle(ch)
    assert drain(ch, routed) == [b"in"]
    assert drain(ch, unrouted) == [b"out"]
    ch.exchange_delete(ex)
    ch.exchange_delete(ae)


def test_alternate_exchange_that_does_not_exist_drops_quietly(ch):
    ex = unique("main")
    ch.exchange_declare(ex, "direct", arguments={"alternate-exchange": unique("nowhere")})
    ch.confirm_delivery()
    ch.basic_publish(ex, "unknown", b"lost")  # confirmed (acked) though unroutable
    ch.exchange_delete(ex)


def test_mandatory_publish_routed_by_alternate_exchange_is_not_returned(conn):
    ch = conn.channel()
    ae, ex = unique("ae"), unique("main")
    ch.exchange_declare(ae, "fanout")
    ch.exchange_declare(ex, "direct", arguments={"alternate-exchange": ae})
    (q,) = _queues(ch, 1)
    ch.queue_bind(q, ae)
    returned = []
    ch.add_on_return_callback(lambda *a: returned.append(a))
    ch.basic_publish(ex, "unknown", b"m", mandatory=True)
    _settle(ch)
    conn.process_data_events(time_limit=0.1)
    assert returned == []
    assert drain(ch, q) == [b"m"]
    ch.exchange_delete(ex)
    ch.exchange_delete(ae)


def test_internal_exchange_refuses_publish_but_routes_from_e2e(conn):
    ch = conn.channel()
    internal, front = unique("internal"), unique("front")
    ch.exchange_declare(internal, "fanout", internal=True)
    ch.exchange_declare(front, "fanout")
    ch.exchange_bind(internal, front)
    (q,) = _queues(ch, 1)
    ch.queue_bind(q, internal)
    ch.basic_publish(front, "", b"via-front")
    _settle(ch)
    assert drain(ch, q) == [b"via-front"]

    def publish():
        ch.basic_publish(internal, "", b"direct")
        ch.basic_qos(prefetch_count=0)

    code, text = channel_error(publish)
    assert (code, text) == (403, f"ACCESS_REFUSED - cannot publish to internal exchange '{internal}' in vhost '/'")
    ch = conn.channel()
    ch.exchange_delete(front)
    ch.exchange_delete(internal)


def test_auto_delete_exchange_goes_with_its_last_binding(conn):
    ch = conn.channel()
    ex = unique("autodel")
    ch.exchange_declare(ex, "direct", auto_delete=True)
    a, b = _queues(ch, 2)
    ch.queue_bind(a, ex, "k")
    ch.queue_bind(b, ex, "k")
    ch.queue_unbind(a, ex, "k")
    ch.exchange_declare(ex, passive=True)  # one binding left
    ch.queue_unbind(b, ex, "k")
    deadline = time.monotonic() + 5
    while True:
        try:
            conn.channel().exchange_declare(ex, passive=True)
        except pika.exceptions.ChannelClosedByBroker as e:
            assert e.reply_code == 404
            break
        assert time.monotonic() < deadline, "auto-delete exchange outlived its bindings"
        time.sleep(0.02)


def test_auto_delete_exchange_without_bindings_stays(ch):
    ex = unique("autodel")
    ch.exchange_declare(ex, "direct", auto_delete=True)
    ch.exchange_declare(ex, passive=True)
    ch.exchange_delete(ex)


def test_auto_delete_exchange_goes_when_its_queue_is_deleted(conn):
    ch = conn.channel()
    ex = unique("autodel")
    q = unique("q")
    ch.exchange_declare(ex, "fanout", auto_delete=True)
    ch.queue_declare(q)
    ch.queue_bind(q, ex)
    ch.queue_delete(q)
    code, _ = channel_error(lambda: ch.exchange_declare(ex, passive=True))
    assert code == 404


def test_headers_binding_with_invalid_x_match(conn):
    ch = conn.channel()
    ex = unique("hdrs")
    ch.exchange_declare(ex, "headers")
    q = ch.queue_declare("", exclusive=True).method.queue
    code, text = channel_error(lambda: ch.queue_bind(q, ex, arguments={"x-match": "foo"}))
    assert (code, text) == (406, "PRECONDITION_FAILED - Invalid x-match field value <<\"foo\">>; "
                                 "expected all, any, all-with-x, or any-with-x")
    conn.channel().exchange_delete(ex)


def test_alternate_exchange_argument_must_be_a_string(ch):
    ex = unique("ae-type")
    code, text = channel_error(lambda: ch.exchange_declare(ex, "direct", arguments={"alternate-exchange": 5}))
    assert (code, text) == (406, f"PRECONDITION_FAILED - invalid type 'signedint' for arg 'alternate-exchange' "
                                 f"in exchange '{ex}' in vhost '/'")


def test_if_unused_counts_only_bindings_from_the_exchange(conn):
    ch = conn.channel()
    src, dst = unique("src"), unique("dst")
    ch.exchange_declare(src, "fanout")
    ch.exchange_declare(dst, "fanout")
    ch.exchange_bind(dst, src)
    ch.exchange_delete(dst, if_unused=True)  # only a destination: unused
    ch.exchange_bind(src, src)  # binding an exchange to itself is allowed
    code, text = channel_error(lambda: ch.exchange_delete(src, if_unused=True))
    assert (code, text) == (406, f"PRECONDITION_FAILED - exchange '{src}' in vhost '/' in use")
    conn.channel().exchange_delete(src)
