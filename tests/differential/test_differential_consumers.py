"""Differential test, second generator: consumers, acknowledgements and dead-lettering.

Same style as `test_differential.py` (whose Runner name resolution and normalisation this
module reuses by subclassing): `gen_consumer_ops(seed, n)` draws a reproducible list of
operations, pure data, never dependent on what a broker answers. Each sequence starts with
a setup prefix (three exchanges, five queues with per-seed "usual" arguments, a few
bindings) and goes on with basic.consume on three channels (per-consumer and global
basic.qos, several consumers on one queue, x-priority, exclusive consumers, basic.cancel),
publishes (priorities, per-message expiration, headers), basic.get, ack/nack/reject with
requeue and multiple, basic.recover, channel close with unacked messages, queue
redeclare/purge/delete/bind. Queue arguments lean towards dead-lettering chains
(x-dead-letter-exchange/-routing-key, often through the default exchange to another pool
queue, sometimes back to the same queue), x-message-ttl 0, x-max-length with drop-head,
reject-publish and reject-publish-dlx, and x-max-priority.

Deliveries are observed without relying on timing. After every operation `settle()`:
  1. a synchronous round trip on the channel the operation used (its asynchronous
     ack/publish/reject has then been handed to the queues),
  2. a passive queue.declare of every pool queue, twice when dead-lettering is about
     (each one a round trip through the queue process: what it had to deliver it has
     delivered, and a dead-lettered message has reached the next queue of a chain),
  3. a synchronous round trip on every consumer channel (deliveries a queue sent to the
     channel are written before the reply), then the pending deliveries are dispatched.
What each consumer received since the previous operation is recorded per consumer tag,
in the order the consumer received it (body, redelivered, delivery-tag ordinal within
the channel, exchange, routing key, properties including x-death and x-first-death-*).
Nothing is ordered across channels. Only the `time` field of x-death is normalised
(by the base Runner), and server-generated names.

Global prefetch (basic.qos global=true) is only ever set on channel 2, whose consumers all
consume from one per-seed "home" queue: when a channel-wide limit is shared by consumers
of several queues, which queue gets a freed slot is a race in RabbitMQ itself.

Known differences from RabbitMQ 3.10.8 (with 60 operations, seeds 53 and 65 show them):
RabbitMQ still delivers an `expiration: "0"` message of a priority queue that became the
head behind its publish-time check (its expiry check after a publish assumes the new
message went to the tail); and when a connection is closed by a connection error
(basic.recover requeue=false), RabbitMQ may requeue one channel's unacked deliveries to an
auto-ack consumer of another channel of the same, dying connection, and so lose them.
Those comparisons fail.

Without LEVERET_COMPARE_URL only invariants are checked (every delivered body was
published; a queue delivers a body again only with redelivered set or with x-death; a
consumer never holds more unacked deliveries than the per-consumer prefetch it was
created with, while that channel's qos is unchanged). With LEVERET_COMPARE_URL the same
sequence also runs there and the outcome lists must be equal.

LEVERET_DIFF_SEEDS (default 10), LEVERET_DIFF_OPS (default 40), LEVERET_DIFF_SEED_BASE
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

SEEDS, OPS, SEED_BASE = run_size(10, 40)

N_EXCHANGES = 3
N_QUEUES = 5  # q0..q3 carry per-seed arguments, q4 is a plain sink
N_CHANNELS = 3
N_CTAGS = 4  # consumer tag slots per channel
ROUTING_KEYS = ["a", "b", "a.b"]
GLOBAL_QOS_CHANNEL = 2


def _qsym(rng: random.Random) -> str:
    return f"@q{rng.randrange(N_QUEUES)}"


def _queue_args(rng: random.Random, j: int) -> dict[str, Any]:
    args: dict[str, Any] = {}
    r = rng.random()
    if r < 0.45:  # dead-letter through the default exchange to another (or the same) pool queue
        args["x-dead-letter-exchange"] = ""
        target = rng.choice([4, 4, (j + 1) % N_QUEUES, j, rng.randrange(N_QUEUES)])
        args["x-dead-letter-routing-key"] = f"@q{target}"
    elif r < 0.65:  # dead-letter through a pool exchange, keeping or replacing the routing key
        args["x-dead-letter-exchange"] = f"@x{rng.randrange(N_EXCHANGES)}"
        if rng.random() < 0.4:
            args["x-dead-letter-routing-key"] = rng.choice(ROUTING_KEYS)
    elif r < 0.68:
        args["x-dead-letter-exchange"] = "@xmissing"
    if rng.random() < 0.2:
        args["x-message-ttl"] = rng.choice([0, 0, 600000])
    if rng.random() < 0.3:
        args["x-max-length"] = rng.choice([1, 2, 3])
        args["x-overflow"] = rng.choice(["drop-head", "drop-head", "reject-publish", "reject-publish-dlx"])
    if rng.random() < 0.25:
        args["x-max-priority"] = rng.choice([3, 9])
    return args


def gen_consumer_ops(seed: int, n: int) -> list[dict[str, Any]]:
    """A reproducible list of operations for `seed`: a setup prefix, then `n` random ones."""
    rng = random.Random(seed)
    xtypes = {f"@x{j}": rng.choice(["fanout", "direct", "topic"]) for j in range(N_EXCHANGES)}
    qargs = {f"@q{j}": _queue_args(rng, j) for j in range(N_QUEUES - 1)}
    qargs[f"@q{N_QUEUES - 1}"] = {}
    home = f"@q{rng.randrange(N_QUEUES - 1)}"
    ops: list[dict[str, Any]] = []
    for x, t in xtypes.items():
        ops.append({"op": "exchange_declare", "exchange": x, "type": t})
    for q, a in qargs.items():
        ops.append({"op": "queue_declare", "queue": q, "arguments": a, "passive": False})
    for _ in range(rng.randint(2, 5)):
        ops.append({"op": "queue_bind", "queue": _qsym(rng), "exchange": f"@x{rng.randrange(N_EXCHANGES)}",
                    "routing_key": rng.choice(ROUTING_KEYS + ["#", "a.*"])})
    weights = {
        "publish": 22, "consume": 10, "qos": 4, "cancel": 4, "ack": 10, "nack": 5, "reject": 5,
        "recover": 2, "get": 5, "close_channel": 2, "queue_declare": 3, "queue_purge": 2,
        "queue_delete": 1, "queue_bind": 2,
    }
    kinds = list(weights)
    w = [weights[k] for k in kinds]
    # A rough generator-side picture (what was asked, not what a broker answered), only to
    # steer choices towards tags in use and channels that may hold unacked deliveries.
    consumed: list[set[str]] = [set() for _ in range(N_CHANNELS)]
    busy = [0] * N_CHANNELS

    def ack_channel() -> int:
        cands = [c for c in range(N_CHANNELS) if busy[c]]
        return rng.choice(cands) if cands and rng.random() < 0.85 else rng.randrange(N_CHANNELS)

    for i in range(n):
        kind = rng.choices(kinds, w)[0]
        op: dict[str, Any] = {"op": kind}
        if kind == "publish":
            if rng.random() < 0.65:
                op["exchange"] = "="
                op["routing_key"] = _qsym(rng)
            else:
                op["exchange"] = rng.choice([f"@x{j}" for j in range(N_EXCHANGES)] + ["=amq.fanout"])
                op["routing_key"] = rng.choice(ROUTING_KEYS + ["@q0", "@q1"])
            op["bodies"] = [f"m{seed}-{i}-{k}" for k in range(rng.choice([1, 1, 2, 3]))]
            op["priority"] = rng.choice([None, None, 0, 2, 5, 9])
            r = rng.random()
            op["expiration"] = None if r < 0.8 else "0" if r < 0.92 else "600000"
            op["headers"] = {"h": rng.randrange(3)} if rng.random() < 0.15 else None
            op["mandatory"] = rng.random() < 0.2
        elif kind == "consume":
            op["ch"] = c = rng.randrange(N_CHANNELS)
            free = [f"ch{c}c{t}" for t in range(N_CTAGS) if f"ch{c}c{t}" not in consumed[c]]
            op["ctag"] = rng.choice(free) if free and rng.random() < 0.9 else f"ch{c}c{rng.randrange(N_CTAGS)}"
            op["queue"] = home if op["ch"] == GLOBAL_QOS_CHANNEL else _qsym(rng)
            op["auto_ack"] = rng.random() < 0.2
            op["exclusive"] = rng.random() < 0.1
            op["priority"] = rng.choice([None, None, None, 0, 1, 5, -1])
            consumed[c].add(op["ctag"])
            if not op["auto_ack"]:
                busy[c] += 1
        elif kind == "qos":
            op["ch"] = rng.randrange(N_CHANNELS)
            op["prefetch_count"] = rng.choice([0, 1, 1, 2, 3])
            op["global_qos"] = op["ch"] == GLOBAL_QOS_CHANNEL and rng.random() < 0.5
        elif kind == "cancel":
            cands = [c for c in range(N_CHANNELS) if consumed[c]]
            op["ch"] = c = rng.choice(cands) if cands and rng.random() < 0.9 else rng.randrange(N_CHANNELS)
            tags = sorted(consumed[c])
            op["ctag"] = rng.choice(tags) if tags and rng.random() < 0.9 else f"ch{c}c{rng.randrange(N_CTAGS)}"
            consumed[c].discard(op["ctag"])
        elif kind in ("ack", "nack", "reject"):
            op["ch"] = ack_channel()
            op.update(settlement_fields(rng, kind, multiple_share=0.3))
        elif kind == "recover":
            op["ch"] = ack_channel()
            op["requeue"] = rng.random() < 0.93
            if not op["requeue"]:  # 540 NOT_IMPLEMENTED closes the connection
                consumed = [set() for _ in range(N_CHANNELS)]
                busy = [0] * N_CHANNELS
        elif kind == "get":
            op["ch"] = c = rng.randrange(N_CHANNELS)
            op["queue"] = _qsym(rng)
            op["auto_ack"] = rng.random() < 0.3
            if not op["auto_ack"]:
                busy[c] += 1
        elif kind == "close_channel":
            op["ch"] = c = ack_channel()
            consumed[c] = set()
            busy[c] = 0
        elif kind == "queue_declare":
            op["queue"] = _qsym(rng)
            op["passive"] = rng.random() < 0.2
            op["arguments"] = qargs[op["queue"]] if rng.random() < 0.8 else _queue_args(rng, int(op["queue"][2:]))
        elif kind in ("queue_purge", "queue_delete"):
            op["queue"] = _qsym(rng)
            if kind == "queue_delete":  # usually declared again at once, so that messages keep flowing
                op["redeclare"] = qargs[op["queue"]] if rng.random() < 0.75 else None
        elif kind == "queue_bind":
            op["queue"] = _qsym(rng)
            op["exchange"] = f"@x{rng.randrange(N_EXCHANGES)}"
            op["routing_key"] = rng.choice(ROUTING_KEYS + ["#"])
        ops.append(op)
    return ops


class _Chan:
    """Client-side state of one of the numbered channels."""

    def __init__(self, ch):
        self.ch = ch
        self.unacked: list[tuple[int, bytes, str, str | None]] = []  # (tag, body, queue, ctag)
        self.tag_ord: dict[int, int] = {}
        self.qcount: dict[str, int] = {}
        self.consumers: dict[str, dict[str, Any]] = {}  # ctag -> {"queue", "auto_ack", "prefetch"}
        self.prefetch = 0  # per-consumer prefetch for consumers created from now on
        self.qos_after_consume = False
        self.inbox: list[tuple[str, Any, Any, bytes]] = []
        self.cancelled_by_broker: list[str] = []

    def tag(self, t: int, queue: str) -> int:
        """Ordinal of delivery tag `t` among this channel's deliveries from `queue`."""
        if t not in self.tag_ord:
            self.qcount[queue] = self.qcount.get(queue, 0) + 1
            self.tag_ord[t] = self.qcount[queue]
        return self.tag_ord[t]

    def ordered_unacked(self) -> list[tuple[int, bytes, str, str | None]]:
        """Unacked deliveries by queue, then by order within the queue: how deliveries from
        different queues interleave on one channel is a race between queue processes."""
        return sorted(self.unacked, key=lambda u: (u[2], u[0]))


class ConsumerRunner(Runner):
    """Plays a consumer op list over N_CHANNELS channels of one connection, plus a probe channel."""

    # ---- connection and channel state ----
    def _connect(self) -> None:
        import pika

        self.dl_about = getattr(self, "dl_about", False)
        self.conn = pika.BlockingConnection(self._params())
        self.chans = [self._new_chan(i) for i in range(N_CHANNELS)]
        self.probe = self.conn.channel()
        self.ch = self.probe  # the base class's barrier uses self.ch

    def _new_chan(self, i: int) -> _Chan:
        ch = self.conn.channel()
        st = _Chan(ch)
        st.returns = []
        ch.add_on_return_callback(lambda c, m, p, b: st.returns.append((m.reply_code, m.reply_text, b.decode())))
        ch.add_on_cancel_callback(lambda frame: st.cancelled_by_broker.append(frame.method.consumer_tag))
        return st

    def _reopen(self, i: int) -> None:
        self.chans[i] = self._new_chan(i)

    def _reconnect(self) -> None:
        self.close()
        time.sleep(0.05)
        self._connect()

    def cleanup(self) -> None:
        import pika

        c = pika.BlockingConnection(self._params())
        try:
            for q in [f"{self.prefix}.q{i}" for i in range(N_QUEUES)]:
                ch = c.channel()
                ch.queue_delete(q)
                ch.close()
            for x in [f"x{i}" for i in range(N_EXCHANGES)]:
                ch = c.channel()
                ch.exchange_delete(f"{self.prefix}.{x}")
                ch.close()
        finally:
            if c.is_open:
                c.close()

    # ---- running ----
    @staticmethod
    def _channel_of(op: dict) -> int | None:
        return 0 if op["op"] == "publish" else op.get("ch")

    def _after(self, op: dict) -> None:
        i = self._channel_of(op)
        if i is not None:
            self._chan_barrier(i)

    def record(self, op: dict, out: Any) -> Any:
        return (out, self.settled())

    def _after_channel_close(self, op: dict) -> None:
        i = self._channel_of(op)
        if i is None:
            self.probe = self.conn.channel()
            self.ch = self.probe
        else:
            self._reopen(i)

    def _settle_queues(self) -> None:
        """A round trip through every pool queue (twice when dead-lettering is about: then
        a message one queue dead-lettered has reached the next one of a chain)."""
        import pika.exceptions as pe

        if self.dl_about:
            time.sleep(0.01)  # expiry timers of RabbitMQ's queue processes
        for _ in range(2 if self.dl_about else 1):
            for j in range(N_QUEUES):
                try:
                    self.probe.queue_declare(self.queue(f"@q{j}"), passive=True)
                except pe.ChannelClosedByBroker:
                    self.probe = self.conn.channel()
                    self.ch = self.probe

    def _chan_barrier(self, i: int) -> None:
        self.chans[i].ch.exchange_declare("amq.direct", passive=True)

    def settle(self) -> Any:
        """Make every consequence of the last operation visible, then collect deliveries."""
        import pika.exceptions as pe

        self._settle_queues()
        closed = {}
        for i, st in enumerate(self.chans):
            try:
                self._chan_barrier(i)
            except pe.ChannelClosedByBroker as e:
                closed[i] = (e.reply_code, self.norm(e.reply_text))
                self._reopen(i)
        self.conn.process_data_events(time_limit=0)
        per: dict[str, list] = {}
        for i, st in enumerate(self.chans):
            for ctag, method, props, body in st.inbox:
                per.setdefault(ctag, []).append(self._delivery(st, ctag, method, props, body))
            st.inbox.clear()
        cancels = []
        for st in self.chans:
            for ctag in st.cancelled_by_broker:
                cancels.append(ctag)
                st.consumers.pop(ctag, None)
            st.cancelled_by_broker.clear()
        out: dict[str, Any] = {}
        if per:
            out["deliveries"] = dict(sorted(per.items()))
        if cancels:
            out["broker_cancelled"] = sorted(cancels)
        if closed:
            out["closed"] = closed
        self._check_prefetch()
        return out

    def _delivery(self, st: _Chan, ctag: str, method, props, body: bytes) -> tuple:
        info = st.consumers.get(ctag, {})
        q = info.get("queue", "?")
        self._delivered(q, body, method.redelivered, props)
        if not info.get("auto_ack", True):
            st.unacked.append((method.delivery_tag, body, q, ctag))
        return (body.decode(), method.redelivered, st.tag(method.delivery_tag, q), self.norm(method.exchange),
                self.norm(method.routing_key), self._props(props))

    def _qname(self, q: str) -> str:
        return q[len(self.prefix) + 1:] if q.startswith(self.prefix + ".") else self.norm(q)

    def _check_prefetch(self) -> None:
        for i, st in enumerate(self.chans):
            if st.qos_after_consume:
                continue
            for ctag, info in st.consumers.items():
                if info["auto_ack"] or not info["prefetch"]:
                    continue
                held = sum(1 for u in st.unacked if u[3] == ctag and u[0] > info["since"])
                if held > info["prefetch"]:
                    self.violations.append(f"consumer {ctag} holds {held} unacked, prefetch {info['prefetch']}")

    def _do(self, op: dict) -> Any:
        import pika

        k = op["op"]
        if k == "exchange_declare":
            self.probe.exchange_declare(self.exchange(op["exchange"]), op["type"])
            return ("ok",)
        if k == "queue_declare":
            args = self._args(op["arguments"])
            if any(a in args for a in ("x-dead-letter-exchange", "x-message-ttl", "x-max-length")):
                self.dl_about = True
            m = self.probe.queue_declare(self.queue(op["queue"]), passive=op["passive"], arguments=args).method
            return ("declare_ok", m.message_count, m.consumer_count)
        if k == "queue_bind":
            self.probe.queue_bind(self.queue(op["queue"]), self.exchange(op["exchange"]),
                                  routing_key=op["routing_key"])
            return ("ok",)
        if k == "queue_purge":
            return ("purge_ok", self.probe.queue_purge(self.queue(op["queue"])).method.message_count)
        if k == "queue_delete":
            n = self.probe.queue_delete(self.queue(op["queue"])).method.message_count
            if op.get("redeclare") is None:
                return ("delete_ok", n)
            m = self.probe.queue_declare(self.queue(op["queue"]), arguments=self._args(op["redeclare"])).method
            return ("delete_ok", n, "declare_ok", m.message_count, m.consumer_count)
        if k == "publish":
            props = pika.BasicProperties(priority=op["priority"], expiration=op["expiration"], headers=op["headers"])
            if op["expiration"] is not None:
                self.dl_about = True
            st = self.chans[0]
            rk = self._args({"k": op["routing_key"]})["k"]
            for n, b in enumerate(op["bodies"]):
                if n and self.dl_about:
                    # When one publish reaches a queue both straight and dead-lettered by another
                    # queue, RabbitMQ delivers it straight first; but the next publish's straight
                    # copy races with this one's dead-lettered copy, so let that settle first.
                    self._chan_barrier(0)
                    self._settle_queues()
                self.published.add(b.encode())
                st.ch.basic_publish(self.exchange(op["exchange"]), rk, b.encode(), props, mandatory=op["mandatory"])
            self._chan_barrier(0)
            self.conn.process_data_events(time_limit=0)
            rets = list(st.returns)
            st.returns.clear()
            return ("published", rets)
        st = self.chans[op["ch"]]
        ch = st.ch
        if k == "consume":
            if op["ctag"] in st.consumers:
                return ("tag_in_use",)
            q = self.queue(op["queue"])
            args = {"x-priority": op["priority"]} if op["priority"] is not None else None
            ctag = op["ctag"]

            def on_message(c, method, props, body, ctag=ctag, st=st):
                st.inbox.append((ctag, method, props, body))

            ch.basic_consume(q, on_message, auto_ack=op["auto_ack"], exclusive=op["exclusive"],
                             consumer_tag=ctag, arguments=args)
            # Deliveries to an earlier consumer with the same tag (cancelled, its deliveries still
            # unacked) are not this one's: it holds only those with a later delivery tag.
            since = max(st.tag_ord, default=0)
            st.consumers[ctag] = {"queue": q, "auto_ack": op["auto_ack"], "prefetch": st.prefetch, "since": since}
            return ("consume_ok",)
        if k == "qos":
            ch.basic_qos(prefetch_count=op["prefetch_count"], global_qos=op["global_qos"])
            if not op["global_qos"]:
                st.prefetch = op["prefetch_count"]
            if st.consumers:
                st.qos_after_consume = True
            return ("ok",)
        if k == "cancel":
            if op["ctag"] not in st.consumers:
                return ("not_consuming",)
            ch.basic_cancel(op["ctag"])
            st.consumers.pop(op["ctag"], None)
            return ("cancel_ok",)
        if k in ("ack", "nack", "reject"):
            if not st.unacked:
                return ("nothing_to_ack",)
            pool = st.ordered_unacked()
            tag, _, q, _ = pool[int(op["pick"] * len(pool))]
            if op["multiple"] and len({u[2] for u in pool}) > 1:
                # Which deliveries of other queues a tag covers depends on how they interleaved
                # on the channel; the highest tag covers all of them whatever the interleaving.
                tag, _, q, _ = max(st.unacked)
            if k == "ack":
                ch.basic_ack(tag, multiple=op["multiple"])
            elif k == "nack":
                ch.basic_nack(tag, multiple=op["multiple"], requeue=op["requeue"])
            else:
                ch.basic_reject(tag, requeue=op["requeue"])
            done = [u for u in st.unacked if u[0] == tag or (op["multiple"] and u[0] <= tag)]
            st.unacked = [u for u in st.unacked if u not in done]
            if op["multiple"] and len({u[2] for u in pool}) > 1:
                return ("acked", "highest", len(done))  # which queue's delivery is highest is a race
            return ("acked", self._qname(q), st.tag(tag, q), len(done))
        if k == "recover":
            ch.basic_recover(requeue=op["requeue"])
            if op["requeue"]:
                st.unacked = []
            return ("ok",)
        if k == "get":
            q = self.queue(op["queue"])
            method, props, body = ch.basic_get(q, auto_ack=op["auto_ack"])
            if method is None:
                return ("get_empty",)
            self._delivered(q, body, method.redelivered, props)
            if not op["auto_ack"]:
                st.unacked.append((method.delivery_tag, body, q, None))
            return ("get_ok", body.decode(), method.redelivered, self.norm(method.exchange),
                    self.norm(method.routing_key), method.message_count, st.tag(method.delivery_tag, q),
                    self._props(props))
        if k == "close_channel":
            # Deliveries already written before the close are dispatched first, as they would be
            # to any client; what is unacked then goes back to the queues.
            self.conn.process_data_events(time_limit=0)
            n = len(st.inbox)
            ch.close()
            self._reopen(op["ch"])
            return ("closed", n)
        raise AssertionError(f"unknown op {k}")


@pytest.mark.parametrize("seed", range(SEED_BASE, SEED_BASE + SEEDS))
def test_random_consumer_sequence(leveret_url: str, seed: int) -> None:
    check_sequence(leveret_url, seed, gen_consumer_ops(seed, OPS), "diffc", ConsumerRunner)


def test_consumer_generator_is_reproducible() -> None:
    assert gen_consumer_ops(7, 50) == gen_consumer_ops(7, 50)
    assert gen_consumer_ops(7, 50) != gen_consumer_ops(8, 50)
