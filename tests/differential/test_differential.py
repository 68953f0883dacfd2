"""Differential test: seeded random sequences of AMQP operations, Leveret against RabbitMQ.

`gen_ops(seed, n)` draws a reproducible list of client operations (pure data, never
dependent on what a broker answers) over small pools of exchange names, queue names,
routing keys, arguments and message properties, so that operations collide: a queue
is redeclared with other arguments, a binding points at a deleted exchange, a message
is acked twice, a transaction is committed on a confirm channel, and so on.

`Runner(url, prefix).run(ops)` plays the list with pika's BlockingConnection and turns
what each operation observably did into plain data: the reply fields that matter
(message_count, consumer_count, delivered bodies, properties, redelivered flags,
routing keys, basic.return codes) or the channel/connection close (reply code and
text). After a channel close it opens a new channel, after a connection close it
reconnects, and carries on. Server-generated queue names (amq.gen-*) and delivery
tags (beyond their order within a channel) are normalised, as is the `time` field of
x-death; nothing else is.

Without LEVERET_COMPARE_URL the sequences run against the session's Leveret node and
only invariants every broker must keep are checked (every delivered body was
published, a queue delivers a message again only with redelivered set, counts are
never negative, a queue just purged has nothing to get). With LEVERET_COMPARE_URL
(e.g. amqp://guest:guest@127.0.0.1:5690/) every sequence also runs against that
broker and the two outcome lists must be equal; the first difference is reported
with the operations leading to it.

LEVERET_DIFF_SEEDS (default 20), LEVERET_DIFF_OPS (default 60) and
LEVERET_DIFF_SEED_BASE (default 0) size the run; LEVERET_DIFF_LEVERET_URL points the
Leveret side at an already running node instead of the session fixture.
"""

from __future__ import annotations

import os
import random
import re
import time
import uuid
from typing import Any

import pytest


def run_size(seeds: int, ops: int) -> tuple[int, int, int]:
    """(seeds, operations per seed, first seed): the defaults given, or the environment's."""
    env = os.environ
    return (int(env.get("LEVERET_DIFF_SEEDS", seeds)), int(env.get("LEVERET_DIFF_OPS", ops)),
            int(env.get("LEVERET_DIFF_SEED_BASE", 0)))


SEEDS, OPS, SEED_BASE = run_size(20, 60)


def settlement_fields(rng: random.Random, kind: str, multiple_share: float = 0.25) -> dict[str, Any]:
    """An ack/nack/reject's pick (which unacked delivery), multiple and requeue flags."""
    pick = rng.random()
    multiple = kind != "reject" and rng.random() < multiple_share
    requeue = kind != "ack" and rng.random() < 0.5
    return {"pick": pick, "multiple": multiple, "requeue": requeue}

# Pools. Names are symbolic here ("x0", "q3", "gen1") and resolved per run with a prefix.
N_EXCHANGES = 3
N_QUEUES = 4
N_GEN = 2  # server-named queue slots
EXCHANGE_TYPES = ["direct", "fanout", "topic", "headers"]
BUILTIN_EXCHANGES = ["", "amq.direct", "amq.fanout", "amq.topic", "amq.headers"]
ROUTING_KEYS = ["a", "a.b", "a.b.c", "b.c", ""]
BIND_KEYS = ["a", "a.b", "a.*", "a.#", "#", "*", "*.b.#", "#.c", ""]
HEADER_SETS = [None, {"h1": "a"}, {"h1": "a", "h2": 1}, {"h2": 2}, {"h1": "b", "h2": 2}]
BIND_HEADERS = [
    {"x-match": "any", "h1": "a", "h2": 2},
    {"x-match": "all", "h1": "a", "h2": 1},
    {"h1": "a"},
    {"x-match": "all"},
    {"x-match": "bogus", "h1": "a"},
]
DEAD_LETTER_SENSITIVE = {"publish", "get", "ack", "nack", "reject", "tx_commit", "recover"}


# Queue arguments: valid values (mostly) and invalid ones (sometimes).
QARGS = {
    "x-message-ttl": [0, 600000],
    "x-max-length": [0, 1, 2],
    "x-overflow": ["reject-publish", "drop-head"],
    "x-dead-letter-exchange": ["", "", "@x0", "@x1", "amq.fanout", "@xmissing"],
    "x-dead-letter-routing-key": ["@q0", "@q1", "a.b"],
    "x-max-priority": [0, 3, 9],
    "x-expires": [600000],
    "x-queue-mode": ["lazy", "default"],
}
BAD_QARGS = {
    "x-message-ttl": [-1, "100"],
    "x-max-length": [-1, "x"],
    "x-overflow": ["bogus"],
    "x-max-priority": [256, -1, "x"],
    "x-expires": [0, -5, "x"],
    "x-queue-mode": ["bogus"],
}


def _exchange_sym(rng: random.Random, builtin: float = 0.2) -> str:
    r = rng.random()
    if r < builtin:
        return "=" + rng.choice(BUILTIN_EXCHANGES)
    if r < builtin + 0.05:
        return "@xmissing"
    return f"@x{rng.randrange(N_EXCHANGES)}"


def _queue_sym(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.12:
        return f"#gen{rng.randrange(N_GEN)}"
    if r < 0.15:
        return "@qmissing"
    return f"@q{rng.randrange(N_QUEUES)}"


def _queue_profile(rng: random.Random) -> dict[str, Any]:
    args = {}
    for _ in range(rng.choice([0, 0, 0, 1, 1, 2, 3])):
        if rng.random() < 0.1:
            k = rng.choice(list(BAD_QARGS))
            args[k] = rng.choice(BAD_QARGS[k])
        else:
            k = rng.choice(list(QARGS))
            args[k] = rng.choice(QARGS[k])
    return {"durable": rng.random() < 0.3, "exclusive": rng.random() < 0.1,
            "auto_delete": rng.random() < 0.1, "arguments": args}


def gen_ops(seed: int, n: int) -> list[dict[str, Any]]:
    """A reproducible list of `n` operations for `seed` (plain dicts, broker-independent)."""
    rng = random.Random(seed)
    weights = {
        "exchange_declare": 8, "exchange_delete": 2, "queue_declare": 14, "queue_bind": 8,
        "queue_unbind": 3, "queue_purge": 2, "queue_delete": 2, "publish": 24, "get": 16,
        "ack": 6, "nack": 3, "reject": 3, "qos": 1, "recover": 2, "tx_select": 2,
        "tx_commit": 2, "tx_rollback": 2, "confirm_select": 2, "other_declare": 2, "other_get": 1,
    }
    kinds = list(weights)
    w = [weights[k] for k in kinds]
    # Each pool name has a usual declaration, used most of the time, so that objects live long
    # enough for messages to flow; the other declarations collide with it.
    xprof = {f"@x{j}": {"type": rng.choice(EXCHANGE_TYPES), "durable": rng.random() < 0.3,
                        "auto_delete": rng.random() < 0.2} for j in range(N_EXCHANGES)}
    qprof = {f"@q{j}": _queue_profile(rng) for j in range(N_QUEUES)}
    ops: list[dict[str, Any]] = []
    for i in range(n):
        kind = rng.choices(kinds, w)[0]
        op: dict[str, Any] = {"op": kind}
        if kind == "exchange_declare":
            r = rng.random()
            op["exchange"] = ("=amq.bogus" if r < 0.03 else "=" if r < 0.05 else _exchange_sym(rng, 0.1))
            prof = xprof.get(op["exchange"])
            if prof is not None and rng.random() < 0.8:
                op.update(prof)
            else:
                op["type"] = "x-bogus" if rng.random() < 0.03 else rng.choice(EXCHANGE_TYPES)
                op["durable"] = rng.random() < 0.3
                op["auto_delete"] = rng.random() < 0.25
            op["passive"] = rng.random() < 0.1
        elif kind == "exchange_delete":
            op["exchange"] = _exchange_sym(rng, 0.05)
            op["if_unused"] = rng.random() < 0.4
        elif kind == "queue_declare":
            r = rng.random()
            op["queue"] = "=amq.reserved" if r < 0.03 else _queue_sym(rng)
            prof = qprof.get(op["queue"])
            if prof is not None and rng.random() < 0.8:
                op.update(prof)
            else:
                op.update(_queue_profile(rng))
            op["passive"] = rng.random() < 0.1
        elif kind in ("queue_bind", "queue_unbind"):
            op["queue"] = _queue_sym(rng)
            op["exchange"] = _exchange_sym(rng, 0.2)
            op["routing_key"] = rng.choice(BIND_KEYS + ["@q0", "@q1"])
            op["arguments"] = rng.choice(BIND_HEADERS) if rng.random() < 0.3 else None
        elif kind == "queue_purge":
            op["queue"] = _queue_sym(rng)
        elif kind == "queue_delete":
            op["queue"] = _queue_sym(rng)
            op["if_empty"] = rng.random() < 0.3
            op["if_unused"] = rng.random() < 0.2
        elif kind == "publish":
            op["exchange"] = "=" if rng.random() < 0.4 else _exchange_sym(rng, 0.3)
            op["routing_key"] = rng.choice(ROUTING_KEYS + [f"@q{j}" for j in range(N_QUEUES)] * 2)
            op["mandatory"] = rng.random() < 0.3
            op["body"] = f"m{seed}-{i}"
            op["delivery_mode"] = rng.choice([None, 1, 2])
            op["priority"] = rng.choice([None, None, 0, 1, 3, 9])
            r = rng.random()
            op["expiration"] = (None if r < 0.7 else "0" if r < 0.8 else "600000" if r < 0.9
                                else rng.choice(["-1", "abc"]))
            op["headers"] = rng.choice(HEADER_SETS)
        elif kind == "get":
            op["queue"] = _queue_sym(rng)
            op["auto_ack"] = rng.random() < 0.3
        elif kind in ("ack", "nack", "reject"):
            op["unknown"] = rng.random() < 0.1
            op.update(settlement_fields(rng, kind))
        elif kind == "qos":
            op["prefetch_count"] = rng.choice([0, 1, 10])
            op["global_qos"] = rng.random() < 0.3
            op["prefetch_size"] = 1024 if rng.random() < 0.1 else 0
        elif kind == "recover":
            op["requeue"] = rng.random() < 0.8
        elif kind in ("other_declare", "other_get"):
            op["queue"] = _queue_sym(rng)
        ops.append(op)
    return ops


class _Barrier(Exception):
    pass


class Runner:
    """Plays an op list against one broker and records normalised outcomes."""

    def __init__(self, url: str, prefix: str):
        self.url = url
        self.prefix = prefix
        self.outcomes: list[Any] = []
        self.violations: list[str] = []
        self.gen_names: list[str | None] = [None] * N_GEN
        self.gen_alias: dict[str, str] = {}
        self.published: set[bytes] = set()
        self.seen_plain: set[tuple[str, bytes]] = set()
        self.dlx_seen = False
        self.conn = None
        self.other = None
        self.ch = None
        self._connect()

    # ---- connection and channel state ----
    def _params(self):
        import pika

        p = pika.URLParameters(self.url)
        p.socket_timeout = 5
        p.blocked_connection_timeout = 10
        p.heartbeat = 0
        return p

    def _connect(self) -> None:
        import pika

        self.conn = pika.BlockingConnection(self._params())
        self._open_channel()

    def _open_channel(self) -> None:
        self.ch = self.conn.channel()
        self.returns: list[Any] = []
        self.ch.add_on_return_callback(lambda c, m, p, b: self.returns.append((m.reply_code, m.reply_text, m.exchange, m.routing_key, b)))
        self.tx = False
        self.confirm = False
        self.unacked: list[tuple[int, bytes, str]] = []  # (tag, body, queue), delivery order
        self.tx_acked: list[tuple[int, bytes, str]] = []
        self.tag_ord: dict[int, int] = {}

    def _other_ch(self):
        import pika

        if self.other is None or not self.other.is_open:
            self.other = pika.BlockingConnection(self._params())
        return self.other.channel()

    def close(self) -> None:
        for c in (self.conn, self.other):
            try:
                if c is not None and c.is_open:
                    c.close()
            except Exception:
                pass

    # ---- name resolution and normalisation ----
    def exchange(self, sym: str) -> str:
        if sym.startswith("="):
            return sym[1:]
        return f"{self.prefix}.{sym[1:]}"

    def queue(self, sym: str) -> str:
        if sym.startswith("="):
            return sym[1:]
        if sym.startswith("#gen"):
            name = self.gen_names[int(sym[4:])]
            return name if name is not None else ""
        return f"{self.prefix}.{sym[1:]}"

    def norm(self, text: str) -> str:
        def sub(m: re.Match) -> str:
            name = m.group(0)
            if name not in self.gen_alias:
                self.gen_alias[name] = f"amq.gen#{len(self.gen_alias)}"
            return self.gen_alias[name]

        return re.sub(r"amq\.gen-[A-Za-z0-9_\-]+", sub, text)

    def _args(self, args: dict | None) -> dict | None:
        if args is None:
            return None
        out = {}
        for k, v in args.items():
            if isinstance(v, str) and v.startswith("@x"):
                v = self.exchange(v)
            elif isinstance(v, str) and v.startswith("@q"):
                v = self.queue(v)
            out[k] = v
        return out

    def _props(self, props) -> dict:
        headers = props.headers
        if headers:
            headers = dict(headers)
            if "x-death" in headers:
                deaths = []
                for d in headers["x-death"]:
                    d = {k: v for k, v in dict(d).items() if k != "time"}
                    deaths.append(d)
                headers["x-death"] = deaths
            headers = self._norm_data(headers)
        return {
            "delivery_mode": props.delivery_mode,
            "priority": props.priority,
            "expiration": props.expiration,
            "headers": headers,
        }

    def _norm_data(self, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: self._norm_data(x) for k, x in sorted(v.items())}
        if isinstance(v, list):
            return [self._norm_data(x) for x in v]
        if isinstance(v, bytes):
            return self.norm(v.decode("utf-8", "replace"))
        if isinstance(v, str):
            return self.norm(v)
        return v

    def _tag(self, tag: int) -> int:
        if tag not in self.tag_ord:
            self.tag_ord[tag] = len(self.tag_ord) + 1
        return self.tag_ord[tag]

    def _barrier(self) -> None:
        """A synchronous round trip that changes nothing: a close or basic.return caused by
        the previous asynchronous method arrives before its reply."""
        self.ch.exchange_declare("amq.direct", passive=True)
        self.conn.process_data_events(time_limit=0)

    def _take_returns(self) -> list:
        out = [(code, text, self.norm(ex), self.norm(rk), b.decode()) for code, text, ex, rk, b in self.returns]
        self.returns.clear()
        return out

    # ---- running ----
    def run(self, ops: list[dict]) -> list[Any]:
        for op in ops:
            self.outcomes.append(self.record(op, self.answer(op)))
        return self.outcomes

    def answer(self, op: dict) -> Any:
        """What the broker answered `op`; a channel or connection it closed is opened again."""
        import pika.exceptions as pe

        try:
            out = self._do(op)
            self._after(op)
        except pe.ChannelClosedByBroker as e:
            out = ("channel_closed", e.reply_code, self.norm(e.reply_text))
            self._after_channel_close(op)
        except pe.ConnectionClosedByBroker as e:
            out = ("connection_closed", e.reply_code, self.norm(e.reply_text))
            self._reconnect()
        except (pe.AMQPError, OSError) as e:
            out = ("client_error", type(e).__name__)
            self._reconnect()
        return out

    def record(self, op: dict, out: Any) -> Any:
        """The outcome of `op` as compared between brokers."""
        if self.dlx_seen and op["op"] in DEAD_LETTER_SENSITIVE:
            time.sleep(0.01)  # dead-lettering is asynchronous in RabbitMQ
        return out

    def settled(self) -> Any:
        """What `settle` observed (runners that watch deliveries define it), or how the
        connection was closed meanwhile."""
        import pika.exceptions as pe

        try:
            return self.settle()
        except pe.ConnectionClosedByBroker as e:
            self._reconnect()
            return ("connection_closed", e.reply_code, self.norm(e.reply_text))

    def settle(self) -> Any:
        raise NotImplementedError("a runner that records deliveries defines settle")

    def _after(self, op: dict) -> None:
        """Hook: run after an operation the broker accepted."""

    def _after_channel_close(self, op: dict) -> None:
        self._open_channel()

    def _reconnect(self) -> None:
        self.close()
        self.other = None
        time.sleep(0.1)  # exclusive queues of the old connection go away asynchronously
        self._connect()

    def _do(self, op: dict) -> Any:
        import pika
        import pika.exceptions as pe

        k = op["op"]
        ch = self.ch
        if k == "exchange_declare":
            ch.exchange_declare(self.exchange(op["exchange"]), op["type"], passive=op["passive"],
                                durable=op["durable"], auto_delete=op["auto_delete"])
            return ("ok",)
        if k == "exchange_delete":
            ch.exchange_delete(self.exchange(op["exchange"]), if_unused=op["if_unused"])
            return ("ok",)
        if k == "queue_declare":
            args = self._args(op["arguments"])
            if any(a in args for a in ("x-dead-letter-exchange",)):
                self.dlx_seen = True
            sym = op["queue"]
            name = self.queue(sym)
            r = ch.queue_declare(name, passive=op["passive"], durable=op["durable"], exclusive=op["exclusive"],
                                 auto_delete=op["auto_delete"], arguments=args)
            m = r.method
            if sym.startswith("#gen") and name == "":
                self.gen_names[int(sym[4:])] = m.queue
            self._count(m.message_count, "declare")
            return ("declare_ok", self.norm(m.queue), m.message_count, m.consumer_count)
        if k == "queue_bind":
            ch.queue_bind(self.queue(op["queue"]), self.exchange(op["exchange"]),
                          routing_key=self._args({"k": op["routing_key"]})["k"], arguments=op["arguments"])
            return ("ok",)
        if k == "queue_unbind":
            ch.queue_unbind(self.queue(op["queue"]), self.exchange(op["exchange"]),
                            routing_key=self._args({"k": op["routing_key"]})["k"], arguments=op["arguments"])
            return ("ok",)
        if k == "queue_purge":
            q = self.queue(op["queue"])
            n = ch.queue_purge(q).method.message_count
            self._count(n, "purge")
            # Invariant: nothing left to get right after a purge.
            g = ch.basic_get(q, auto_ack=False)
            if g[0] is not None:
                self.violations.append(f"basic.get after purge of {q} returned {g[2]!r}")
                self.unacked.append((g[0].delivery_tag, g[2], q))
            return ("purge_ok", n, g[0] is None)
        if k == "queue_delete":
            n = ch.queue_delete(self.queue(op["queue"]), if_unused=op["if_unused"], if_empty=op["if_empty"]).method.message_count
            self._count(n, "delete")
            return ("delete_ok", n)
        if k == "publish":
            props = pika.BasicProperties(delivery_mode=op["delivery_mode"], priority=op["priority"],
                                         expiration=op["expiration"], headers=op["headers"])
            body = op["body"].encode()
            self.published.add(body)
            rk = self._args({"k": op["routing_key"]})["k"]
            try:
                ch.basic_publish(self.exchange(op["exchange"]), rk, body, props, mandatory=op["mandatory"])
            except pe.UnroutableError as e:
                return ("unroutable", [(m.method.reply_code, m.method.reply_text) for m in e.messages])
            except pe.NackError as e:
                return ("nacked", len(e.messages))
            self._barrier()
            return ("published", self._take_returns())
        if k == "get":
            q = self.queue(op["queue"])
            method, props, body = ch.basic_get(q, auto_ack=op["auto_ack"])
            if method is None:
                return ("get_empty",)
            self._delivered(q, body, method.redelivered, props)
            self._count(method.message_count, "get")
            if not op["auto_ack"]:
                self.unacked.append((method.delivery_tag, body, q))
            return ("get_ok", body.decode(), method.redelivered, self.norm(method.exchange), self.norm(method.routing_key),
                    method.message_count, self._tag(method.delivery_tag), self._props(props))
        if k in ("ack", "nack", "reject"):
            if op["unknown"] or not self.unacked:
                if not op["unknown"]:
                    return ("nothing_to_ack",)
                tag = 1000 + len(self.tag_ord)
            else:
                tag = self.unacked[int(op["pick"] * len(self.unacked))][0]
            if k == "ack":
                ch.basic_ack(tag, multiple=op["multiple"])
            elif k == "nack":
                ch.basic_nack(tag, multiple=op["multiple"], requeue=op["requeue"])
            else:
                ch.basic_reject(tag, requeue=op["requeue"])
            self._barrier()
            done = [u for u in self.unacked if u[0] == tag or (op["multiple"] and u[0] <= tag)]
            self.unacked = [u for u in self.unacked if u not in done]
            if self.tx:
                self.tx_acked.extend(done)
            return ("acked", self._tag(tag) if tag in self.tag_ord else "unknown", len(done))
        if k == "qos":
            ch.basic_qos(prefetch_size=op["prefetch_size"], prefetch_count=op["prefetch_count"], global_qos=op["global_qos"])
            return ("ok",)
        if k == "recover":
            ch.basic_recover(requeue=op["requeue"])
            self.conn.process_data_events(time_limit=0)
            if op["requeue"]:
                self.unacked = []
            return ("ok",)
        if k == "tx_select":
            ch.tx_select()
            self.tx = True
            return ("ok",)
        if k == "tx_commit":
            ch.tx_commit()
            self.tx_acked = []
            self.conn.process_data_events(time_limit=0)
            return ("ok", self._take_returns())
        if k == "tx_rollback":
            ch.tx_rollback()
            self.unacked = sorted(self.unacked + self.tx_acked)
            self.tx_acked = []
            return ("ok",)
        if k == "confirm_select":
            ch.confirm_delivery()
            self.confirm = True
            return ("ok",)
        if k in ("other_declare", "other_get"):
            q = self.queue(op["queue"])
            try:
                och = self._other_ch()
                if k == "other_declare":
                    m = och.queue_declare(q, passive=True).method
                    out = ("declare_ok", self.norm(m.queue), m.message_count, m.consumer_count)
                else:
                    method, props, body = och.basic_get(q, auto_ack=False)
                    if method is None:
                        out = ("get_empty",)
                    else:
                        self._delivered(q, body, method.redelivered, props)
                        out = ("get_ok", body.decode(), method.redelivered, method.message_count)
                och.close()  # an unacked delivery goes back to the queue, redelivered
                return ("other",) + out
            except pe.ChannelClosedByBroker as e:
                return ("other", "channel_closed", e.reply_code, self.norm(e.reply_text))
        raise AssertionError(f"unknown op {k}")

    def _count(self, n: int, what: str) -> None:
        if n < 0:
            self.violations.append(f"negative message_count {n} in {what}")

    def _delivered(self, q: str, body: bytes, redelivered: bool, props) -> None:
        if body not in self.published:
            self.violations.append(f"{q} delivered {body!r}, which was never published")
        dead = bool(props.headers and "x-death" in props.headers)
        if dead:
            return
        if (q, body) in self.seen_plain and not redelivered:
            self.violations.append(f"{q} delivered {body!r} a second time without redelivered")
        self.seen_plain.add((q, body))

    def cleanup(self) -> None:
        import pika

        c = pika.BlockingConnection(self._params())
        try:
            names = ([f"{self.prefix}.q{i}" for i in range(N_QUEUES)] + [f"{self.prefix}.qmissing"]
                     + [n for n in self.gen_names if n])
            for q in names:
                try:
                    ch = c.channel()
                    ch.queue_delete(q)
                    ch.close()
                except Exception:
                    if not c.is_open:
                        c = pika.BlockingConnection(self._params())
            for x in [f"x{i}" for i in range(N_EXCHANGES)] + ["xmissing"]:
                try:
                    ch = c.channel()
                    ch.exchange_delete(f"{self.prefix}.{x}")
                    ch.close()
                except Exception:
                    if not c.is_open:
                        c = pika.BlockingConnection(self._params())
        finally:
            if c.is_open:
                c.close()


def play(url: str, prefix: str, ops: list[dict], runner: type[Runner] = Runner) -> Runner:
    r = runner(url, prefix)
    try:
        r.run(ops)
    finally:
        r.close()
        r.cleanup()
    return r


def describe_divergence(ops: list[dict], a: list, b: list, names=("leveret", "reference")) -> str | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            lines = [f"first divergence at op {i}:"]
            for j in range(max(0, i - 12), i + 1):
                lines.append(f"  [{j}] {ops[j]}  ->  {a[j]!r}" + ("" if a[j] == b[j] else f"  |  {names[1]}: {b[j]!r}"))
            lines.append(f"  {names[0]}: {x!r}")
            lines.append(f"  {names[1]}: {y!r}")
            return "\n".join(lines)
    if len(a) != len(b):
        return f"outcome lists differ in length: {len(a)} vs {len(b)}"
    return None


def check_sequence(leveret_url: str, seed: int, ops: list[dict], prefix: str,
                   runner: type[Runner] = Runner) -> None:
    """Play `ops` on Leveret (invariants), and on LEVERET_COMPARE_URL if set (equal outcomes)."""
    prefix = f"{prefix}-{uuid.uuid4().hex[:8]}-s{seed}"
    lev = play(leveret_url, prefix, ops, runner)
    assert lev.violations == [], f"seed {seed}: invariant violations on Leveret: {lev.violations}"
    compare = os.environ.get("LEVERET_COMPARE_URL")
    if not compare:
        return
    ref = play(compare, prefix, ops, runner)
    assert ref.violations == [], f"seed {seed}: invariant violations on the reference: {ref.violations}"
    diff = describe_divergence(ops, lev.outcomes, ref.outcomes)
    assert diff is None, f"seed {seed}:\n{diff}"


@pytest.mark.parametrize("seed", range(SEED_BASE, SEED_BASE + SEEDS))
def test_random_operation_sequence(leveret_url: str, seed: int) -> None:
    check_sequence(leveret_url, seed, gen_ops(seed, OPS), "diff")


def test_generator_is_reproducible() -> None:
    assert gen_ops(7, 50) == gen_ops(7, 50)
    assert gen_ops(7, 50) != gen_ops(8, 50)
