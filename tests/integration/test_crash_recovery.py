"""SIGKILL in the middle of a confirmed publishing run with consumers acking.

After a restart on the same data directory: every confirmed persistent message
is there with identical body, properties and headers; delivered-but-unacked
ones are flagged redelivered; acked ones come back only if their ack had not
been committed (counted and reported); nothing that was never published
appears.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pika
import pytest

from tests.support.node_process import NodeProcess

QUEUE = "crash_durable"
PUBLISHERS = 3


@dataclass
class Ledger:
    lock: threading.Lock = field(default_factory=threading.Lock)
    published: dict[str, tuple[bytes, dict]] = field(default_factory=dict)  # id -> (body, properties)
    confirmed: set[str] = field(default_factory=set)
    delivered: set[str] = field(default_factory=set)
    acked: set[str] = field(default_factory=set)


def _properties(pub: int, i: int) -> pika.BasicProperties:
    return pika.BasicProperties(
        delivery_mode=2,
        message_id=f"{pub}-{i}",
        correlation_id=f"corr-{i}",
        content_type="application/octet-stream",
        priority=i % 10,
        headers={"publisher": pub, "n": i, "nested": {"tags": ["a", "b"], "ok": True}, "big": 2**40},
    )


def _props_dict(p: pika.BasicProperties) -> dict:
    return {
        "delivery_mode": p.delivery_mode,
        "message_id": p.message_id,
        "correlation_id": p.correlation_id,
        "content_type": p.content_type,
        "priority": p.priority,
        "headers": p.headers,
    }


def _publish(url: str, pub: int, ledger: Ledger, stop: threading.Event) -> None:
    try:
        conn = pika.BlockingConnection(pika.URLParameters(url))
        ch = conn.channel()
        ch.confirm_delivery()
        for i in range(100_000):
            if stop.is_set():
                break
            props = _properties(pub, i)
            body = f"payload-{pub}-{i}-".encode() + bytes(range(256)) * (1 + i % 3)
            with ledger.lock:
                ledger.published[props.message_id] = (body, _props_dict(props))
            ch.basic_publish("", QUEUE, body, props)  # returns once confirmed
            with ledger.lock:
                ledger.confirmed.add(props.message_id)
    except Exception:
        return  # the node was killed under us


def _consume(url: str, ledger: Ledger, stop: threading.Event) -> None:
    try:
        conn = pika.BlockingConnection(pika.URLParameters(url))
        ch = conn.channel()
        ch.basic_qos(prefetch_count=200)
        count = 0
        for method, props, _body in ch.consume(QUEUE, inactivity_timeout=0.1):
            if stop.is_set():
                break
            if method is None:
                continue
            with ledger.lock:
                ledger.delivered.add(props.message_id)
            count += 1
            # Ack two of every three deliveries; keep the third unacked until the crash.
            if count % 3:
                ch.basic_ack(method.delivery_tag)
                with ledger.lock:
                    ledger.acked.add(props.message_id)
    except Exception:
        return


def _drain(url: str) -> list[tuple[str, bytes, dict, bool]]:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    got = []
    while True:
        method, props, body = ch.basic_get(QUEUE, auto_ack=True)
        if method is None:
            break
        got.append((props.message_id, body, _props_dict(props), method.redelivered))
    conn.close()
    return got


@pytest.mark.parametrize("cut_after", [40, 250, 700])
def test_confirmed_messages_survive_sigkill(cut_after: int) -> None:
    first = NodeProcess(name="crash@localhost").start()
    try:
        conn = pika.BlockingConnection(pika.URLParameters(first.url))
        conn.channel().queue_declare(QUEUE, durable=True)
        conn.close()

        ledger = Ledger()
        stop = threading.Event()
        threads = [threading.Thread(target=_publish, args=(first.url, p, ledger, stop), daemon=True)
                   for p in range(PUBLISHERS)]
        threads.append(threading.Thread(target=_consume, args=(first.url, ledger, stop), daemon=True))
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with ledger.lock:
                if len(ledger.confirmed) >= cut_after:
                    break
            time.sleep(0.005)
        first.kill()  # mid-run: publishers and the consumer are still going
        stop.set()
        for t in threads:
            t.join(10)
        with ledger.lock:
            assert len(ledger.confirmed) >= cut_after, "the run did not reach its cut point"
            published = dict(ledger.published)
            confirmed = set(ledger.confirmed)
            delivered = set(ledger.delivered)
            acked = set(ledger.acked)
    finally:
        first.stop()

    second = NodeProcess(name="crash@localhost", port=first.port, dist_port=first.dist_port,
                         data_dir=first.data_dir).start()
    try:
        recovered = _drain(second.url)
    finally:
        second.stop()

    ids = [r[0] for r in recovered]
    assert len(ids) == len(set(ids)), "a message came back twice"
    by_id = {r[0]: r for r in recovered}
    unknown = set(by_id) - set(published)
    assert not unknown, f"messages that were never published: {sorted(unknown)[:5]}"
    for message_id, body, props, _redelivered in recovered:
        assert body == published[message_id][0]
        assert props == published[message_id][1]
    missing = (confirmed - acked) - set(by_id)
    assert not missing, f"confirmed, unacked messages lost: {sorted(missing)[:5]}"
    for message_id in (delivered - acked) & set(by_id):
        assert by_id[message_id][3], f"{message_id} was delivered before the crash but not flagged redelivered"
    resurrected = acked & set(by_id)
    print(f"cut after {cut_after}: {len(confirmed)} confirmed, {len(delivered)} delivered, {len(acked)} acked, "
          f"{len(recovered)} recovered, {len(resurrected)} acked but not yet committed came back")
