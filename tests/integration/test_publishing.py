"""Publishing: publisher confirms (acks, nacks), mandatory returns, immediate,
transactions over publishes and acks, CC/BCC, and the mode-switch refusals."""

from __future__ import annotations

import time

import pika
import pytest

from tests.integration.conftest import (
    amqp_url_one_node_or_across_nodes,
    channel_error, connect, drain, message_count, unique, wait_until,
)

# Every test here runs on one node, and again with queues homed on either of two nodes.
amqp_url = amqp_url_one_node_or_across_nodes


def test_confirms_ack_routed_and_unroutable_publishes(ch):
    q = unique("confirm")
    ch.queue_declare(q)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"routed")
    ch.basic_publish("amq.direct", unique("nobody"), b"unroutable")  # acked: nothing to refuse it
    assert drain(ch, q) == [b"routed"]
    ch.queue_delete(q)


def test_confirm_of_persistent_message_in_durable_queue(ch):
    q = unique("durable-confirm")
    ch.queue_declare(q, durable=True)
    ch.confirm_delivery()
    for i in range(20):
        ch.basic_publish("", q, str(i).encode(), pika.BasicProperties(delivery_mode=2))
    assert drain(ch, q) == [str(i).encode() for i in range(20)]
    ch.queue_delete(q)


def test_mandatory_unroutable_is_returned_with_312(conn):
    ch = conn.channel()
    returned: list = []
    ch.add_on_return_callback(lambda c, method, props, body: returned.append((method, props, body)))
    key = unique("nobody")
    ch.basic_publish("amq.direct", key, b"back", pika.BasicProperties(content_type="text/plain",
                                                                       headers={"h": "v"}), mandatory=True)
    wait_until(lambda: (conn.process_data_events(time_limit=0.02), returned)[1])
    method, props, body = returned[0]
    assert (method.reply_code, method.reply_text, method.exchange, method.routing_key) == \
        (312, "NO_ROUTE", "amq.direct", key)
    assert (body, props.content_type, props.headers) == (b"back", "text/plain", {"h": "v"})


def test_mandatory_routed_is_not_returned(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    returned: list = []
    ch.add_on_return_callback(lambda *a: returned.append(a))
    ch.basic_publish("", q, b"m", mandatory=True)
    ch.basic_qos(prefetch_count=0)
    conn.process_data_events(time_limit=0.1)
    assert returned == []
    assert drain(ch, q) == [b"m"]


def test_mandatory_with_confirms_returns_before_the_ack(ch):
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError) as info:
        ch.basic_publish("amq.direct", unique("nobody"), b"m", mandatory=True)
    (msg,) = info.value.messages
    assert (msg.method.reply_code, msg.method.reply_text, msg.body) == (312, "NO_ROUTE", b"m")


def test_nacks_from_reject_publish_among_acks(ch):
    q = unique("nack")
    ch.queue_declare(q, arguments={"x-max-length": 2, "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    outcomes = []
    for i in range(4):
        try:
            ch.basic_publish("", q, str(i).encode())
            outcomes.append("ack")
        except pika.exceptions.NackError:
            outcomes.append("nack")
    assert outcomes == ["ack", "ack", "nack", "nack"]
    assert drain(ch, q) == [b"0", b"1"]
    ch.queue_delete(q)


def test_confirm_is_nacked_if_any_target_queue_refuses(ch):
    ex = unique("fan")
    full, room = unique("full"), unique("room")
    ch.exchange_declare(ex, "fanout")
    ch.queue_declare(full, arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    ch.queue_declare(room)
    ch.queue_bind(full, ex)
    ch.queue_bind(room, ex)
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish(ex, "", b"m")
    assert drain(ch, room) == [b"m"]  # the queue with room still got it (RabbitMQ's behaviour)
    for name in (full, room):
        ch.queue_delete(name)
    ch.exchange_delete(ex)


def test_immediate_is_not_implemented(amqp_url):
    import amqp

    p = pika.URLParameters(amqp_url)
    c = amqp.Connection(f"{p.host}:{p.port}", userid="guest", password="guest")
    c.connect()
    try:
        ch = c.channel()
        ch.basic_publish(amqp.Message(b"m"), exchange="", routing_key="anything", immediate=True)
        with pytest.raises(amqp.exceptions.AMQPNotImplementedError) as info:
            c.drain_events(timeout=5)
        assert (info.value.reply_code, info.value.reply_text) == (540, "NOT_IMPLEMENTED - immediate=true")
    finally:
        c.collect()


def test_transaction_publishes_appear_only_on_commit(conn):
    ch = conn.channel()
    q = unique("tx")
    ch.queue_declare(q)
    ch.tx_select()
    ch.basic_publish("", q, b"1")
    ch.basic_publish("", q, b"2")
    time.sleep(0.05)
    assert message_count(conn, q) == 0
    ch.tx_commit()
    assert message_count(conn, q) == 2
    ch.basic_publish("", q, b"3")
    ch.tx_rollback()
    ch.tx_commit()  # nothing pending: an empty commit
    assert message_count(conn, q) == 2
    ch.queue_delete(q)


def test_transaction_acks_apply_on_commit_and_are_dropped_on_rollback(conn):
    q = unique("txack")
    setup = conn.channel()
    setup.queue_declare(q)
    for b in (b"a", b"b"):
        setup.basic_publish("", q, b)
    wait_until(lambda: message_count(conn, q) == 2)
    ch = conn.channel()
    ch.tx_select()
    first = ch.basic_get(q)[0]
    second = ch.basic_get(q)[0]
    ch.basic_ack(first.delivery_tag)
    ch.tx_rollback()  # the ack is forgotten: "a" is still unacked
    ch.basic_ack(second.delivery_tag)
    ch.tx_commit()  # "b" is acked
    ch.close()  # "a" returns to the queue
    wait_until(lambda: message_count(conn, q) == 1)
    m, _p, body = setup.basic_get(q, auto_ack=True)
    assert (body, m.redelivered) == (b"a", True)
    setup.queue_delete(q)


def test_transaction_reject_applies_on_commit(conn):
    q = unique("txreject")
    ch = conn.channel()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"x")
    wait_until(lambda: message_count(conn, q) == 1)
    ch.tx_select()
    m = ch.basic_get(q)[0]
    ch.basic_reject(m.delivery_tag, requeue=True)
    time.sleep(0.05)
    assert message_count(conn, q) == 0
    ch.tx_commit()
    assert message_count(conn, q) == 1
    ch.queue_delete(q)


@pytest.mark.parametrize("case,text", [
    ("commit", "PRECONDITION_FAILED - channel is not transactional"),
    ("rollback", "PRECONDITION_FAILED - channel is not transactional"),
    ("confirm-then-tx", "PRECONDITION_FAILED - cannot switch from confirm to tx mode"),
    ("tx-then-confirm", "PRECONDITION_FAILED - cannot switch from tx to confirm mode"),
])
def test_transaction_mode_errors(conn, case, text):
    ch = conn.channel()
    actions = {
        "commit": ch.tx_commit,
        "rollback": ch.tx_rollback,
        "confirm-then-tx": lambda: (ch.confirm_delivery(), ch.tx_select()),
        "tx-then-confirm": lambda: (ch.tx_select(), ch.confirm_delivery()),
    }
    assert channel_error(actions[case]) == (406, text)


def test_cc_and_bcc_headers_add_routing_keys(conn, ch):
    ex = unique("cc")
    ch.exchange_declare(ex, "direct")
    qs = {k: ch.queue_declare("", exclusive=True).method.queue for k in ("main", "cc", "bcc")}
    for k, q in qs.items():
        ch.queue_bind(q, ex, k)
    ch.basic_publish(ex, "main", b"m", pika.BasicProperties(headers={"CC": ["cc"], "BCC": ["bcc"]}))
    ch.basic_qos(prefetch_count=0)
    got = {k: ch.basic_get(q, auto_ack=True) for k, q in qs.items()}
    assert all(body == b"m" for _m, _p, body in got.values())
    for _m, props, _b in got.values():
        assert props.headers == {"CC": ["cc"]}  # BCC never reaches a consumer
    ch.exchange_delete(ex)


def test_large_message_round_trip(ch):
    q = ch.queue_declare("", exclusive=True).method.queue
    body = bytes(range(256)) * 4096  # 1 MiB: split over many body frames
    ch.confirm_delivery()
    ch.basic_publish("", q, body)
    m, _p, got = ch.basic_get(q, auto_ack=True)
    assert got == body


def test_properties_round_trip(ch):
    q = ch.queue_declare("", exclusive=True).method.queue
    props = pika.BasicProperties(
        content_type="application/json", content_encoding="utf-8", delivery_mode=2, priority=3,
        correlation_id="c-1", reply_to="r", expiration="60000", message_id="m-1", timestamp=1700000000,
        type="t", user_id="guest", app_id="app",
        headers={"s": "x", "i": 7, "b": True, "l": [1, "two"], "t": {"n": None}})
    ch.basic_publish("", q, b"{}", props)
    ch.basic_qos(prefetch_count=0)
    _m, got, _b = ch.basic_get(q, auto_ack=True)
    for name in ("content_type", "content_encoding", "delivery_mode", "priority", "correlation_id",
                 "reply_to", "expiration", "message_id", "timestamp", "type", "user_id", "app_id", "headers"):
        assert getattr(got, name) == getattr(props, name), name


def test_user_id_must_match_the_login(conn):
    ch = conn.channel()

    def publish():
        ch.basic_publish("", "anything", b"m", pika.BasicProperties(user_id="mallory"))
        ch.basic_qos(prefetch_count=0)

    assert channel_error(publish) == (406, "PRECONDITION_FAILED - user_id property set to 'mallory' but "
                                           "authenticated user was 'guest'")


def test_mandatory_to_an_exchange_whose_e2e_bindings_lead_nowhere_is_returned(conn):
    ch = conn.channel()
    src, dst = unique("src"), unique("dst")
    ch.exchange_declare(src, "fanout")
    ch.exchange_declare(dst, "fanout")
    ch.exchange_bind(dst, src)
    returned: list = []
    ch.add_on_return_callback(lambda c, m, p, b: returned.append(m.reply_code))
    ch.basic_publish(src, "", b"m", mandatory=True)
    wait_until(lambda: (conn.process_data_events(time_limit=0.02), returned)[1])
    assert returned == [312]
    ch.exchange_delete(src)
    ch.exchange_delete(dst)


def test_mandatory_to_a_deleted_queue_is_returned(conn):
    ch = conn.channel()
    q = unique("deleted")
    ch.queue_declare(q)
    ch.queue_delete(q)
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError):
        ch.basic_publish("", q, b"m", mandatory=True)


def test_mandatory_to_a_full_reject_publish_queue_is_nacked_not_returned(conn):
    ch = conn.channel()
    q = unique("full")
    ch.queue_declare(q, arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.NackError) as info:
        ch.basic_publish("", q, b"m", mandatory=True)
    assert info.value.messages == []  # pika lists returned messages here: none
    ch.queue_delete(q)


def test_transaction_mandatory_return_comes_with_the_commit(conn):
    ch = conn.channel()
    returned: list = []
    ch.add_on_return_callback(lambda c, m, p, b: returned.append(b))
    ch.tx_select()
    ch.basic_publish("amq.direct", unique("nobody"), b"unroutable", mandatory=True)
    ch.basic_qos(prefetch_count=0)  # a round trip: nothing returned before commit
    conn.process_data_events(time_limit=0.05)
    assert returned == []
    ch.tx_commit()
    conn.process_data_events(time_limit=0.05)
    assert returned == [b"unroutable"]


def test_transaction_publishes_are_discarded_when_the_channel_closes(conn):
    q = unique("tx-close")
    ch = conn.channel()
    ch.queue_declare(q)
    ch.tx_select()
    ch.basic_publish("", q, b"never")
    ch.close()
    time.sleep(0.05)
    assert message_count(conn, q) == 0
    conn.channel().queue_delete(q)


def test_transaction_commit_fails_when_a_queue_refuses_a_publish(conn):
    q = unique("txpartial")
    ch = conn.channel()
    ch.queue_declare(q, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    ch.tx_select()
    ch.basic_publish("", q, b"1")
    ch.basic_publish("", q, b"2")
    assert channel_error(ch.tx_commit) == (406, "PRECONDITION_FAILED - partial tx completion")
    assert message_count(conn, q) == 1
    conn.channel().queue_delete(q)


def test_transaction_commit_of_persistent_messages_survives_a_kill():
    from tests.support.node_process import NodeProcess

    first = NodeProcess(name="txdurable@localhost").start()
    try:
        c = connect(first.url)
        ch = c.channel()
        ch.queue_declare("txd", durable=True)
        ch.tx_select()
        for i in range(50):
            ch.basic_publish("", "txd", b"m%d" % i, pika.BasicProperties(delivery_mode=2))
        ch.tx_commit()  # commit-ok only after the fsync that holds them
        first.kill()
    finally:
        first.stop()
    second = NodeProcess(name="txdurable@localhost", port=first.port, dist_port=first.dist_port,
                         data_dir=first.data_dir).start()
    try:
        c = connect(second.url)
        assert c.channel().queue_declare("txd", passive=True).method.message_count == 50
        c.close()
    finally:
        second.stop()



def test_a_method_pipelined_behind_tx_commit_is_refused_like_rabbitmq(amqp_url):
    from urllib.parse import urlparse

    from pamqp import body as pbody
    from pamqp import commands, header
    from pamqp.frame import marshal

    from tests.integration.raw_amqp import RawClient

    url = urlparse(amqp_url)
    client = RawClient(url.hostname, url.port)
    try:
        client.handshake()
        client.send_frame(1, commands.Channel.Open())
        client.expect(commands.Channel.OpenOk)
        q = unique("txpipe")
        client.send_frame(1, commands.Queue.Declare(queue=q))
        client.expect(commands.Queue.DeclareOk)
        client.send_frame(1, commands.Tx.Select())
        client.expect(commands.Tx.SelectOk)
        client.send(b"".join([
            marshal(commands.Basic.Publish(routing_key=q), 1),
            marshal(header.ContentHeader(body_size=1), 1),
            marshal(pbody.ContentBody(b"x"), 1),
            marshal(commands.Tx.Commit(), 1),
            marshal(commands.Basic.Qos(prefetch_count=5), 1),  # without waiting for commit-ok
        ]))
        close = client.expect(commands.Connection.Close)
        assert (close.reply_code, close.reply_text) == (
            504, "CHANNEL_ERROR - unexpected command while processing 'tx.commit'")
    finally:
        client.close()
