"""`ClusterView`: the management API's answers for the whole cluster, from any node.

`NodeView` reads this node; what only another node knows is asked of it over the peer
link, each through the one call that already carries it:

- a queue's live items (counts, consumers, leader, synchronised mirrors) from its leader
  with `queue.replica_status` (`broker.replica_status`, as `leveretctl list_queues`);
- get, purge and the counts a delete checks through the queue's `QueueClient`
  (`Node.queue`: the leader here, or the peer link to it, as a channel's basic.get);
- sync / cancel_sync on the queue's leader (`broker.replica_control`, as `sync_queue`);
- each member's own figures with `node.status` (served here), and the peers each one
  reaches, from which the partitions follow (`cluster.partitions`);
- each member's connections, channels and the consumers of the queues it leads with
  `node.clients`, and closing a connection where it is with `connection.close`
  (`broker.cluster_clients`, served along with `node.status`).

A member that does not answer is down to the reader: its queues keep the row this node
made (state `down`), and its node row says `running: false`; no reader gets an error
because a peer is away.

Wire:  "node.status"  {}  -> {"running": false}
                           | {"running": true, "status": NodeView.status(), "processors": n,
                              "reachable": [node, ...]}
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import trio

from broker import cluster_clients
from broker.cluster_clients import Clients
from broker.node_view import SETTLE_MODES, NodeView
from broker.queue_client import Got, QueueUnavailable
from broker.replica_control import SYNC, on_leader
from broker.replica_status import Ranges, rows_of
from cluster import metadata as md
from cluster.control import ControlError
from cluster.mirrors import is_replicated, queue_type_of
from cluster.partitions import partitions
from cluster.transport import PeerTransport, Replied

if TYPE_CHECKING:
    from broker.node import Node

NODE_STATUS: Final = "node.status"
# How long /api/nodes waits for a member's figures (seconds): a member slower than this
# is shown as not running rather than holding the page.
NODE_CALL_TIMEOUT: Final = 3.0


@dataclass(frozen=True, slots=True)
class NodeReport:
    """One member as /api/nodes shows it: its figures when it answered (None: not running)."""

    name: str
    status: Mapping[str, Any] | None
    processors: int
    partitions: list[str]


def own_report(node: "Node") -> dict[str, Any]:
    """What this node tells another of itself (`node.status`'s answer)."""
    if node.driver is None or not node.app_running:
        return {"running": False}
    return {"running": True, "status": NodeView(node).status(), "processors": os.cpu_count() or 1,
            "reachable": sorted(node.reachable_nodes())}


def serve_node_status(node: "Node", transport: PeerTransport) -> None:
    """Answer `node.status`, and `node.clients` and `connection.close`
    (`broker.cluster_clients`), once per process; each call reads the running core."""
    cluster_clients.serve_clients(node, transport)

    async def handle(src: str, args: Any) -> Any:
        await trio.lowlevel.checkpoint()
        return own_report(node)

    transport.on_call(NODE_STATUS, handle)


class ClusterView:
    def __init__(self, node: "Node") -> None:
        self.node = node
        self.local = NodeView(node)

    @property
    def transport(self) -> PeerTransport:
        return self.node.clustering.transport

    # ------------------------------------------------------------------ queues

    async def queue_rows(self, vhosts: Sequence[str], ranges: Ranges | None = None) -> list[dict[str, Any]]:
        """Every queue of `vhosts`, each row with its leader's live items and counters (and
        its past values at the times of `ranges`, when a chart asks)."""
        meta = self.local.metadata
        return await rows_of(self.local, self.transport, [q for v in vhosts for q in meta.queues(v)], ranges)

    async def queue_row(self, q: md.QueueRecord, ranges: Ranges | None = None) -> dict[str, Any]:
        return (await rows_of(self.local, self.transport, [q], ranges))[0]

    async def queue_lengths(self, vhost: str, name: str) -> tuple[int, int] | QueueUnavailable | None:
        """(ready messages, consumers) from the queue's leader; None if there is no such queue."""
        client = self.node.queue(vhost, name)
        if client is None:
            return None
        counts = await client.counts(self.node.now_ms(), touch=False)
        if isinstance(counts, QueueUnavailable):
            return counts
        return counts.messages, counts.consumers

    async def purge(self, vhost: str, name: str) -> int | QueueUnavailable | None:
        """Purge a queue on its leader: how many messages went; None if there is no such queue."""
        client = self.node.queue(vhost, name)
        if client is None:
            return None
        return await client.purge(self.node.now_ms())

    async def get_messages(self, vhost: str, name: str, count: int,
                           settle: str) -> list[Got] | QueueUnavailable | None:
        """Take up to `count` messages as basic.get with acknowledgement does, from the queue's
        leader wherever it is, then settle them all by `settle` (one of SETTLE_MODES), as
        RabbitMQ's management get does; None if there is no such queue."""
        assert settle in SETTLE_MODES
        client = self.node.queue(vhost, name)
        if client is None:
            return None
        taken: list[Got] = []
        for _ in range(max(count, 0)):
            got = await client.get(self.node.now_ms(), False)
            if isinstance(got, QueueUnavailable):
                if not taken:
                    return got
                break  # settle what was taken; the leader takes back the rest if it went away
            if got is None:
                break
            taken.append(got)
        now = self.node.now_ms()
        by_ref: dict[Any, list[int]] = {}
        for got in taken:
            by_ref.setdefault(got.ref, []).append(got.seq)
        for ref, seqs in by_ref.items():
            if not client.holds(ref):
                continue  # another incarnation since: its leader already took them back
            if settle == "ack_requeue_false":
                client.settle(ref, tuple(seqs), now)
            elif settle == "reject_requeue_false":
                client.reject(ref, tuple(seqs), now)
            else:
                client.requeue(ref, tuple(seqs), now)
        return taken

    async def sync(self, vhost: str, name: str, cancel: bool) -> bool:
        """Start (or stop) synchronising a mirrored classic queue's mirrors on its leader, as
        RabbitMQ's queue actions do: whether its leader took the request. A queue without
        mirrors, or a quorum queue, has nothing to synchronise (False)."""
        q = self.local.metadata.queue(vhost, name)
        if q is None or not q.replicated or queue_type_of(q.arguments) != "classic":
            await trio.lowlevel.checkpoint()
            return False
        policy = self.local.metadata.effective_policy(vhost, name, "queue")
        if not is_replicated("classic", policy.definition if policy is not None else None):
            await trio.lowlevel.checkpoint()
            return False
        try:
            answer = await on_leader(self.node, vhost, name, SYNC, {"cancel": cancel})
        except ControlError:
            return False  # its leader cannot be reached now
        return bool(answer.get("ok")) and not answer.get("missing")

    # ------------------------------------------------------------------ connections, channels, consumers

    async def clients(self) -> Clients:
        """Every member's connections, channels and consumers, each row with its `node`
        (a member that does not answer is left out)."""
        return await cluster_clients.gather(self.node, self.transport)

    async def close_connection(self, where: str, name: str, reason: str) -> bool:
        """Close connection `name` on node `where`; whether it was there to close."""
        return await cluster_clients.close_connection(self.node, self.transport, where, name, reason)

    # ------------------------------------------------------------------ nodes

    async def vhost_cluster_state(self) -> dict[str, str]:
        """A vhost's `cluster_state` as RabbitMQ 3.10 words it (`rabbit_vhost:vhost_cluster_state`):
        every running member, `running` (a Leveret node runs every vhost it knows), or
        `nodedown` for one counted as running that did not answer in time; a member that is
        stopped, or that this node cannot reach, is not running and is not listed."""
        node = self.node
        states = {node.name: "running"}
        reachable = node.reachable_nodes()

        async def ask(target: str) -> None:
            outcome = await self.transport.call(target, NODE_STATUS, {}, timeout=NODE_CALL_TIMEOUT)
            if not isinstance(outcome, Replied) or not isinstance(outcome.value, Mapping):
                states[target] = "nodedown"
            elif outcome.value.get("running"):
                states[target] = "running"

        async with trio.open_nursery() as nursery:
            for name in sorted(node.cluster_members() - {node.name}):
                if name in reachable:
                    nursery.start_soon(ask, name)
        return dict(sorted(states.items()))

    async def node_reports(self) -> list[NodeReport]:
        """Every member of the cluster, by name: this node's figures, and each other member's
        as it answered (`running` false for one that cannot be reached or did not answer)."""
        node = self.node
        me = node.name
        members = node.cluster_members() | {me}
        reachable = node.reachable_nodes()
        # This node answers for itself even while its app is stopped: it is the one serving.
        answers: dict[str, Mapping[str, Any]] = {me: {"running": True, "status": self.local.status(),
                                                      "processors": os.cpu_count() or 1,
                                                      "reachable": sorted(reachable)}}

        async def ask(target: str) -> None:
            outcome = await self.transport.call(target, NODE_STATUS, {}, timeout=NODE_CALL_TIMEOUT)
            if isinstance(outcome, Replied) and isinstance(outcome.value, Mapping) and outcome.value.get("running"):
                answers[target] = outcome.value

        async with trio.open_nursery() as nursery:
            for name in sorted(members - {me}):
                if name in reachable:
                    nursery.start_soon(ask, name)
        split = partitions(members, {n: [str(p) for p in a.get("reachable") or ()] for n, a in answers.items()})
        reports = []
        for name in sorted(members):
            answer = answers.get(name)
            reports.append(NodeReport(name, answer["status"] if answer is not None else None,
                                      int(answer.get("processors") or 1) if answer is not None else 0,
                                      split.get(name, [])))
        return reports
