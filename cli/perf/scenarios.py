"""The benchmark scenarios, by stable name, and what each one measures.

Every scenario declares its own queues and exchanges under fresh names
(`perf.<scenario>.<token>`), runs, deletes them, and returns a `Measurement`:
metric values plus the problems the accounting found (missing, duplicate or
foreign deliveries, nacks, errors). Rates are computed only from unique stamped
deliveries that arrived (see `cli.perf.accounting`), over the publishing window.

    transient    1 publisher → 1 consumer, 256-byte bodies, auto-ack
    confirmed    durable queue, persistent messages, confirms (window 256),
                 manual multi-ack, prefetch 256
    fanout       1 publisher → fanout exchange → 4 queues, 4 consumers
    latency      1,000 msg/s paced, publish→deliver p50 / p99 / p99.9
    connections  N idle connections with a channel each, then a light load:
                 broker RSS per connection, and whether all were held
    backlog      1,000,000 persistent messages published with no consumer
                 (confirmed), then drained: both rates and the peak RSS
    mirrored     `confirmed` on a queue mirrored over 3 nodes (needs --cluster-urls)

With `Options.consume_url` the throughput scenarios (transient, confirmed, fanout,
latency) declare their queues and publish through the run's URL and consume
through that other node of the same cluster.
"""

from __future__ import annotations

import math
import resource
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Awaitable, Callable

import trio

from broker.amqp import spec
from broker.amqp.codec import encode_method

from .accounting import PublishTally, ReceiveTally, Verdict, verdict
from .client import BrokerClosed, Connection
from .memory import RssSampler
from .stats import percentile
from .workers import RolesOutcome, run_roles
from .workload import DeliveryAssembler, Role, Workload

__all__ = ["Admin", "METRICS", "Measurement", "Metric", "Options", "SCENARIOS", "account", "await_known", "cleanup",
           "name_for", "run_scenario"]


@dataclass(frozen=True, slots=True)
class Metric:
    label: str
    unit: str
    higher_is_better: bool


METRICS: dict[str, Metric] = {
    "delivered_per_s": Metric("delivered", "msg/s", True),
    "published_per_s": Metric("published", "msg/s", True),
    "confirmed_per_s": Metric("confirmed", "msg/s", True),
    "latency_p50_ms": Metric("latency p50", "ms", False),
    "latency_p99_ms": Metric("latency p99", "ms", False),
    "latency_p999_ms": Metric("latency p99.9", "ms", False),
    "connections_held": Metric("connections held", "conn", True),
    "rss_per_connection_kib": Metric("RSS per connection", "KiB", False),
    "publish_per_s": Metric("publish (confirmed)", "msg/s", True),
    "drain_per_s": Metric("drain", "msg/s", True),
    "peak_rss_mib": Metric("peak broker RSS", "MiB", False),
    # The cluster scenarios (cli.perf.cluster_scenarios).
    "metadata_ops_per_s": Metric("queue declare/bind/delete", "ops/s", True),
    "idle_cpu_pct_total": Metric("CPU, 3 nodes", "% core", False),
    "idle_cpu_pct_node1": Metric("CPU, node 1", "% core", False),
    "idle_cpu_pct_node2": Metric("CPU, node 2", "% core", False),
    "idle_cpu_pct_node3": Metric("CPU, node 3", "% core", False),
    "idle_peer_bytes_per_s": Metric("peer link traffic", "B/s", False),
    "ha_confirmed_per_s": Metric("ha-all: confirmed", "msg/s", True),
    "ha_confirm_p50_ms": Metric("ha-all: confirm p50", "ms", False),
    "ha_confirm_p99_ms": Metric("ha-all: confirm p99", "ms", False),
    "quorum_confirmed_per_s": Metric("quorum: confirmed", "msg/s", True),
    "quorum_confirm_p50_ms": Metric("quorum: confirm p50", "ms", False),
    "quorum_confirm_p99_ms": Metric("quorum: confirm p99", "ms", False),
    "failover_first_confirm_ms": Metric("first ack after kill", "ms", False),
    "failover_first_new_confirm_ms": Metric("first ack of a publish after kill", "ms", False),
    "failover_first_delivery_ms": Metric("first delivery after kill", "ms", False),
    "failover_first_new_delivery_ms": Metric("first delivery of a publish after kill", "ms", False),
    "failover_lost": Metric("confirmed then lost", "msg", False),
    "failover_missing": Metric("published, never delivered", "msg", False),
    "failover_duplicates": Metric("delivered twice", "msg", False),
    "failover_nacked": Metric("nacked", "msg", False),
}

SCENARIOS: tuple[str, ...] = ("transient", "confirmed", "fanout", "latency", "connections", "backlog", "mirrored")


@dataclass(frozen=True, slots=True)
class Options:
    duration: float = 10.0
    procs: int = 2
    connections: int = 1000
    backlog_messages: int = 1_000_000
    cluster_urls: tuple[str, ...] = ()
    # Another node of the same cluster for the consumers ("" = the run's URL): publishing on one
    # node and consuming on another measures the path between the nodes.
    consume_url: str = ""
    body_size: int = 256
    # Longest a scenario may keep draining after publishing stops.
    drain: float = 10.0
    # Cap on each phase of `backlog` (seconds): it stops there and says so.
    phase_limit: float = 900.0


@dataclass(slots=True)
class Measurement:
    metrics: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    skipped: str | None = None
    # Raw totals, for --json readers who want to check the arithmetic.
    totals: dict[str, int] = field(default_factory=dict)


# --- topology -------------------------------------------------------------------------------


class Admin:
    """A connection for declaring and deleting the scenario's queues and exchanges."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    @classmethod
    async def open(cls, url: str) -> "Admin":
        conn = await Connection.open(url)
        try:
            await conn.open_channel(1)
        except BaseException:
            await trio.aclose_forcefully(conn.stream)
            raise
        return cls(conn)

    async def queue(self, name: str, durable: bool, arguments: dict | None = None) -> None:
        await self.conn.call(1, spec.QueueDeclare(0, name, False, durable, False, False, False, arguments or {}),
                             spec.QueueDeclareOk)  # fmt: skip

    async def fanout(self, name: str) -> None:
        await self.conn.call(
            1, spec.ExchangeDeclare(0, name, "fanout", False, False, False, False, False, {}), spec.ExchangeDeclareOk
        )

    async def bind(self, queue: str, exchange: str) -> None:
        await self.conn.call(1, spec.QueueBind(0, queue, exchange, "", False, {}), spec.QueueBindOk)

    async def delete_queue(self, name: str) -> None:
        await self.conn.call(1, spec.QueueDelete(0, name, False, False, False), spec.QueueDeleteOk, timeout=120)

    async def delete_exchange(self, name: str) -> None:
        await self.conn.call(1, spec.ExchangeDelete(0, name, False, False), spec.ExchangeDeleteOk)

    async def close(self) -> None:
        await self.conn.close()


async def cleanup(url: str, queues: list[str], exchanges: list[str]) -> None:
    """Delete what a scenario declared, on a fresh connection (the run's may be broken)."""
    with trio.move_on_after(180), trio.CancelScope(shield=True):
        try:
            admin = await Admin.open(url)
        except (BrokerClosed, OSError, trio.TooSlowError):
            return
        try:
            for queue in queues:
                await admin.delete_queue(queue)
            for exchange in exchanges:
                await admin.delete_exchange(exchange)
        except (BrokerClosed, OSError, trio.TooSlowError, trio.BrokenResourceError):
            pass
        finally:
            await admin.close()


async def _declare(url: str, queues: list[str], durable: bool, fanout: str = "") -> None:
    """Declare `queues` (bound to a new fanout exchange `fanout` if one is named)."""
    admin = await Admin.open(url)
    try:
        if fanout:
            await admin.fanout(fanout)
        for queue in queues:
            await admin.queue(queue, durable)
            if fanout:
                await admin.bind(queue, fanout)
    finally:
        await admin.close()


async def await_known(url: str, queues: list[str], timeout: float = 10.0) -> None:
    """Until the node at `url` knows every queue in `queues` (passive declare), at most `timeout` s.

    A Leveret node answers declare-ok once the declare is applied on itself; the other
    nodes apply it a moment later, so a consumer on another node that subscribed at once
    could find no queue. RabbitMQ's declare is on every node when it answers: there the
    first look succeeds.
    """
    conn = await Connection.open(url)
    try:
        with trio.fail_after(timeout):
            for queue in queues:
                for _ in range(int(timeout / 0.05) + 1):
                    await conn.open_channel(1)
                    try:
                        await conn.call(1, spec.QueueDeclare(0, queue, True, False, False, False, False, {}),
                                        spec.QueueDeclareOk)  # fmt: skip
                    except BrokerClosed as exc:
                        if exc.code != spec.NOT_FOUND or conn.closed:
                            raise
                        # The 404 closed the channel: the close-ok frees its number for the next look.
                        await conn.send(encode_method(1, spec.ChannelCloseOk()))
                        await trio.sleep(0.05)
                        continue
                    await conn.call(1, spec.ChannelClose(200, "", 0, 0), spec.ChannelCloseOk)
                    break
    finally:
        await conn.close()


def name_for(scenario: str) -> str:
    return f"perf.{scenario}.{secrets.token_hex(4)}"


def account(outcome: RolesOutcome, into: Measurement) -> Verdict:
    result = verdict(outcome.publishers, outcome.receivers)
    into.problems += outcome.errors + result.problems
    into.totals.update(
        sent=result.sent,
        acked=result.acked,
        nacked=result.nacked,
        delivered=result.delivered,
        delivered_in_window=result.delivered_in_window,
        missing=result.missing,
        lost_confirmed=result.lost_confirmed,
        duplicates=result.duplicates,
        foreign=result.foreign,
        out_of_order=result.out_of_order,
    )
    return result


def _rates(m: Measurement, result: Verdict, outcome: RolesOutcome, duration: float, confirms: bool) -> None:
    """The throughput figures over the publishing window: delivered, published and (with confirms) confirmed."""
    m.metrics["delivered_per_s"] = result.delivered_in_window / duration
    m.metrics["published_per_s"] = sum(p.sent for p in outcome.publishers) / duration
    if confirms:
        m.metrics["confirmed_per_s"] = sum(p.acked_in_window for p in outcome.publishers) / duration


# --- throughput scenarios -----------------------------------------------------------------


async def _throughput(
    url: str, options: Options, scenario: str, queues: int, durable: bool, workload: Workload, fanout: bool
) -> Measurement:
    m = Measurement()
    names = [name_for(scenario) for _ in range(queues)]
    exchange = name_for(scenario) if fanout else ""
    await _declare(url, names, durable, exchange)
    try:
        if options.consume_url:
            await await_known(options.consume_url, names)
        routed = replace(workload, exchange=exchange, routing_key="" if fanout else names[0],
                         body_size=options.body_size)
        roles = [Role("publish", 1)] + [
            Role("consume", i + 1, name, url=options.consume_url) for i, name in enumerate(names)
        ]
        outcome = await run_roles(url, routed, roles, options.duration, options.drain, options.procs)
    finally:
        await cleanup(url, names, [exchange] if fanout else [])
    result = account(outcome, m)
    _rates(m, result, outcome, options.duration, confirms=bool(workload.confirm_window))
    if workload.keep_latencies:
        samples = sorted(ns / 1e6 for r in outcome.receivers for ns in r.latencies_ns)
        m.metrics["latency_p50_ms"] = percentile(samples, 0.50)
        m.metrics["latency_p99_ms"] = percentile(samples, 0.99)
        m.metrics["latency_p999_ms"] = percentile(samples, 0.999)
        m.totals["latency_samples"] = len(samples)
    return m


async def transient(url: str, options: Options) -> Measurement:
    return await _throughput(url, options, "transient", 1, False, Workload(auto_ack=True), False)


async def confirmed(url: str, options: Options) -> Measurement:
    workload = Workload(persistent=True, confirm_window=256, auto_ack=False, prefetch=256)
    return await _throughput(url, options, "confirmed", 1, True, workload, False)


async def fanout(url: str, options: Options) -> Measurement:
    return await _throughput(url, options, "fanout", 4, False, Workload(auto_ack=True), True)


async def latency(url: str, options: Options) -> Measurement:
    workload = Workload(rate=1000.0, auto_ack=True, keep_latencies=True)
    return await _throughput(url, options, "latency", 1, False, workload, False)


async def mirrored(url: str, options: Options) -> Measurement:
    """`confirmed` with the publisher on one node and the consumer on another.

    The queue is named `perf.mirrored.<token>`; mirroring it over 3 nodes is the
    cluster's policy (e.g. RabbitMQ: set_policy perf-mirrored "^perf\\.mirrored\\."
    '{"ha-mode":"exactly","ha-params":3,"ha-sync-mode":"automatic"}'), applied
    beforehand by the operator: AMQP 0-9-1 has no way to set a policy.
    """
    if len(options.cluster_urls) < 3:
        return Measurement(skipped="needs a 3-node cluster (--cluster-urls URL1,URL2,URL3)")
    first, second = options.cluster_urls[0], options.cluster_urls[1]
    m = Measurement()
    name = name_for("mirrored")
    await _declare(first, [name], durable=True)
    try:
        workload = Workload(routing_key=name, body_size=options.body_size, persistent=True, confirm_window=256,
                            auto_ack=False, prefetch=256)
        roles = [Role("publish", 1, url=first), Role("consume", 1, name, url=second)]
        outcome = await run_roles(first, workload, roles, options.duration, options.drain, options.procs)
    finally:
        await cleanup(first, [name], [])
    _rates(m, account(outcome, m), outcome, options.duration, confirms=True)
    return m


# --- connections ----------------------------------------------------------------------------


def raise_file_limit(wanted: int) -> int:
    """Raise this process's open-file limit towards `wanted`; returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


async def connections(url: str, options: Options, rss: RssSampler) -> Measurement:
    """N idle connections with a channel each, then one publish and one round trip on each."""
    m = Measurement()
    n = options.connections
    limit = raise_file_limit(n + 256)
    if limit < n + 64:
        m.problems.append(f"open-file limit {limit} is too low for {n} connections")
    queue = name_for("connections")
    await _declare(url, [queue], durable=False)
    before = await _steady_rss(rss)
    opened: list[Connection | None] = [None] * n
    failures: list[str] = []
    gate = trio.CapacityLimiter(64)

    async def open_one(i: int) -> None:
        async with gate:
            try:
                conn = await Connection.open(url, timeout=30)
                await conn.open_channel(1)
                opened[i] = conn
            except (BrokerClosed, OSError, trio.TooSlowError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")

    try:
        started = time.monotonic()
        with trio.move_on_after(max(60.0, n / 20)):
            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(open_one, i)
        open_seconds = time.monotonic() - started
        # Idle for a moment, then see what the broker holds for them.
        await trio.sleep(min(1.0, options.duration))
        after = await _steady_rss(rss)
        live = [c for c in opened if c is not None]
        held = await _light_load(url, queue, live, m)
    finally:
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                for conn in opened:
                    if conn is not None:
                        nursery.start_soon(trio.aclose_forcefully, conn.stream)
        await cleanup(url, [queue], [])
    if failures:
        m.problems.append(f"{len(failures)} of {n} connections failed to open (first: {failures[0]})")
    if held < n:
        m.problems.append(f"only {held} of {n} connections were held through the light load")
    m.metrics["connections_held"] = float(held)
    if rss.available and live:
        m.metrics["rss_per_connection_kib"] = (after - before) / len(live) / 1024
    m.totals.update(requested=n, opened=len(live), held=held, open_ms=int(open_seconds * 1000))
    return m


async def _steady_rss(rss: RssSampler) -> int:
    """Median of a few samples over a second: a garbage-collected broker's RSS wobbles."""
    samples = []
    for _ in range(5):
        samples.append(rss.sample())
        await trio.sleep(0.2)
    return sorted(samples)[2]


async def _light_load(url: str, queue: str, live: list[Connection], m: Measurement) -> int:
    """Each live connection publishes one stamped message and does one basic.qos round trip.

    A connection is held when its round trip answered; the consumer checks that
    every published message arrived.
    """
    from .workload import encode_batch, publish_template

    try:
        consumer = await Connection.open(url)
        await consumer.open_channel(1)
        await consumer.call(
            1, spec.BasicConsume(0, queue, "perf-light", False, True, False, False, {}), spec.BasicConsumeOk
        )
    except (BrokerClosed, OSError, trio.TooSlowError) as exc:
        # A broker at its connection or file-descriptor limit: that is the finding.
        m.problems.append(f"the light-load consumer could not connect on top of {len(live)} connections: "
                          f"{type(exc).__name__}: {exc}")
        return 0
    tally = ReceiveTally(queue, 2**63)
    assembler = DeliveryAssembler(tally, queue, consumer)
    prefix, suffix = publish_template(Workload(routing_key=queue), 1, live[0].frame_max if live else 131072)
    held = 0
    gate = trio.CapacityLimiter(64)
    published = [PublishTally(i + 1) for i in range(len(live))]

    async def exercise(i: int, conn: Connection) -> None:
        nonlocal held
        async with gate:
            try:
                await conn.send(encode_batch(prefix, suffix, i + 1, 1, 1, time.monotonic_ns()))
                published[i].sent = 1
                await conn.call(1, spec.BasicQos(0, 10, False), spec.BasicQosOk, timeout=30)
                held += 1
            except (BrokerClosed, OSError, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    try:
        with trio.move_on_after(120):
            async with trio.open_nursery() as nursery:
                for i, conn in enumerate(live):
                    nursery.start_soon(exercise, i, conn)
        expected = sum(p.sent for p in published)
        with trio.move_on_after(10):
            while tally.unique < expected:
                assembler.take(await consumer.receive(), time.monotonic_ns())
    finally:
        await consumer.close()
    result = verdict(published, [tally])
    m.problems += result.problems
    m.totals.update(light_sent=result.sent, light_delivered=result.delivered)
    return held


# --- backlog --------------------------------------------------------------------------------


async def backlog(url: str, options: Options) -> Measurement:
    m = Measurement()
    total = options.backlog_messages
    queue = name_for("backlog")
    await _declare(url, [queue], durable=True)
    try:
        publish = Workload(routing_key=queue, body_size=options.body_size, persistent=True, confirm_window=1024,
                           max_messages=total)
        filled = await run_roles(url, publish, [Role("publish", 1)], options.phase_limit, options.drain, 1)
        pub = filled.publishers[0]
        drain = Workload(routing_key=queue, auto_ack=False, prefetch=1024, stop_after=pub.sent, idle=min(10.0, options.drain))
        drained = await run_roles(url, drain, [Role("consume", 1, queue)], 0.0, options.phase_limit, 1)
    finally:
        await cleanup(url, [queue], [])
    outcome = RolesOutcome(filled.publishers, drained.receivers, filled.errors + drained.errors)
    result = account(outcome, m)
    if pub.sent < total:
        m.problems.append(f"published only {pub.sent} of {total} messages within {options.phase_limit:.0f}s")
    publish_seconds = ((pub.settled_ns or pub.last_ns) - pub.first_ns) / 1e9
    m.metrics["publish_per_s"] = pub.acked / publish_seconds if publish_seconds > 0 else math.nan
    receiver = drained.receivers[0]
    drain_seconds = (receiver.last_ns - receiver.subscribed_ns) / 1e9
    m.metrics["drain_per_s"] = result.delivered / drain_seconds if drain_seconds > 0 and result.delivered else 0.0
    m.totals.update(publish_ms=int(publish_seconds * 1000), drain_ms=int(max(0.0, drain_seconds) * 1000))
    return m


# --- dispatch -------------------------------------------------------------------------------

_PLAIN: dict[str, Callable[[str, Options], Awaitable[Measurement]]] = {
    "transient": transient,
    "confirmed": confirmed,
    "fanout": fanout,
    "latency": latency,
    "backlog": backlog,
    "mirrored": mirrored,
}


async def run_scenario(name: str, url: str, options: Options, rss: RssSampler) -> Measurement:
    """Run one scenario against `url`, sampling the broker's RSS throughout."""
    rss.reset()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rss.run)
        try:
            if name == "connections":
                m = await connections(url, options, rss)
            else:
                m = await _PLAIN[name](url, options)
        finally:
            nursery.cancel_scope.cancel()
    if m.skipped is None and rss.available:
        rss.sample()
        m.metrics["peak_rss_mib"] = rss.peak / 2**20
    return m
