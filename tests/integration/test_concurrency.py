"""Several clients at once: every confirmed message is delivered exactly once, in
per-publisher order, while publishers, consumers and declares interleave."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pika
from pamqp import commands

from tests.integration.conftest import connect, unique
from tests.integration.raw_amqp import RawClient


def test_concurrent_publishers_and_consumers_lose_and_duplicate_nothing(amqp_url):
    q = unique("busy")
    setup = connect(amqp_url)
    setup.channel().queue_declare(q, durable=True)
    publishers, per_publisher = 4, 300
    errors: list[BaseException] = []

    def publish(p: int) -> None:
        try:
            c = connect(amqp_url)
            ch = c.channel()
            ch.confirm_delivery()
            for i in range(per_publisher):
                mode = 2 if i % 2 else 1
                ch.basic_publish("", q, f"{p}:{i}".encode(), pika.BasicProperties(delivery_mode=mode))
            c.close()
        except BaseException as e:  # reported below
            errors.append(e)

    received: list[list[bytes]] = [[], [], []]

    def consume(k: int, stop: threading.Event) -> None:
        try:
            c = connect(amqp_url)
            ch = c.channel()
            ch.basic_qos(prefetch_count=20)

            def on_message(ch, method, _props, body):
                received[k].append(body)
                ch.basic_ack(method.delivery_tag)

            ch.basic_consume(q, on_message)
            while not stop.is_set():
                c.process_data_events(time_limit=0.05)
            c.close()
        except BaseException as e:
            errors.append(e)

    stop = threading.Event()
    consumers = [threading.Thread(target=consume, args=(k, stop)) for k in range(3)]
    producers = [threading.Thread(target=publish, args=(p,)) for p in range(publishers)]
    for t in consumers + producers:
        t.start()
    for t in producers:
        t.join(60)
    total = publishers * per_publisher
    deadline = time.monotonic() + 20
    while sum(map(len, received)) < total and time.monotonic() < deadline and not errors:
        time.sleep(0.05)
    time.sleep(0.1)  # anything extra (a duplicate) would arrive now
    stop.set()
    for t in consumers:
        t.join(10)
    assert not errors, errors
    everything = [b for r in received for b in r]
    assert len(everything) == total
    assert set(everything) == {f"{p}:{i}".encode() for p in range(publishers) for i in range(per_publisher)}
    # Each consumer sees each publisher's messages in publish order.
    for r in received:
        for p in range(publishers):
            seq = [int(b.split(b":")[1]) for b in r if b.startswith(f"{p}:".encode())]
            assert seq == sorted(seq)
    assert all(received), "round robin should give every consumer some"
    ch = setup.channel()
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    ch.queue_delete(q)
    setup.close()


def test_a_backlog_larger_than_the_output_bound_reaches_an_unlimited_consumer(amqp_url):
    """Deliveries beyond the node's per-connection output bound wait for the socket to drain,
    then continue: nothing stalls and order holds."""
    q = unique("bulk")
    pub = connect(amqp_url)
    ch = pub.channel()
    ch.queue_declare(q)
    ch.confirm_delivery()
    body = b"x" * 10_000
    n = 400  # ~4 MB, several times the output bound
    for i in range(n):
        ch.basic_publish("", q, i.to_bytes(4, "big") + body)
    consumer = connect(amqp_url)
    cch = consumer.channel()
    got: list[int] = []

    def on_message(c, method, _props, b):
        got.append(int.from_bytes(b[:4], "big"))
        c.basic_ack(method.delivery_tag)

    cch.basic_consume(q, on_message)
    deadline = time.monotonic() + 30
    while len(got) < n and time.monotonic() < deadline:
        consumer.process_data_events(time_limit=0.05)
    assert got == list(range(n))
    ch.queue_delete(q)
    consumer.close()
    pub.close()


def test_consumer_socket_dropped_mid_delivery_returns_everything(amqp_url):
    q = unique("dropped")
    pub = connect(amqp_url)
    ch = pub.channel()
    ch.queue_declare(q)
    ch.confirm_delivery()
    n = 300
    for i in range(n):
        ch.basic_publish("", q, b"y" * 10_000)
    p = pika.URLParameters(amqp_url)
    raw = RawClient(p.host, p.port)
    raw.handshake()
    raw.send_frame(1, commands.Channel.Open())
    raw.expect(commands.Channel.OpenOk)
    raw.send_frame(1, commands.Basic.Consume(queue=q, consumer_tag="c"))
    raw.frames(timeout=0.5, stop_after=20)  # some deliveries arrive, the rest is in flight
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()  # linger 0: a reset, nothing acked
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if ch.queue_declare(q, passive=True).method.message_count == n:
            break
        time.sleep(0.05)
    assert ch.queue_declare(q, passive=True).method.message_count == n
    got = ch.basic_get(q, auto_ack=True)
    assert got[0].redelivered
    ch.queue_delete(q)
    pub.close()
