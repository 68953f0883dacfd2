"""Hand-run benchmark of Router.route on the publish hot path (not a test).

    .venv/bin/python -m tests.routing.bench_routing
"""

from __future__ import annotations

import time

from broker.routing import Router
from cluster.metadata import AddVhost, Bind, DeclareExchange, DeclareQueue, MetadataState


def build(queues: int) -> Router:
    meta = MetadataState()
    router = Router()

    def do(cmd) -> None:
        applied = meta.apply(cmd)
        assert applied.ok, applied.result
        router.apply(applied.changes)

    do(AddVhost("/"))
    for type_ in ("direct", "fanout", "topic", "headers"):
        do(DeclareExchange("/", type_, type_, True))
    do(DeclareExchange("/", "ae-main", "direct", True, arguments={"alternate-exchange": "fanout"}))
    for i in range(queues):
        q = f"q{i}"
        do(DeclareQueue("/", q, True, False, None, {}, "n1"))
        do(Bind("/", "direct", q, "queue", f"key.{i}"))
        do(Bind("/", "topic", q, "queue", f"stock.{i % 50}.#"))
        do(Bind("/", "topic", q, "queue", f"*.eu.{i}"))
        do(Bind("/", "headers", q, "queue", "", {"x-match": "all", "shard": i % 100, "kind": "order"}))
        if i < 5:
            do(Bind("/", "fanout", q, "queue", ""))
    return router


def bench(label: str, fn, n: int = 200_000) -> None:
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    elapsed = time.perf_counter() - start
    print(f"{label:44s} {elapsed / n * 1e9:8.0f} ns/route  {n / elapsed / 1e6:6.2f} M routes/s")


def main() -> None:
    router = build(1000)
    route = router.route
    bench("default exchange (queue exists)", lambda: route("/", "", "q17", None))
    bench("direct, one queue", lambda: route("/", "direct", "key.17", None))
    bench("direct, no match", lambda: route("/", "direct", "nope", None))
    bench("fanout, 5 queues", lambda: route("/", "fanout", "", None))
    bench("direct miss -> alternate fanout (5 queues)", lambda: route("/", "ae-main", "nope", None))
    bench("topic, 2000 bindings, 20 matches", lambda: route("/", "topic", "stock.7.nyse.close", None), 20_000)
    bench("topic, 2000 bindings, 1 match via *", lambda: route("/", "topic", "x.eu.999", None), 20_000)
    bench("headers, 1000 bindings, 10 matches", lambda: route("/", "headers", "", {"shard": 3, "kind": "order"}),
          2_000)


if __name__ == "__main__":
    main()
