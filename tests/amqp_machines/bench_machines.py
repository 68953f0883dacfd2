"""Hand-run benchmark of the hot paths (not a test; never asserts on time).

    .venv/bin/python -m tests.amqp_machines.bench_machines

publish: client bytes (many publishes per read, like a busy socket) -> PublishReceived.
deliver: Connection.deliver + client ack, the consumer side.
"""

from __future__ import annotations

import time

from pamqp import commands as pc

from broker.amqp import codec, spec

from .peer import opened, publish_frames


def bench_publish(n: int = 200_000, body: bytes = b"x" * 100, per_read: int = 200, confirm: bool = False) -> float:
    peer = opened()
    if confirm:
        peer.send(pc.Confirm.Select(), channel=1)
        peer.received()
    one = publish_frames(1, body, properties=pc.Basic.Properties(delivery_mode=2, content_type="text/plain"))
    batch = one * per_read
    conn = peer.conn
    count = 0
    start = time.perf_counter()
    for _ in range(n // per_read):
        events = conn.receive_data(batch)
        if confirm:
            for e in events:
                conn.confirm(1, e.seq)
            conn.data_to_send()
        count += len(events)
    elapsed = time.perf_counter() - start
    assert count == n
    return n / elapsed


def bench_deliver(n: int = 200_000, body: bytes = b"x" * 100, ack_every: int = 50) -> float:
    peer = opened()
    conn = peer.conn
    (event,) = peer.send(pc.Basic.Consume(queue="q", consumer_tag="c"), channel=1)
    raw = codec.encode_properties(spec.BasicProperties(delivery_mode=2, content_type="text/plain"))
    start = time.perf_counter()
    for i in range(1, n + 1):
        conn.deliver(1, "c", i, "", "q", raw, body)
        if i % ack_every == 0:
            conn.receive_data(codec.encode_basic_ack(1, i, True))
            conn.data_to_send()
    elapsed = time.perf_counter() - start
    return n / elapsed


def main() -> None:
    print(f"publish, 100 B, 200 per read:          {bench_publish():>10,.0f} msg/s")
    print(f"publish + confirm, 100 B:              {bench_publish(confirm=True):>10,.0f} msg/s")
    print(f"publish, 4 KiB body:                   {bench_publish(n=100_000, body=b'y' * 4000):>10,.0f} msg/s")
    print(f"deliver + multiple ack every 50, 100 B:{bench_deliver():>10,.0f} msg/s")


if __name__ == "__main__":
    main()
