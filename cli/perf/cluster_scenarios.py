"""The cross-node scenarios, run on a 3-node cluster (`cli.perf.cluster`), by stable name.

    cross-transient  `transient` with its queue declared on node 1, the publisher on
                     node 1 and the consumer on node 2: every message crosses a peer link
    cross-confirmed  `confirmed` (durable queue, persistent, confirms, manual acks),
                     laid out the same way
    metadata-ops     clients on all three nodes, each looping queue.declare (durable) +
                     queue.bind (amq.direct) + queue.delete of names of its own: methods
                     answered per second, all clients together (one cycle = 3 operations)
    idle             the cluster with no client: after a settling time, CPU per node
                     (process and its children, psutil) and the bytes on the peer links
    mirrored         confirmed persistent 1 publisher (node 1) → 1 consumer (node 2, manual
                     acks, prefetch 256), 256 confirms in flight, through a queue mirrored by
                     an `ha-mode: all` policy and then through a quorum queue, both led by
                     node 1: confirmed msg/s and confirm latency p50/p99 for each
    failover         a confirmed publisher and a consumer on the two other nodes at a fixed
                     rate through an `ha-mode: all` queue; its leader's node is killed (-9)
                     part-way: time to the first ack and the first delivery after the kill
                     (of any message, and of one published after the kill: those in flight
                     at the kill can arrive at once), and what was lost, duplicated or nacked
    failover-quorum  the same through a quorum queue

`failover` and `failover-quorum` leave a node dead: `cluster-compare` gives each of them a
fresh cluster of its own (see `DESTRUCTIVE`).

Peer bytes are read from the kernel's TCP counters (`ss -ti`: bytes_acked +
bytes_received) of the established sockets whose local port is a node's peer port,
which is one end of every link between two nodes (Leveret's peer port, Erlang's
distribution port), so each link is counted once and in both directions, and
nothing else (AMQP, the port mapper, epmd) is.

The throughput scenarios are `cli.perf.scenarios`' own, with `Options.consume_url`:
the same workloads and the same accounting that proves each message arrived once.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, replace
from typing import Awaitable, Callable

import psutil
import trio

from broker.amqp import spec

from .client import BrokerClosed, Connection
from .accounting import PublishTally
from .cluster import ClusterNode, RunningCluster, queue_leader, queue_mirrors, set_policy
from .scenarios import Admin, Measurement, Options, account, await_known, cleanup, confirmed, name_for, transient
from .stats import percentile
from .workers import run_roles
from .workload import Role, Window, Workload

__all__ = ["CLUSTER_SCENARIOS", "ClusterOptions", "DESTRUCTIVE", "parse_ss", "peer_link_bytes",
           "run_cluster_scenario"]

CLUSTER_SCENARIOS: tuple[str, ...] = ("cross-transient", "cross-confirmed", "metadata-ops", "idle", "mirrored",
                                      "failover", "failover-quorum")
# Scenarios that kill a node: each runs on a fresh cluster of its own, after the others.
DESTRUCTIVE: frozenset[str] = frozenset({"failover", "failover-quorum"})

# Queues named perf.<scenario>.ha.<token> are mirrored on every node; quorum queues are
# declared as such (x-queue-type), and take 3 members on both brokers (their default size).
HA_POLICY_NAME = "perf-ha-all"
HA_POLICY_PATTERN = r"^perf\.[a-z-]+\.ha\."
HA_POLICY = {"ha-mode": "all", "ha-sync-mode": "automatic"}
QUEUE_KINDS = ("ha", "quorum")

# A metadata client stops after this many cycles even if time is left (a bound, never reached
# at the rates seen: ~1 ms per operation would take 100 s).
_MAX_CYCLES = 100_000


@dataclass(frozen=True, slots=True)
class ClusterOptions:
    """What the cluster scenarios take beyond the single-node `Options` (whose `duration` they use)."""

    base: Options
    clients_per_node: int = 2
    idle_settle: float = 10.0
    idle_seconds: float = 30.0
    # failover: messages per second, and when the leader's node is killed (seconds into the
    # publishing window, whose length is `base.duration`, at least kill_after + 5 s).
    failover_rate: float = 1000.0
    failover_kill_after: float = 5.0


# --- across nodes ---------------------------------------------------------------------------


async def cross_transient(nodes: list[ClusterNode], options: ClusterOptions) -> Measurement:
    return await transient(nodes[0].url, replace(options.base, consume_url=nodes[1].url))


async def cross_confirmed(nodes: list[ClusterNode], options: ClusterOptions) -> Measurement:
    return await confirmed(nodes[0].url, replace(options.base, consume_url=nodes[1].url))


# --- metadata operations --------------------------------------------------------------------


async def metadata_ops(nodes: list[ClusterNode], options: ClusterOptions) -> Measurement:
    m = Measurement()
    duration = options.base.duration
    prefix = f"perf.metadata.{secrets.token_hex(4)}"
    clients: list[tuple[int, int, Connection]] = []
    counts: dict[tuple[int, int], int] = {}
    left_over: set[tuple[str, str]] = set()  # (node URL, queue) a failed cycle may have left behind
    errors: list[str] = []
    try:
        for n, node in enumerate(nodes, 1):
            for c in range(1, options.clients_per_node + 1):
                conn = await Connection.open(node.url)
                clients.append((n, c, conn))
                await conn.open_channel(1)
        # Every client starts at once, once all are connected.
        start = trio.current_time() + 0.1
        end = start + duration

        async def loop(n: int, c: int, conn: Connection) -> None:
            await trio.sleep_until(start)
            done = 0
            url = nodes[n - 1].url
            try:
                for cycle in range(_MAX_CYCLES):
                    if trio.current_time() >= end:
                        break
                    queue = f"{prefix}.{n}.{c}.{cycle}"
                    left_over.add((url, queue))
                    for method, reply in (
                        (spec.QueueDeclare(0, queue, False, True, False, False, False, {}), spec.QueueDeclareOk),
                        (spec.QueueBind(0, queue, "amq.direct", queue, False, {}), spec.QueueBindOk),
                        (spec.QueueDelete(0, queue, False, False, False), spec.QueueDeleteOk),
                    ):
                        await conn.call(1, method, reply)
                        # Only operations answered within the window count.
                        if trio.current_time() < end:
                            done += 1
                    left_over.discard((url, queue))
            except (BrokerClosed, OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
                errors.append(f"metadata client {c} on node {n}: {type(exc).__name__}: {exc}")
            counts[(n, c)] = done

        with trio.fail_after(duration + 120):
            async with trio.open_nursery() as nursery:
                for n, c, conn in clients:
                    nursery.start_soon(loop, n, c, conn)
    finally:
        with trio.CancelScope(shield=True):
            for _, _, conn in clients:
                await conn.close(timeout=2.0)
        for url, queue in left_over:
            await cleanup(url, [queue], [])
    m.problems += errors
    total = sum(counts.values())
    m.metrics["metadata_ops_per_s"] = total / duration
    m.totals.update(operations=total, clients=len(clients), **{f"ops_node{n}_client{c}": v for (n, c), v in counts.items()})
    return m


# --- idle -----------------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live children (for RabbitMQ: beam.smp and
    erl_child_setup, inet_gethost ...); a child that exited since is simply missing."""
    total = 0.0
    proc = psutil.Process(pid)
    for p in [proc] + proc.children(recursive=True):
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


_SOCKET = re.compile(r"^\S+\s+\S+\s+\S+:(\d+)\s+(\S+)")
_COUNTER = re.compile(r"\b(bytes_acked|bytes_received):(\d+)")


def peer_link_bytes(peer_ports: set[int]) -> dict[tuple[int, str], int]:
    """Per established socket whose local port is one of `peer_ports`: bytes acked + received so far."""
    if shutil.which("ss") is None:
        raise RuntimeError("`ss` (iproute2) is needed to read the peer links' byte counters")
    text = subprocess.run(["ss", "-tinH", "state", "established"], capture_output=True, text=True, timeout=10,
                          check=True).stdout  # fmt: skip
    return parse_ss(text, peer_ports)


def parse_ss(text: str, local_ports: set[int]) -> dict[tuple[int, str], int]:
    """`ss -tinH` output → {(local port, peer address): bytes_acked + bytes_received} for the
    sockets on `local_ports`. Each socket is a line of addresses followed by an indented line of
    TCP info, where ss leaves out a counter that is still zero."""
    found: dict[tuple[int, str], int] = {}
    current: tuple[int, str] | None = None
    for line in text.splitlines():
        head = _SOCKET.match(line)
        if head:
            port = int(head.group(1))
            current = (port, head.group(2)) if port in local_ports else None
            continue
        if current is not None:
            found[current] = sum(int(v) for _, v in _COUNTER.findall(line))
            current = None
    return found


async def idle(nodes: list[ClusterNode], options: ClusterOptions) -> Measurement:
    m = Measurement()
    await trio.sleep(options.idle_settle)
    ports = {node.peer_port for node in nodes}
    links_before = peer_link_bytes(ports)
    cpu_before = [_cpu_seconds(node.pid) for node in nodes]
    started = time.monotonic()
    await trio.sleep(options.idle_seconds)
    cpu_after = [_cpu_seconds(node.pid) for node in nodes]
    links_after = peer_link_bytes(ports)
    seconds = time.monotonic() - started
    for i, (before, after) in enumerate(zip(cpu_before, cpu_after), 1):
        m.metrics[f"idle_cpu_pct_node{i}"] = 100 * (after - before) / seconds
    m.metrics["idle_cpu_pct_total"] = 100 * (sum(cpu_after) - sum(cpu_before)) / seconds
    # A link that appeared during the window counts from zero; one that went away is missing.
    moved = sum(after - links_before.get(key, 0) for key, after in links_after.items())
    m.metrics["idle_peer_bytes_per_s"] = moved / seconds
    if not links_after:
        m.problems.append(f"no established peer link on ports {sorted(ports)}")
    gone = set(links_before) - set(links_after)
    if gone:
        m.problems.append(f"{len(gone)} peer link(s) closed during the idle window: their bytes are not counted")
    m.totals.update(peer_links=len(links_after), peer_bytes=moved, window_ms=int(seconds * 1000))
    return m


# --- mirrored queues ------------------------------------------------------------------------


async def _ctl(cluster: RunningCluster, fn: Callable[..., object], *args: object) -> object:
    return await trio.to_thread.run_sync(fn, cluster, *args)


async def _declare_mirrored(cluster: RunningCluster, scenario: str, kind: str, problems: list[str]) -> str:
    """A queue of `kind` ("ha" or "quorum") declared through node 1 and known on every node;
    an ha queue once it has its two synchronised mirrors (waited for at most 30 s)."""
    name = f"perf.{scenario}.{kind}.{secrets.token_hex(4)}"
    if kind == "ha":
        await _ctl(cluster, set_policy, HA_POLICY_NAME, HA_POLICY_PATTERN, HA_POLICY)
    admin = await Admin.open(cluster.nodes[0].url)
    try:
        await admin.queue(name, True, {"x-queue-type": "quorum"} if kind == "quorum" else None)
    finally:
        await admin.close()
    for node in cluster.nodes[1:]:
        await await_known(node.url, [name])
    if kind == "ha":
        mirrors = 0
        with trio.move_on_after(30):
            while (mirrors := await _ctl(cluster, queue_mirrors, name)) < len(cluster.nodes) - 1:  # type: ignore[operator]
                await trio.sleep(0.2)
        if mirrors < len(cluster.nodes) - 1:
            problems.append(f"{name}: {mirrors} synchronised mirrors after 30 s, not {len(cluster.nodes) - 1}")
    return name


def _confirm_latencies_ms(publishers: list[PublishTally]) -> list[float]:
    return sorted(ns / 1e6 for p in publishers for ns in p.confirm_latencies_ns)


async def _mirrored_run(cluster: RunningCluster, options: ClusterOptions, kind: str, into: Measurement) -> None:
    nodes = cluster.nodes
    base = options.base
    problems: list[str] = []
    name = await _declare_mirrored(cluster, "mirrored", kind, problems)
    try:
        workload = Workload(routing_key=name, body_size=base.body_size, persistent=True, confirm_window=256,
                            auto_ack=False, prefetch=256, confirm_latencies=True)  # fmt: skip
        roles = [Role("publish", 1, url=nodes[0].url), Role("consume", 1, name, url=nodes[1].url)]
        outcome = await run_roles(nodes[0].url, workload, roles, base.duration, base.drain, base.procs)
    finally:
        await cleanup(nodes[0].url, [name], [])
    part = Measurement(problems=problems)
    account(outcome, part)
    into.metrics[f"{kind}_confirmed_per_s"] = sum(p.acked_in_window for p in outcome.publishers) / base.duration
    samples = _confirm_latencies_ms(outcome.publishers)
    if samples:
        into.metrics[f"{kind}_confirm_p50_ms"] = percentile(samples, 0.50)
        into.metrics[f"{kind}_confirm_p99_ms"] = percentile(samples, 0.99)
    into.problems += [f"{kind}: {p}" for p in part.problems]
    into.totals.update({f"{kind}_{k}": v for k, v in part.totals.items()})


async def mirrored(cluster: RunningCluster, options: ClusterOptions) -> Measurement:
    m = Measurement()
    for kind in QUEUE_KINDS:
        await _mirrored_run(cluster, options, kind, m)
    return m


async def _failover(cluster: RunningCluster, options: ClusterOptions, kind: str) -> Measurement:
    m = Measurement()
    nodes = cluster.nodes
    base = options.base
    duration = max(base.duration, options.failover_kill_after + 5.0)
    name = await _declare_mirrored(cluster, "failover", kind, m.problems)
    leader = await _ctl(cluster, queue_leader, name)
    # Not listed (RabbitMQ's classic queues): node 1, where it was declared, which holds the
    # master by RabbitMQ's default queue-master-locator (client-local).
    m.totals["leader_listed"] = int(leader is not None)
    if leader is None:
        leader = 0
    assert isinstance(leader, int)
    publish_at, consume_at = nodes[(leader + 1) % 3].url, nodes[(leader + 2) % 3].url
    workload = Workload(routing_key=name, body_size=base.body_size, persistent=True, confirm_window=10_000,
                        rate=options.failover_rate, auto_ack=False, prefetch=256, confirm_latencies=True,
                        keep_arrivals=True, idle=3.0)  # fmt: skip
    roles = [Role("publish", 1, url=publish_at), Role("consume", 1, name, url=consume_at)]
    windows: list[Window] = []
    killed_ns = 0

    async def kill() -> None:
        nonlocal killed_ns
        with trio.fail_after(120):
            while not windows:
                await trio.sleep(0.05)
        await trio.sleep(max(0.0, (windows[0].start_ns - time.monotonic_ns()) / 1e9 + options.failover_kill_after))
        killed_ns = time.monotonic_ns()
        await trio.to_thread.run_sync(cluster.kill, leader)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(kill)
            outcome = await run_roles(publish_at, workload, roles, duration, max(base.drain, 15.0), base.procs,
                                      windows)  # fmt: skip
    finally:
        await cleanup(publish_at, [name], [])
    result = account(outcome, m)
    if not killed_ns or not outcome.window or not outcome.window.start_ns < killed_ns < outcome.window.end_ns:
        m.problems.append("the kill did not fall inside the publishing window")
    # Any ack after the kill (possibly of a message committed just before it), and the
    # first ack of a message published after it: the queue taking publishes again.
    confirms = [t for p in outcome.publishers for t in p.confirm_times_ns if t > killed_ns]
    new_confirms = [t for p in outcome.publishers for sent, t in p.confirm_acks_ns if sent > killed_ns]
    arrivals = [t for r in outcome.receivers for _, t in r.arrivals_ns if t > killed_ns]
    new_arrivals = [t for r in outcome.receivers for sent, t in r.arrivals_ns if sent > killed_ns]
    for metric, times, what in (("failover_first_confirm_ms", confirms, "ack"),
                                ("failover_first_new_confirm_ms", new_confirms, "ack of a message published"),
                                ("failover_first_delivery_ms", arrivals, "delivery"),
                                ("failover_first_new_delivery_ms", new_arrivals, "delivery of a message published")):
        if times:
            m.metrics[metric] = (min(times) - killed_ns) / 1e6
        else:
            m.problems.append(f"no {what} after the kill")
    m.metrics["failover_lost"] = result.lost_confirmed
    m.metrics["failover_missing"] = result.missing
    m.metrics["failover_duplicates"] = result.duplicates
    m.metrics["failover_nacked"] = result.nacked
    m.totals.update(killed_node=leader + 1)
    return m


async def failover(cluster: RunningCluster, options: ClusterOptions) -> Measurement:
    return await _failover(cluster, options, "ha")


async def failover_quorum(cluster: RunningCluster, options: ClusterOptions) -> Measurement:
    return await _failover(cluster, options, "quorum")


# --- dispatch -------------------------------------------------------------------------------


def _on_nodes(
    fn: Callable[[list[ClusterNode], ClusterOptions], Awaitable[Measurement]],
) -> Callable[[RunningCluster, ClusterOptions], Awaitable[Measurement]]:
    return lambda cluster, options: fn(cluster.nodes, options)


_SCENARIOS: dict[str, Callable[[RunningCluster, ClusterOptions], Awaitable[Measurement]]] = {
    "cross-transient": _on_nodes(cross_transient),
    "cross-confirmed": _on_nodes(cross_confirmed),
    "metadata-ops": _on_nodes(metadata_ops),
    "idle": _on_nodes(idle),
    "mirrored": mirrored,
    "failover": failover,
    "failover-quorum": failover_quorum,
}


async def run_cluster_scenario(name: str, cluster: RunningCluster, options: ClusterOptions) -> Measurement:
    return await _SCENARIOS[name](cluster, options)
