"""Differential test, third generator: routing, queue limits and object lifecycles.

Same style as `test_differential.py` (whose Runner, name resolution, normalisation and
`check_sequence` this module reuses): `gen_routing_ops(seed, n)` draws a reproducible list
of operations, pure data, never dependent on what a broker answers. It covers what the two
other generators do not:

- exchange-to-exchange bindings (exchange.bind / unbind, chains and cycles, auto-delete
  exchanges going away with their last binding, internal exchanges), alternate exchanges
  (`alternate-exchange` pointing at a pool exchange, itself or a missing one), headers
  exchanges with x-match all / any / all-with-x / any-with-x and `x-` keys on both sides,
  topic edge patterns (`#`, `*`, `#.#`, empty words such as `a..b` and `.`);
- mandatory publishes and basic.return, with and without publisher confirms;
- queue.delete if-unused / if-empty, queue.purge counts, x-max-length and
  x-max-length-bytes with drop-head / reject-publish / reject-publish-dlx, x-message-ttl and
  per-message expiration with dead-lettering;
- x-single-active-consumer, exclusive consumers, exclusive and auto-delete queues declared
  and consumed across two connections, the second of which is sometimes closed;
- tx.select / commit / rollback around publishes and acks, passive declares, and the reply
  code and text of every failure.

Two connections: "main" (one channel for declares, publishes, basic.get, acks and tx, plus a
consumer channel) and "other" (a consumer channel, and fresh channels for declares). Every
consumer channel has a per-consumer prefetch of 1, so which consumer holds what is visible.
After each operation `settle()` makes its consequences visible without relying on timing: a
passive declare of every pool queue (a round trip through each queue), then a synchronous
round trip on both consumer channels; deliveries are recorded per consumer tag in arrival
order, with broker-sent basic.cancel.

Known difference from RabbitMQ 3.10.8 (a RabbitMQ bug, left): when the active consumer of
a single-active-consumer queue is cancelled while messages are ready, RabbitMQ delivers
nothing to the consumer that becomes active until the next publish to the queue (its
basic_cancel handler never runs the message queue); Leveret delivers at once. Minimal:
x-single-active-consumer queue, consumers a then b (prefetch 1), publish m0 and m1 (a gets
m0), cancel a: b gets m1 from Leveret, nothing from RabbitMQ. Sequences that do this fail
the comparison.

Without LEVERET_COMPARE_URL only the base invariants are checked (every delivered body was
published, a body comes again only redelivered or dead-lettered, counts are never negative,
a purged queue has nothing to get). With it every outcome must equal RabbitMQ's.

LEVERET_DIFF_SEEDS (default 12), LEVERET_DIFF_OPS (default 50), LEVERET_DIFF_SEED_BASE
(default 0) and LEVERET_DIFF_LEVERET_URL as in test_differential.py.
"""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from tests.differential.test_differential import (
    Runner,
    check_sequence,
    run_size,
    settlement_fields,
)

SEEDS, OPS, SEED_BASE = run_size(12, 50)

N_EXCHANGES = 4
N_QUEUES = 4
N_CTAGS = 3  # consumer tag slots per consumer channel
CONSUMER_CHANNELS = ("main", "other")
EXCHANGE_TYPES = ["direct", "fanout", "topic", "headers"]
ROUTING_KEYS = ["", "a", "a.b", "a.b.c", "a..b", ".", "a.", ".a", "b.a"]
BIND_KEYS = ["", "a", "a.b", "#", "*", "#.#", "*.#", "a.#", "#.a", "a.*", "*.b", "a..b", ".", "a.*.c", "#.b.#"]
HEADER_BINDINGS = [
    {"x-match": "any", "h1": "a", "h2": 2},
    {"x-match": "all", "h1": "a", "h2": 1},
    {"x-match": "all-with-x", "x-k": "v"},
    {"x-match": "any-with-x", "x-k": "v", "h1": "b"},
    {"x-match": "any", "x-k": "v"},
    {"x-match": "all", "x-k": "v", "h1": "a"},
    {"h1": "a"},
    {"x-match": "all"},
    {"x-match": "any"},
    {"x-match": "bogus"},
]
HEADER_SETS = [None, {"h1": "a"}, {"h1": "a", "h2": 1}, {"h2": 2}, {"x-k": "v"}, {"x-k": "v", "h1": "a"},
               {"h1": "b", "x-k": "w"}]
BODY_SIZES = [8, 8, 16, 24]


def _xsym(rng: random.Random, builtin: float = 0.1, routes: bool = True) -> str:
    """An exchange name. Where it `routes` (publish, bind) the only built-in one is the
    default exchange: the amq.* ones are shared with whatever else uses the broker, whose
    messages would reach this run's queues (and this run's messages theirs)."""
    r = rng.random()
    if r < builtin:
        if routes:
            return "="
        return "=" + rng.choice(["", "amq.direct", "amq.fanout", "amq.topic", "amq.headers", "amq.match"])
    if r < builtin + 0.05:
        return "@xmissing"
    return f"@x{rng.randrange(N_EXCHANGES)}"


def _qsym(rng: random.Random) -> str:
    return "@qmissing" if rng.random() < 0.04 else f"@q{rng.randrange(N_QUEUES)}"


def _exchange_profile(rng: random.Random, j: int) -> dict[str, Any]:
    args: dict[str, Any] = {}
    if rng.random() < 0.35:
        args["alternate-exchange"] = rng.choice([f"@x{(j + 1) % N_EXCHANGES}", f"@x{rng.randrange(N_EXCHANGES)}",
                                                 "@xmissing", ""])
    return {"type": rng.choice(EXCHANGE_TYPES), "durable": rng.random() < 0.2, "auto_delete": rng.random() < 0.25,
            "internal": rng.random() < 0.08, "arguments": args}


def _queue_args(rng: random.Random, j: int) -> dict[str, Any]:
    args: dict[str, Any] = {}
    r = rng.random()
    if r < 0.3:
        args["x-max-length"] = rng.choice([0, 1, 2])
    elif r < 0.5:
        args["x-max-length-bytes"] = rng.choice([0, 20, 40])
    if r < 0.5 and rng.random() < 0.8:
        args["x-overflow"] = rng.choice(["drop-head", "reject-publish", "reject-publish-dlx"])
    if rng.random() < 0.2:
        args["x-message-ttl"] = rng.choice([0, 600000])
    r = rng.random()
    if r < 0.3:
        args["x-dead-letter-exchange"] = ""
        args["x-dead-letter-routing-key"] = f"@q{rng.choice([(j + 1) % N_QUEUES, j, rng.randrange(N_QUEUES)])}"
    elif r < 0.45:
        args["x-dead-letter-exchange"] = rng.choice([f"@x{rng.randrange(N_EXCHANGES)}", "@xmissing"])
        if rng.random() < 0.4:
            args["x-dead-letter-routing-key"] = rng.choice(ROUTING_KEYS[1:4])
    if rng.random() < 0.2:
        args["x-single-active-consumer"] = True
    return args


def _queue_profile(rng: random.Random, j: int) -> dict[str, Any]:
    return {"durable": rng.random() < 0.2, "exclusive": rng.random() < 0.1, "auto_delete": rng.random() < 0.2,
            "arguments": _queue_args(rng, j)}


def gen_routing_ops(seed: int, n: int) -> list[dict[str, Any]]:
    """A reproducible list of operations for `seed`: a setup prefix, then `n` random ones."""
    rng = random.Random(seed)
    xprof = {f"@x{j}": _exchange_profile(rng, j) for j in range(N_EXCHANGES)}
    qprof = {f"@q{j}": _queue_profile(rng, j) for j in range(N_QUEUES)}
    ops: list[dict[str, Any]] = []

    def exchange_declare(x: str, usual: bool) -> dict[str, Any]:
        op: dict[str, Any] = {"op": "exchange_declare", "exchange": x, "passive": False}
        prof = xprof.get(x)
        if prof is not None and usual:
            op.update(prof)
        else:
            op.update(_exchange_profile(rng, rng.randrange(N_EXCHANGES)))
            if rng.random() < 0.04:
                op["type"] = "x-bogus"
        return op

    def queue_declare(q: str, usual: bool) -> dict[str, Any]:
        op: dict[str, Any] = {"op": "queue_declare", "queue": q, "passive": False, "conn": "main"}
        prof = qprof.get(q)
        op.update(prof if prof is not None and usual else _queue_profile(rng, rng.randrange(N_QUEUES)))
        return op

    def binding_args(x_type: str | None) -> dict[str, Any] | None:
        if x_type == "headers" or rng.random() < 0.1:
            return rng.choice(HEADER_BINDINGS)
        return None

    def xtype(x: str) -> str | None:
        return xprof[x]["type"] if x in xprof else None

    for j in range(N_EXCHANGES):
        ops.append(exchange_declare(f"@x{j}", True))
    for j in range(N_QUEUES):
        ops.append(queue_declare(f"@q{j}", True))
    for _ in range(rng.randint(2, 5)):
        x = f"@x{rng.randrange(N_EXCHANGES)}"
        ops.append({"op": "queue_bind", "queue": f"@q{rng.randrange(N_QUEUES)}", "exchange": x,
                    "routing_key": rng.choice(BIND_KEYS), "arguments": binding_args(xtype(x))})
    for _ in range(rng.randint(1, 3)):
        src = f"@x{rng.randrange(N_EXCHANGES)}"
        ops.append({"op": "exchange_bind", "destination": f"@x{rng.randrange(N_EXCHANGES)}", "source": src,
                    "routing_key": rng.choice(BIND_KEYS), "arguments": binding_args(xtype(src))})

    weights = {
        "exchange_declare": 6, "exchange_delete": 3, "exchange_bind": 6, "exchange_unbind": 3,
        "queue_declare": 7, "queue_bind": 7, "queue_unbind": 3, "queue_purge": 2, "queue_delete": 3,
        "publish": 24, "get": 8, "ack": 3, "nack": 2, "reject": 2, "consume": 6, "cancel": 3,
        "consumer_settle": 5, "close_other": 1, "tx_select": 1, "tx_commit": 2, "tx_rollback": 1,
        "confirm_select": 1,
    }
    kinds = list(weights)
    w = [weights[k] for k in kinds]
    for i in range(n):
        kind = rng.choices(kinds, w)[0]
        op: dict[str, Any] = {"op": kind}
        if kind == "exchange_declare":
            op = exchange_declare(_xsym(rng, 0.05, routes=False), rng.random() < 0.75)
            op["passive"] = rng.random() < 0.12
        elif kind == "exchange_delete":
            op["exchange"] = _xsym(rng, 0.05, routes=False)
            op["if_unused"] = rng.random() < 0.4
        elif kind in ("exchange_bind", "exchange_unbind"):
            op["destination"] = _xsym(rng, 0.1)
            op["source"] = src = _xsym(rng, 0.15)
            op["routing_key"] = rng.choice(BIND_KEYS)
            op["arguments"] = binding_args(xtype(src))
        elif kind == "queue_declare":
            op = queue_declare(_qsym(rng), rng.random() < 0.8)
            op["passive"] = rng.random() < 0.12
            op["conn"] = "other" if rng.random() < 0.2 else "main"
        elif kind in ("queue_bind", "queue_unbind"):
            op["queue"] = _qsym(rng)
            op["exchange"] = x = _xsym(rng, 0.15)
            op["routing_key"] = rng.choice(BIND_KEYS)
            op["arguments"] = binding_args(xtype(x))
        elif kind == "queue_purge":
            op["queue"] = _qsym(rng)
        elif kind == "queue_delete":
            op["queue"] = _qsym(rng)
            op["if_empty"] = rng.random() < 0.4
            op["if_unused"] = rng.random() < 0.4
            # Usually declared again at once (its usual way), so that messages keep flowing.
            op["redeclare"] = qprof.get(op["queue"]) if rng.random() < 0.6 else None
        elif kind == "publish":
            r = rng.random()
            if r < 0.15:
                op["exchange"], op["routing_key"] = "=", _qsym(rng)
            else:
                op["exchange"] = _xsym(rng, 0.12)
                op["routing_key"] = rng.choice(ROUTING_KEYS + ["@q0", "@q1"])
            size = rng.choice(BODY_SIZES)
            op["bodies"] = [f"m{seed}-{i}-{k}".ljust(size, ".") for k in range(rng.choice([1, 1, 1, 2, 3]))]
            op["mandatory"] = rng.random() < 0.4
            op["headers"] = rng.choice(HEADER_SETS)
            r = rng.random()
            op["expiration"] = None if r < 0.85 else "0" if r < 0.95 else "600000"
        elif kind == "get":
            op["queue"] = _qsym(rng)
            op["auto_ack"] = rng.random() < 0.3
        elif kind in ("ack", "nack", "reject"):
            op["unknown"] = rng.random() < 0.05
            op.update(settlement_fields(rng, kind))
        elif kind == "consume":
            op["conn"] = c = rng.choice(CONSUMER_CHANNELS)
            op["ctag"] = f"{c[0]}{rng.randrange(N_CTAGS)}"
            op["queue"] = _qsym(rng)
            op["exclusive"] = rng.random() < 0.15
        elif kind == "cancel":
            op["conn"] = c = rng.choice(CONSUMER_CHANNELS)
            op["ctag"] = f"{c[0]}{rng.randrange(N_CTAGS)}"
        elif kind == "consumer_settle":
            op["conn"] = rng.choice(CONSUMER_CHANNELS)
            op["how"] = rng.choice(["ack", "ack", "requeue", "drop"])
        ops.append(op)
    return ops


class RoutingRunner(Runner):
    """Plays a routing op list over a main connection (op channel + consumer channel) and an
    "other" connection (consumer channel + throwaway channels for declares)."""

    def _connect(self) -> None:
        import pika

        self.conn = pika.BlockingConnection(self._params())
        self._open_channel()
        self.probe = self.conn.channel()
        self.cons: dict[str, dict[str, Any]] = {}
        self._consumer_channel("main")
        if getattr(self, "other", None) is None or not self.other.is_open:
            self.other = None
            self._consumer_channel("other")

    def _conn_of(self, which: str):
        import pika

        if which == "main":
            return self.conn
        if self.other is None or not self.other.is_open:
            self.other = pika.BlockingConnection(self._params())
        return self.other

    def _consumer_channel(self, which: str) -> None:
        """A fresh consumer channel on `which` connection, per-consumer prefetch 1."""
        ch = self._conn_of(which).channel()
        ch.basic_qos(prefetch_count=1)
        st: dict[str, Any] = {"ch": ch, "consumers": {}, "inbox": [], "unacked": [], "cancelled": []}
        ch.add_on_cancel_callback(lambda frame: st["cancelled"].append(frame.method.consumer_tag))
        self.cons[which] = st

    def _reconnect(self) -> None:
        self.close()
        self.other = None
        time.sleep(0.1)  # exclusive queues of the old connections go away asynchronously
        self._connect()

    def cleanup(self) -> None:
        import pika
        import pika.exceptions as pe

        time.sleep(0.05)  # exclusive queues of the closed connections go away asynchronously
        c = pika.BlockingConnection(self._params())
        try:
            for q in [f"{self.prefix}.q{i}" for i in range(N_QUEUES)] + [f"{self.prefix}.qmissing"]:
                try:
                    c.channel().queue_delete(q)
                except pe.ChannelClosedByBroker:
                    pass  # still another connection's exclusive queue: it goes with that connection
            for x in [f"x{i}" for i in range(N_EXCHANGES)] + ["xmissing"]:
                c.channel().exchange_delete(f"{self.prefix}.{x}")
        finally:
            if c.is_open:
                c.close()

    # ---- running ----
    def record(self, op: dict, out: Any) -> Any:
        return (out, self.settled())

    def settle(self) -> dict[str, Any]:
        """Make every consequence of the last operation visible, then collect deliveries."""
        import pika.exceptions as pe

        if self.dlx_seen:
            time.sleep(0.01)  # expiry timers and dead-lettering of RabbitMQ's queue processes
        for _ in range(2 if self.dlx_seen else 1):
            for j in range(N_QUEUES):
                try:
                    self.probe.queue_declare(self.queue(f"@q{j}"), passive=True)
                except pe.ChannelClosedByBroker:
                    self.probe = self.conn.channel()
        out: dict[str, Any] = {}
        for which in CONSUMER_CHANNELS:
            st = self.cons[which]
            try:
                st["ch"].exchange_declare("amq.direct", passive=True)
            except pe.ChannelClosedByBroker as e:
                out.setdefault("closed", {})[which] = (e.reply_code, self.norm(e.reply_text))
                self._consumer_channel(which)
                continue
            except pe.ConnectionClosedByBroker as e:
                out.setdefault("closed", {})[which] = (e.reply_code, self.norm(e.reply_text))
                self._consumer_channel(which)
                continue
            self._conn_of(which).process_data_events(time_limit=0)
        for which in CONSUMER_CHANNELS:
            st = self.cons[which]
            for ctag, method, props, body in st["inbox"]:
                q = st["consumers"].get(ctag, "?")
                self._delivered(q, body, method.redelivered, props)
                st["unacked"].append((method.delivery_tag, ctag))
                out.setdefault("deliveries", {}).setdefault(ctag, []).append(
                    (body.decode(), method.redelivered, self.norm(method.exchange), self.norm(method.routing_key),
                     self._props(props)))
            st["inbox"].clear()
            for ctag in st["cancelled"]:
                out.setdefault("broker_cancelled", []).append(ctag)
                st["consumers"].pop(ctag, None)
            st["cancelled"].clear()
        return out

    def _do(self, op: dict) -> Any:
        import pika.exceptions as pe

        k = op["op"]
        ch = self.ch
        if k == "exchange_declare":
            args = self._args(op["arguments"])
            ch.exchange_declare(self.exchange(op["exchange"]), op["type"], passive=op["passive"],
                                durable=op["durable"], auto_delete=op["auto_delete"], internal=op["internal"],
                                arguments=args)
            return ("ok",)
        if k in ("exchange_bind", "exchange_unbind"):
            fn = ch.exchange_bind if k == "exchange_bind" else ch.exchange_unbind
            fn(self.exchange(op["destination"]), self.exchange(op["source"]), routing_key=op["routing_key"],
               arguments=op["arguments"])
            return ("ok",)
        if k == "queue_declare":
            args = self._args(op["arguments"])
            if "x-dead-letter-exchange" in args:
                self.dlx_seen = True
            if op["conn"] == "main":
                dch = ch
            else:
                try:
                    dch = self._conn_of("other").channel()
                except pe.ConnectionClosedByBroker as e:
                    return ("other", "connection_closed", e.reply_code, self.norm(e.reply_text))
            try:
                m = dch.queue_declare(self.queue(op["queue"]), passive=op["passive"], durable=op["durable"],
                                      exclusive=op["exclusive"], auto_delete=op["auto_delete"], arguments=args).method
            except pe.ChannelClosedByBroker as e:
                if dch is ch:
                    raise
                return ("other", "channel_closed", e.reply_code, self.norm(e.reply_text))
            if dch is not ch:
                dch.close()
            return (op["conn"], "declare_ok", m.message_count, m.consumer_count)
        if k == "queue_delete":
            out = super()._do(op)
            prof = op["redeclare"]
            if prof is None:
                return out
            m = ch.queue_declare(self.queue(op["queue"]), durable=prof["durable"], exclusive=prof["exclusive"],
                                 auto_delete=prof["auto_delete"], arguments=self._args(prof["arguments"])).method
            return out + ("declare_ok", m.message_count, m.consumer_count)
        if k == "publish":
            return self._publish(op)
        if k in ("consume", "cancel", "consumer_settle"):
            return self._consumer_op(op)
        if k == "close_other":
            if self.other is not None and self.other.is_open:
                self.other.close()
            self.other = None
            time.sleep(0.1)  # exclusive and auto-delete queues of a closed connection go away asynchronously
            self._consumer_channel("other")
            return ("ok",)
        return super()._do(op)

    def _publish(self, op: dict) -> Any:
        import pika
        import pika.exceptions as pe

        props = pika.BasicProperties(expiration=op["expiration"], headers=op["headers"])
        if op["expiration"] is not None:
            self.dlx_seen = True
        rk = self._args({"k": op["routing_key"]})["k"]
        results = []
        for b in op["bodies"]:
            body = b.encode()
            self.published.add(body)
            try:
                self.ch.basic_publish(self.exchange(op["exchange"]), rk, body, props, mandatory=op["mandatory"])
                results.append("ok")
            except pe.UnroutableError as e:
                results.append(("unroutable", [(m.method.reply_code, m.method.reply_text) for m in e.messages]))
            except pe.NackError as e:
                results.append(("nacked", len(e.messages)))
        self._barrier()
        return ("published", results, self._take_returns())

    def _consumer_op(self, op: dict) -> Any:
        import pika.exceptions as pe

        which = op["conn"]
        st = self.cons[which]
        ch = st["ch"]
        k = op["op"]
        try:
            if k == "consume":
                if op["ctag"] in st["consumers"]:
                    return ("tag_in_use",)
                q = self.queue(op["queue"])
                ctag = op["ctag"]

                def on_message(c, method, props, body, ctag=ctag):
                    st["inbox"].append((ctag, method, props, body))

                ch.basic_consume(q, on_message, exclusive=op["exclusive"], consumer_tag=ctag)
                st["consumers"][ctag] = q
                return ("consume_ok",)
            if k == "cancel":
                if op["ctag"] not in st["consumers"]:
                    return ("not_consuming",)
                ch.basic_cancel(op["ctag"])
                st["consumers"].pop(op["ctag"], None)
                # Unacked deliveries of a cancelled consumer stay unacked on the channel.
                time.sleep(0.02)  # an auto-delete queue losing its last consumer goes away asynchronously
                return ("cancel_ok",)
            if not st["unacked"]:
                return ("nothing_to_settle",)
            tag, ctag = st["unacked"].pop(0)
            if op["how"] == "ack":
                ch.basic_ack(tag)
            else:
                ch.basic_reject(tag, requeue=op["how"] == "requeue")
            ch.exchange_declare("amq.direct", passive=True)
            return ("settled", ctag)
        except pe.ChannelClosedByBroker as e:
            self._consumer_channel(which)
            return (which, "channel_closed", e.reply_code, self.norm(e.reply_text))



@pytest.mark.parametrize("seed", range(SEED_BASE, SEED_BASE + SEEDS))
def test_random_routing_sequence(leveret_url: str, seed: int) -> None:
    check_sequence(leveret_url, seed, gen_routing_ops(seed, OPS), "diffr", RoutingRunner)


def test_routing_generator_is_reproducible() -> None:
    assert gen_routing_ops(7, 50) == gen_routing_ops(7, 50)
    assert gen_routing_ops(7, 50) != gen_routing_ops(8, 50)
