"""Direct reply-to (amq.rabbitmq.reply-to): RPC replies bypass queues, as in RabbitMQ."""

from __future__ import annotations

import pika
import pytest


def _open(node):
    conn = pika.BlockingConnection(pika.URLParameters(node.url))
    return conn, conn.channel()


def test_rpc_round_trip_through_direct_reply_to(node):
    server_conn, server = _open(node)
    client_conn, client = _open(node)
    try:
        server.queue_declare("rpc_drt")
        replies: list[tuple[bytes, str | None]] = []
        client.basic_consume("amq.rabbitmq.reply-to", lambda ch, m, p, b: replies.append((b, p.correlation_id)),
                             auto_ack=True)
        client.basic_publish("", "rpc_drt", b"6",
                             pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id="c1"))
        method, props, body = None, None, None
        for _ in range(50):
            method, props, body = server.basic_get("rpc_drt", auto_ack=True)
            if method is not None:
                break
            server_conn.process_data_events(0.05)
        assert method is not None
        assert props.reply_to.startswith("amq.rabbitmq.reply-to.")
        server.basic_publish("", props.reply_to, b"36", pika.BasicProperties(correlation_id=props.correlation_id))
        deadline = 50
        while not replies and deadline:
            client_conn.process_data_events(0.05)
            deadline -= 1
        assert replies == [(b"36", "c1")]
    finally:
        client_conn.close()
        server_conn.close()


def test_reply_consumer_must_be_no_ack(node):
    conn, ch = _open(node)
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
            ch.basic_consume("amq.rabbitmq.reply-to", lambda *a: None, auto_ack=False)
        assert err.value.reply_code == 406
        assert err.value.reply_text == "PRECONDITION_FAILED - reply consumer cannot acknowledge"
    finally:
        conn.close()


def test_publishing_with_reply_to_needs_a_reply_consumer(node):
    conn, ch = _open(node)
    try:
        ch.basic_publish("", "nowhere", b"x", pika.BasicProperties(reply_to="amq.rabbitmq.reply-to"))
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
            ch.queue_declare("drt_after")
        assert err.value.reply_code == 406
        assert err.value.reply_text == "PRECONDITION_FAILED - fast reply consumer does not exist"
    finally:
        conn.close()
