"""Quorum queues' delivery limit and `x-delivery-count` header, end to end with pika.

Checked against RabbitMQ 3.10.8 (run with LEVERET_COMPARE_URL=amqp://guest:guest@
127.0.0.1:5690/ after scripts/rabbitmq-ref start): the same assertions hold there.
Runs against one node and with the queue led by another node than the client's.
"""

from __future__ import annotations

import time
from typing import Any

import pika

from tests.integration.conftest import (  # noqa: F401 (fixtures)
    amqp_url_one_node_or_across_nodes,
    ch,
    conn,
    connect,
    get_body,
    unique,
    wait_until,
)

amqp_url = amqp_url_one_node_or_across_nodes


def _get(ch: Any, queue: str, timeout: float = 5.0) -> tuple[Any, Any, bytes]:
    deadline = time.monotonic() + timeout
    while True:
        method, props, body = ch.basic_get(queue)
        if method is not None:
            return method, props, body
        assert time.monotonic() < deadline, f"nothing arrived in {queue}"
        time.sleep(0.02)


def _quorum_with_dlq(ch: Any, limit: Any) -> tuple[str, str, str]:
    queue, dlx, dlq = unique("qdl"), unique("qdl-dlx"), unique("qdl-dlq")
    ch.exchange_declare(dlx, "fanout", auto_delete=True)
    # A classic dead-letter queue: a basic.get from a quorum one would add its own count.
    ch.queue_declare(dlq, durable=True)
    ch.queue_bind(dlq, dlx)
    ch.queue_declare(queue, durable=True, arguments={
        "x-queue-type": "quorum", "x-delivery-limit": limit, "x-dead-letter-exchange": dlx})
    return queue, dlx, dlq


def _cleanup(ch: Any, *names: str) -> None:
    for name in names:
        ch.queue_delete(name)


def test_rejected_with_requeue_until_dead_lettered_by_get(ch: Any) -> None:
    queue, dlx, dlq = _quorum_with_dlq(ch, 2)
    try:
        ch.basic_publish("", queue, b"m", pika.BasicProperties(headers={"h": 1}))
        seen = []
        for _ in range(3):
            method, props, _ = _get(ch, queue)
            seen.append((method.redelivered, props.headers))
            ch.basic_reject(method.delivery_tag, requeue=True)
        assert seen == [
            (False, {"h": 1, "x-delivery-count": 0}),
            (True, {"h": 1, "x-delivery-count": 1}),
            (True, {"h": 1, "x-delivery-count": 2}),
        ]
        method, props, body = _get(ch, dlq)
        ch.basic_ack(method.delivery_tag)
        assert body == b"m"
        headers = props.headers
        # The dead-lettered copy is the message as published: no x-delivery-count.
        assert "x-delivery-count" not in headers and headers["h"] == 1
        (death,) = headers["x-death"]
        assert (death["reason"], death["queue"], death["count"]) == ("delivery_limit", queue, 1)
        assert headers["x-first-death-reason"] == "delivery_limit"
        assert ch.queue_declare(queue, passive=True).method.message_count == 0
    finally:
        _cleanup(ch, queue, dlq)
        ch.exchange_delete(dlx)


def test_consumer_nacks_carry_the_count_from_the_first_return(conn: Any, ch: Any) -> None:
    queue, dlx, dlq = _quorum_with_dlq(ch, 2)
    try:
        ch.basic_publish("", queue, b"c")
        got: list[Any] = []

        def on_message(c: Any, method: Any, props: Any, body: bytes) -> None:
            got.append((method.redelivered, (props.headers or {}).get("x-delivery-count")))
            c.basic_nack(method.delivery_tag, requeue=True)

        tag = ch.basic_consume(queue, on_message)
        deadline = time.monotonic() + 10
        while len(got) < 3 and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.05)
        ch.basic_cancel(tag)
        assert got == [(False, None), (True, 1), (True, 2)]
        method, props, _ = _get(ch, dlq)
        ch.basic_ack(method.delivery_tag)
        assert props.headers["x-death"][0]["reason"] == "delivery_limit"
    finally:
        _cleanup(ch, queue, dlq)
        ch.exchange_delete(dlx)


def test_a_closed_channel_and_basic_recover_count_as_returns(amqp_url: str, ch: Any) -> None:
    queue = unique("qdl-close")
    ch.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum", "x-delivery-limit": 5})
    try:
        ch.basic_publish("", queue, b"r")
        other = connect(amqp_url)
        try:
            ch2 = other.channel()
            method, props, _ = _get(ch2, queue)
            assert props.headers == {"x-delivery-count": 0}
            ch2.close()
        finally:
            other.close()
        method, props, _ = _get(ch, queue)
        assert method.redelivered and props.headers == {"x-delivery-count": 1}
        ch.basic_recover(requeue=True)
        method, props, _ = _get(ch, queue)
        assert method.redelivered and props.headers == {"x-delivery-count": 2}
        ch.basic_ack(method.delivery_tag)
    finally:
        _cleanup(ch, queue)


def test_classic_queue_redeliveries_carry_no_count(ch: Any) -> None:
    queue = unique("qdl-classic")
    ch.queue_declare(queue)
    try:
        ch.basic_publish("", queue, b"x")
        for redelivered in (False, True):
            method, props, _ = _get(ch, queue)
            assert method.redelivered is redelivered and props.headers is None
            ch.basic_reject(method.delivery_tag, requeue=True)
    finally:
        _cleanup(ch, queue)
