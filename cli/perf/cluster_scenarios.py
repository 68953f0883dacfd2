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
from .cluster import ClusterNode, RunningCluster
from .scenarios import Measurement, Options, cleanup, confirmed, transient

__all__ = ["CLUSTER_SCENARIOS", "ClusterOptions", "parse_ss", "peer_link_bytes", "run_cluster_scenario"]

CLUSTER_SCENARIOS: tuple[str, ...] = ("cross-transient", "cross-confirmed", "metadata-ops", "idle")

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


# --- dispatch -------------------------------------------------------------------------------

_SCENARIOS: dict[str, Callable[[list[ClusterNode], ClusterOptions], Awaitable[Measurement]]] = {
    "cross-transient": cross_transient,
    "cross-confirmed": cross_confirmed,
    "metadata-ops": metadata_ops,
    "idle": idle,
}


async def run_cluster_scenario(name: str, cluster: RunningCluster, options: ClusterOptions) -> Measurement:
    return await _SCENARIOS[name](cluster.nodes, options)
