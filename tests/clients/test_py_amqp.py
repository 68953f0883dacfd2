"""py-amqp (the `amqp` package, kombu's transport) against a real node.

Declares, publishing with publisher confirms (`confirm_publish=True` makes
`basic_publish` wait for the broker's ack), consuming with acks, basic.get,
and error replies surfacing as py-amqp's exception classes with RabbitMQ's
reply codes and texts.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import amqp
import amqp.exceptions as ae
import amqp.spec
import pytest

from tests.clients.common import BrokerAddress, unique


def open_connection(broker: BrokerAddress, **kwargs: Any) -> amqp.Connection:
    kwargs.setdefault("userid", "guest")
    kwargs.setdefault("password", "guest")
    kwargs.setdefault("connect_timeout", 5)
    c = amqp.Connection(host=broker.hostport, **kwargs)
    c.connect()
    return c


@pytest.fixture
def conn(broker: BrokerAddress) -> Iterator[amqp.Connection]:
    c = open_connection(broker, confirm_publish=True)
    try:
        yield c
    finally:
        try:
            c.close()
        except Exception:
            c.collect()


def drain_until(conn: amqp.Connection, done: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        left = deadline - time.monotonic()
        assert left > 0, "no delivery within the time limit"
        try:
            conn.drain_events(timeout=min(left, 0.5))
        except socket.timeout:
            pass


def test_declare_publish_confirm_get(conn: amqp.Connection) -> None:
    ch = conn.channel()
    q = unique("pyamqp-get")
    name, count, consumers = ch.queue_declare(q, durable=False, auto_delete=False)
    assert (name, count, consumers) == (q, 0, 0)
    for i in range(3):
        # Returns only once the node's basic.ack for this publish arrived.
        ch.basic_publish(amqp.Message(f"m{i}".encode(), content_type="text/plain",
                                      application_headers={"n": i}), exchange="", routing_key=q)
    assert ch.queue_declare(q, passive=True).message_count == 3
    m = ch.basic_get(q, no_ack=False)
    assert m.body == b"m0"
    assert m.content_type == "text/plain"
    assert m.headers == {"n": 0}
    assert m.delivery_info["message_count"] == 2
    assert m.delivery_info["redelivered"] is False
    ch.basic_ack(m.delivery_tag)
    m = ch.basic_get(q, no_ack=True)
    assert m.body == b"m1"
    # Rejected with requeue: it comes back, flagged redelivered, ahead of m2.
    m = ch.basic_get(q)
    assert m.body == b"m2"
    ch.basic_reject(m.delivery_tag, requeue=True)
    m = ch.basic_get(q)
    assert (m.body, m.delivery_info["redelivered"]) == (b"m2", True)
    ch.basic_ack(m.delivery_tag)
    assert ch.basic_get(q) is None
    assert ch.queue_delete(q) == 0


def test_consume_ack_and_cancel(conn: amqp.Connection) -> None:
    ch = conn.channel()
    q = unique("pyamqp-consume")
    ch.queue_declare(q, auto_delete=False)
    ch.basic_qos(0, 2, False)
    got: list[amqp.Message] = []
    tag = ch.basic_consume(q, callback=got.append)
    pub = conn.channel()
    for i in range(10):
        pub.basic_publish(amqp.Message(str(i).encode(), delivery_mode=2), routing_key=q)
    drain_until(conn, lambda: len(got) >= 2)
    # prefetch 2: nothing more until an ack.
    with pytest.raises(socket.timeout):
        conn.drain_events(timeout=0.3)
    assert len(got) == 2
    while len(got) < 10:
        before = len(got)
        ch.basic_ack(got[-1].delivery_tag, multiple=True)
        drain_until(conn, lambda: len(got) > before)
    ch.basic_ack(got[-1].delivery_tag, multiple=True)
    assert [m.body for m in got] == [str(i).encode() for i in range(10)]
    assert [m.delivery_info["delivery_tag"] for m in got] == list(range(1, 11))
    assert all(m.delivery_info["routing_key"] == q and m.delivery_info["exchange"] == "" for m in got)
    assert all(m.properties["delivery_mode"] == 2 for m in got)
    assert ch.basic_cancel(tag) == tag
    assert ch.queue_declare(q, passive=True)[1:] == (0, 0)
    ch.queue_delete(q)


def test_unacked_deliveries_return_when_channel_closes(conn: amqp.Connection) -> None:
    q = unique("pyamqp-return")
    ch = conn.channel()
    ch.queue_declare(q, auto_delete=False)
    for body in (b"a", b"b"):
        ch.basic_publish(amqp.Message(body), routing_key=q)
    got: list[amqp.Message] = []
    consumer = conn.channel()
    consumer.basic_consume(q, callback=got.append)
    drain_until(conn, lambda: len(got) == 2)
    consumer.close()
    m = ch.basic_get(q, no_ack=True)
    assert (m.body, m.delivery_info["redelivered"]) == (b"a", True)
    ch.queue_delete(q)


def test_exchanges_bindings_and_mandatory_return(conn: amqp.Connection) -> None:
    ch = conn.channel()
    ex = unique("pyamqp-topic")
    q = unique("pyamqp-bound")
    ch.exchange_declare(ex, "topic", durable=False, auto_delete=False)
    ch.queue_declare(q, auto_delete=False)
    ch.queue_bind(q, ex, routing_key="stock.*.nyse")
    returned: list[tuple[Any, ...]] = []
    ch.events["basic_return"].add(lambda *args: returned.append(args))
    ch.basic_publish(amqp.Message(b"hit"), exchange=ex, routing_key="stock.ibm.nyse")
    # Unroutable and mandatory: basic.return first, then the confirm.
    ch.basic_publish(amqp.Message(b"miss"), exchange=ex, routing_key="bond.x.nyse", mandatory=True)
    assert len(returned) == 1
    exc, exchange, routing_key, message = returned[0]
    assert (exc.reply_code, exchange, routing_key, message.body) == (312, ex, "bond.x.nyse", b"miss")
    assert "NO_ROUTE" in exc.reply_text
    assert ch.basic_get(q, no_ack=True).body == b"hit"
    ch.queue_unbind(q, ex, routing_key="stock.*.nyse")
    ch.basic_publish(amqp.Message(b"after unbind"), exchange=ex, routing_key="stock.ibm.nyse")
    assert ch.basic_get(q, no_ack=True) is None
    ch.exchange_delete(ex)
    ch.queue_delete(q)


def test_transactions(broker: BrokerAddress) -> None:
    # Without confirm_publish: py-amqp puts every channel of such a connection in
    # confirm mode, and a channel in confirm mode cannot become transactional.
    conn = open_connection(broker)
    q = unique("pyamqp-tx")
    ch = conn.channel()
    ch.queue_declare(q, auto_delete=False)
    ch.tx_select()
    ch.basic_publish(amqp.Message(b"t1"), routing_key=q)
    ch.tx_rollback()
    ch.basic_publish(amqp.Message(b"t2"), routing_key=q)
    assert ch.queue_declare(q, passive=True).message_count == 0
    ch.tx_commit()
    assert ch.basic_get(q, no_ack=True).body == b"t2"
    ch.queue_delete(q)
    conn.close()


def test_confirm_channel_cannot_become_transactional(conn: amqp.Connection) -> None:
    ch = conn.channel()
    # py-amqp selects confirm mode on a channel's first publish.
    ch.basic_publish(amqp.Message(b"x"), routing_key=unique("pyamqp-nowhere"))
    with pytest.raises(ae.PreconditionFailed) as info:
        ch.tx_select()
    assert info.value.reply_text == "PRECONDITION_FAILED - cannot switch from confirm to tx mode"


# ---------------------------------------------------------------------------- errors


def test_passive_declare_of_missing_queue_is_not_found(conn: amqp.Connection) -> None:
    ch = conn.channel()
    q = unique("pyamqp-missing")
    with pytest.raises(ae.NotFound) as info:
        ch.queue_declare(q, passive=True)
    assert info.value.reply_code == 404
    assert info.value.reply_text == f"NOT_FOUND - no queue '{q}' in vhost '/'"
    assert info.value.method_sig == (50, 10)
    # The connection survives a channel error.
    assert conn.channel().queue_declare(unique("pyamqp-after"), exclusive=True).message_count == 0


def test_redeclare_with_other_arguments_is_precondition_failed(conn: amqp.Connection) -> None:
    q = unique("pyamqp-args")
    ch = conn.channel()
    ch.queue_declare(q, auto_delete=False, arguments={"x-max-length": 10})
    with pytest.raises(ae.PreconditionFailed) as info:
        ch.queue_declare(q, auto_delete=False, arguments={"x-max-length": 20})
    assert info.value.reply_code == 406
    assert info.value.reply_text == (
        f"PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue '{q}' in vhost '/': "
        "received '20' but current is '10'")
    conn.channel().queue_delete(q)


# (declare options, arguments besides x-queue-type, refusal detail with {q} for the queue
# resource). py-amqp's queue_declare defaults to auto_delete=True, which a quorum queue
# refuses, so every case names its options.
QUORUM_REFUSALS = [
    ({"durable": True, "auto_delete": True}, {}, "invalid property 'auto-delete' for {q}"),
    ({"durable": False, "auto_delete": False}, {}, "invalid property 'non-durable' for {q}"),
    ({"durable": True, "auto_delete": False, "exclusive": True}, {}, "invalid property 'exclusive-owner' for {q}"),
    # auto-delete is checked before the exclusive owner and durability.
    ({"durable": False, "auto_delete": True, "exclusive": True}, {}, "invalid property 'auto-delete' for {q}"),
    ({"durable": True, "auto_delete": True}, {"x-max-priority": 5},
     "invalid arg 'x-max-priority' for {q} of queue type rabbit_quorum_queue"),
    # Refused for the queue type whatever its value...
    ({"durable": True, "auto_delete": False}, {"x-max-priority": "high"},
     "invalid arg 'x-max-priority' for {q} of queue type rabbit_quorum_queue"),
    # ...the first one in the client's table...
    ({"durable": True, "auto_delete": False}, {"x-queue-mode": "lazy", "x-max-priority": 5},
     "invalid arg 'x-queue-mode' for {q} of queue type rabbit_quorum_queue"),
    # ...after the generic argument checks.
    ({"durable": True, "auto_delete": False}, {"x-max-length": -1, "x-max-priority": 5},
     "invalid arg 'x-max-length' for {q}: {{value_negative,-1}}"),
]


@pytest.mark.parametrize(("options", "extra", "detail"), QUORUM_REFUSALS)
def test_quorum_queue_declare_refusals(
    conn: amqp.Connection, options: dict[str, bool], extra: dict[str, Any], detail: str
) -> None:
    """A quorum queue is durable, not auto-delete, not exclusive, and takes neither
    priorities nor a queue mode: RabbitMQ 3.10.8 refuses such a declare with 406, so
    code that only works against a more lenient broker is caught in testing."""
    q = unique("pyamqp-quorum")
    with pytest.raises(ae.PreconditionFailed) as info:
        conn.channel().queue_declare(q, arguments={**extra, "x-queue-type": "quorum"}, **options)
    assert info.value.reply_text == "PRECONDITION_FAILED - " + detail.format(q=f"queue '{q}' in vhost '/'")
    ch = conn.channel()
    with pytest.raises(ae.NotFound):
        ch.queue_declare(q, passive=True)


def test_quorum_queue_cannot_be_server_named_but_can_be_declared_durable(conn: amqp.Connection) -> None:
    with pytest.raises(ae.PreconditionFailed) as info:
        conn.channel().queue_declare("", durable=True, auto_delete=False, arguments={"x-queue-type": "quorum"})
    assert info.value.reply_text == (
        "PRECONDITION_FAILED - Cannot declare a server-named queue for type rabbit_quorum_queue")
    q = unique("pyamqp-quorum-ok")
    ch = conn.channel()
    args = {"x-queue-type": "quorum", "x-max-length": 5, "x-message-ttl": 1000, "x-single-active-consumer": True}
    assert ch.queue_declare(q, durable=True, auto_delete=False, arguments=args) == (q, 0, 0)
    ch.queue_delete(q)


def test_consuming_a_quorum_queue_under_global_qos_is_not_implemented(broker: BrokerAddress) -> None:
    """Celery detects quorum queues and turns global qos off because RabbitMQ refuses
    the consume with a 540 connection error; per-consumer qos is fine."""
    q = unique("pyamqp-quorum-qos")
    c = open_connection(broker)
    try:
        ch = c.channel()
        ch.queue_declare(q, durable=True, auto_delete=False, arguments={"x-queue-type": "quorum"})
        ch.basic_qos(0, 5, False)
        ch.basic_consume(q, callback=lambda m: None)
        other = c.channel()
        other.basic_qos(0, 5, True)
        with pytest.raises(ae.AMQPNotImplementedError) as info:
            other.basic_consume(q, callback=lambda m: None)
        assert info.value.reply_text == f"NOT_IMPLEMENTED - queue '{q}' in vhost '/' does not support global qos"
        assert info.value.method_sig == (60, 20)
    finally:
        c.collect()
    c = open_connection(broker)
    try:
        c.channel().queue_delete(q)
    finally:
        c.close()


def test_publish_to_missing_exchange_with_confirms_raises_not_found(conn: amqp.Connection) -> None:
    ch = conn.channel()
    ex = unique("pyamqp-nox")
    with pytest.raises(ae.NotFound) as info:
        ch.basic_publish(amqp.Message(b"x"), exchange=ex, routing_key="k")
    assert info.value.reply_code == 404
    assert info.value.reply_text == f"NOT_FOUND - no exchange '{ex}' in vhost '/'"
    assert info.value.method_sig == (60, 40)


def test_exclusive_queue_of_another_connection_is_resource_locked(conn: amqp.Connection,
                                                                  broker: BrokerAddress) -> None:
    q = unique("pyamqp-excl")
    conn.channel().queue_declare(q, exclusive=True)
    other = open_connection(broker)
    try:
        with pytest.raises(ae.ResourceLocked) as info:
            other.channel().basic_consume(q, callback=lambda m: None)
        assert info.value.reply_code == 405
        assert info.value.reply_text.startswith(f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}'")
    finally:
        other.close()


def test_unknown_delivery_tag_is_precondition_failed(conn: amqp.Connection) -> None:
    ch = conn.channel()
    ch.basic_ack(99)
    with pytest.raises(ae.PreconditionFailed) as info:
        # The channel.close arrives asynchronously; the next synchronous call sees it.
        ch.queue_declare(unique("pyamqp-x"), exclusive=True)
    assert info.value.reply_code == 406
    assert info.value.reply_text == "PRECONDITION_FAILED - unknown delivery tag 99"


def test_invalid_exchange_type_closes_the_connection(conn: amqp.Connection) -> None:
    ch = conn.channel()
    with pytest.raises(ae.InvalidCommand) as info:
        ch.exchange_declare(unique("pyamqp-bad"), "no-such-type")
    assert info.value.reply_code == 503
    assert info.value.reply_text == "COMMAND_INVALID - unknown exchange type 'no-such-type'"
    assert not conn.connected


def test_wrong_password_is_access_refused(broker: BrokerAddress) -> None:
    with pytest.raises(ae.AccessRefused) as info:
        open_connection(broker, password="not-the-password")
    assert info.value.reply_code == 403
    assert "ACCESS_REFUSED - Login was refused using authentication mechanism" in info.value.reply_text


def test_unknown_vhost_is_not_allowed(broker: BrokerAddress) -> None:
    with pytest.raises(ae.NotAllowed) as info:
        open_connection(broker, virtual_host=unique("nohost"))
    assert info.value.reply_code == 530
    assert info.value.reply_text.startswith("NOT_ALLOWED - vhost ")


def test_direct_reply_to_rpc(conn: amqp.Connection) -> None:
    """The RPC pattern over amq.rabbitmq.reply-to: no reply queue is declared."""
    client = conn.channel()
    requests = unique("pyamqp-rpc")
    client.queue_declare(requests, exclusive=True)
    replies: list[amqp.Message] = []
    client.basic_consume("amq.rabbitmq.reply-to", callback=replies.append, no_ack=True)
    client.basic_publish(amqp.Message(b"ping", reply_to="amq.rabbitmq.reply-to", correlation_id="c1"),
                         routing_key=requests)
    server = conn.channel()
    request = server.basic_get(requests, no_ack=True)
    assert request.body == b"ping"
    # The node rewrote reply_to to a routable name for this consumer.
    assert request.reply_to.startswith("amq.rabbitmq.reply-to.")
    server.basic_publish(amqp.Message(b"pong", correlation_id=request.correlation_id),
                         routing_key=request.reply_to)
    drain_until(conn, lambda: replies)
    assert (replies[0].body, replies[0].correlation_id) == (b"pong", "c1")


def test_nack_multiple_and_recover(conn: amqp.Connection) -> None:
    q = unique("pyamqp-nack")
    ch = conn.channel()
    ch.queue_declare(q, auto_delete=False)
    for i in range(4):
        ch.basic_publish(amqp.Message(str(i).encode()), routing_key=q)
    got: list[amqp.Message] = []
    consumer = conn.channel()
    tag = consumer.basic_consume(q, callback=got.append)
    drain_until(conn, lambda: len(got) == 4)
    # nack 1 and 2 (multiple) without requeue: dropped; 3 and 4 recovered: redelivered.
    # (py-amqp has no basic_nack; its framing layer sends the method as kombu would.)
    consumer.send_method(amqp.spec.Basic.Nack, "Lbb", (got[1].delivery_tag, True, False))
    consumer.basic_recover(requeue=True)
    drain_until(conn, lambda: len(got) == 6)
    assert [(m.body, m.delivery_info["redelivered"]) for m in got[4:]] == [(b"2", True), (b"3", True)]
    consumer.basic_ack(got[-1].delivery_tag, multiple=True)
    consumer.basic_cancel(tag)
    assert ch.queue_declare(q, passive=True).message_count == 0
    ch.queue_delete(q)


def test_exchange_to_exchange_binding(conn: amqp.Connection) -> None:
    ch = conn.channel()
    upstream, downstream = unique("pyamqp-up"), unique("pyamqp-down")
    q = unique("pyamqp-e2e")
    ch.exchange_declare(upstream, "fanout", auto_delete=False)
    ch.exchange_declare(downstream, "direct", auto_delete=False)
    ch.exchange_bind(destination=downstream, source=upstream)
    ch.queue_declare(q, auto_delete=False)
    ch.queue_bind(q, downstream, routing_key="k")
    ch.basic_publish(amqp.Message(b"via upstream"), exchange=upstream, routing_key="k")
    ch.basic_publish(amqp.Message(b"other key"), exchange=upstream, routing_key="nope")
    assert ch.basic_get(q, no_ack=True).body == b"via upstream"
    assert ch.basic_get(q, no_ack=True) is None
    ch.exchange_unbind(destination=downstream, source=upstream)
    ch.basic_publish(amqp.Message(b"after unbind"), exchange=upstream, routing_key="k")
    assert ch.basic_get(q, no_ack=True) is None
    for ex in (upstream, downstream):
        ch.exchange_delete(ex)
    ch.queue_delete(q)


def test_heartbeats_keep_an_idle_connection(broker: BrokerAddress) -> None:
    """With a 1 s heartbeat the node sends heartbeats while idle and takes the client's."""
    c = open_connection(broker, heartbeat=1)
    try:
        assert c.heartbeat == 1
        received = c.bytes_recv
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:
            try:
                c.drain_events(timeout=0.2)
            except socket.timeout:
                pass
            # Sends ours when due; raises ConnectionForced if the node's were missed.
            c.heartbeat_tick()
        assert c.bytes_recv > received, "no heartbeat from the node while idle"
        assert c.channel().queue_declare(unique("pyamqp-alive"), exclusive=True).message_count == 0
    finally:
        c.close()
