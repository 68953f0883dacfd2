"""The six RabbitMQ tutorials, as their pika versions do them, against a real node."""

from __future__ import annotations

import threading
import time
import uuid

import pika

from tests.integration.conftest import connect, consume_n, get_body, unique


def test_hello_world(amqp_url):
    q = unique("hello")
    sender = connect(amqp_url)
    sender.channel().queue_declare(q)
    sender.channel().basic_publish("", q, b"Hello World!")
    sender.close()

    receiver = connect(amqp_url)
    ch = receiver.channel()
    ch.queue_declare(q)
    got = consume_n(receiver, ch, q, 1, auto_ack=True)
    assert [b for _m, _p, b in got] == [b"Hello World!"]
    ch.queue_delete(q)
    receiver.close()


def test_work_queues_durable_persistent_manual_ack_prefetch_one(amqp_url):
    q = unique("task_queue")
    producer = connect(amqp_url)
    pch = producer.channel()
    pch.queue_declare(q, durable=True)
    for i in range(6):
        pch.basic_publish("", q, f"task {i}".encode(),
                          pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent))

    # Two workers with prefetch 1: a worker holding an unacked task gets no second one.
    workers = [connect(amqp_url) for _ in range(2)]
    chans = [w.channel() for w in workers]
    held: list[list] = [[], []]
    for i, ch in enumerate(chans):
        ch.basic_qos(prefetch_count=1)
        ch.basic_consume(q, lambda c, m, p, b, i=i: held[i].append((m, p, b)))
    deadline = time.monotonic() + 5
    while (len(held[0]) < 1 or len(held[1]) < 1) and time.monotonic() < deadline:
        for w in workers:
            w.process_data_events(time_limit=0.02)
    for w in workers:
        w.process_data_events(time_limit=0.2)
    assert [len(h) for h in held] == [1, 1]
    assert all(h[0][1].delivery_mode == 2 for h in held)

    # Acking lets each worker take the next one; all six are done exactly once.
    done: list[bytes] = []
    deadline = time.monotonic() + 10
    while len(done) < 6 and time.monotonic() < deadline:
        for i, (w, ch) in enumerate(zip(workers, chans)):
            while held[i]:
                m, _p, b = held[i].pop(0)
                done.append(b)
                ch.basic_ack(m.delivery_tag)
            w.process_data_events(time_limit=0.02)
    assert sorted(done) == sorted(f"task {i}".encode() for i in range(6))
    assert pch.queue_declare(q, durable=True).method.message_count == 0
    pch.queue_delete(q)
    for w in workers:
        w.close()
    producer.close()


def test_publish_subscribe_fanout_exclusive_server_named_queues(amqp_url):
    ex = unique("logs")
    subscribers = []
    for _ in range(2):
        c = connect(amqp_url)
        ch = c.channel()
        ch.exchange_declare(ex, exchange_type="fanout")
        q = ch.queue_declare("", exclusive=True).method.queue
        assert q.startswith("amq.gen-")
        ch.queue_bind(q, ex)
        subscribers.append((c, ch, q))
    assert subscribers[0][2] != subscribers[1][2]

    pub = connect(amqp_url)
    pub.channel().basic_publish(ex, "", b"log line")
    for c, ch, q in subscribers:
        assert get_body(ch, q) == b"log line"

    # Closing the subscriber's connection removes its exclusive queue.
    c, _ch, q = subscribers[0]
    c.close()
    deadline = time.monotonic() + 5
    while True:
        try:
            pub.channel().queue_declare(q, passive=True)
        except pika.exceptions.ChannelClosedByBroker as e:
            if e.reply_code == 404:
                break
            assert e.reply_code == 405  # still there, owned by the closing connection
        assert time.monotonic() < deadline, "exclusive queue outlived its connection"
        time.sleep(0.02)
    subscribers[1][0].close()
    pub.channel().exchange_delete(ex)
    pub.close()


def test_routing_direct(amqp_url):
    ex = unique("direct_logs")
    c = connect(amqp_url)
    ch = c.channel()
    ch.exchange_declare(ex, exchange_type="direct")
    errors = ch.queue_declare("", exclusive=True).method.queue
    everything = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(errors, ex, routing_key="error")
    for severity in ("info", "warning", "error"):
        ch.queue_bind(everything, ex, routing_key=severity)
    for severity in ("info", "warning", "error", "debug"):
        ch.basic_publish(ex, severity, severity.encode())
    assert get_body(ch, errors) == b"error"
    assert get_body(ch, errors, timeout=0.2) is None
    assert [get_body(ch, everything) for _ in range(3)] == [b"info", b"warning", b"error"]
    assert get_body(ch, everything, timeout=0.2) is None
    ch.exchange_delete(ex)
    c.close()


def test_topics(amqp_url):
    ex = unique("topic_logs")
    c = connect(amqp_url)
    ch = c.channel()
    ch.exchange_declare(ex, exchange_type="topic")
    q1 = ch.queue_declare("", exclusive=True).method.queue
    q2 = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q1, ex, routing_key="*.orange.*")
    ch.queue_bind(q2, ex, routing_key="*.*.rabbit")
    ch.queue_bind(q2, ex, routing_key="lazy.#")
    keys = ["quick.orange.rabbit", "lazy.orange.elephant", "quick.orange.fox", "lazy.brown.fox",
            "lazy.pink.rabbit", "quick.brown.fox", "orange", "quick.orange.male.rabbit",
            "lazy.orange.male.rabbit", "lazy"]
    for k in keys:
        ch.basic_publish(ex, k, k.encode())
    time.sleep(0.05)
    from tests.integration.conftest import drain
    assert drain(ch, q1) == [b"quick.orange.rabbit", b"lazy.orange.elephant", b"quick.orange.fox"]
    assert drain(ch, q2) == [b"quick.orange.rabbit", b"lazy.orange.elephant", b"lazy.brown.fox",
                             b"lazy.pink.rabbit", b"lazy.orange.male.rabbit", b"lazy"]
    ch.exchange_delete(ex)
    c.close()


def test_rpc_reply_to_and_correlation_id(amqp_url):
    rpc_queue = unique("rpc_queue")
    stop = threading.Event()
    ready = threading.Event()

    def server() -> None:
        c = connect(amqp_url)
        ch = c.channel()
        ch.queue_declare(rpc_queue)
        ch.basic_qos(prefetch_count=1)

        def on_request(ch, method, props, body):
            n = int(body)
            a, b = 0, 1
            for _ in range(n):
                a, b = b, a + b
            ch.basic_publish("", props.reply_to, str(a).encode(),
                             pika.BasicProperties(correlation_id=props.correlation_id))
            ch.basic_ack(method.delivery_tag)

        ch.basic_consume(rpc_queue, on_request)
        ready.set()
        while not stop.is_set():
            c.process_data_events(time_limit=0.05)
        ch.queue_delete(rpc_queue)
        c.close()

    t = threading.Thread(target=server, daemon=True)
    t.start()
    assert ready.wait(10)

    c = connect(amqp_url)
    ch = c.channel()
    callback_queue = ch.queue_declare("", exclusive=True).method.queue
    responses: dict[str, bytes] = {}
    ch.basic_consume(callback_queue, lambda c_, m, p, b: responses.__setitem__(p.correlation_id, b),
                     auto_ack=True)
    try:
        for n, expected in ((10, b"55"), (30, b"832040")):
            corr = str(uuid.uuid4())
            ch.basic_publish("", rpc_queue, str(n).encode(),
                             pika.BasicProperties(reply_to=callback_queue, correlation_id=corr))
            deadline = time.monotonic() + 5
            while corr not in responses and time.monotonic() < deadline:
                c.process_data_events(time_limit=0.05)
            assert responses.get(corr) == expected
    finally:
        stop.set()
        t.join(10)
        c.close()
