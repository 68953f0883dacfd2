"""The node's side of clustering: its peers, the calls it serves them, forming and joining.

`cluster/` knows Raft groups, peer links and membership in general; this module
ties them to one node: it keeps the transport's peers equal to the metadata
group's members (plus a node being joined or a formation seed), serves the peer
calls other nodes make of this one (forwarded metadata changes, "who are your
members", "add me", "what do you look like" for cluster_status), and runs the
two ways a fresh node enters a cluster: formation from `cluster_nodes` at start,
and `join_cluster`.

Every answer to another node is a plain map; a node refusing says why in text.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import trio

from cluster import metadata as md
from cluster.control import EX_UNAVAILABLE
from cluster.group_client import CHANGE_MEMBERSHIP, PROPOSE, GroupClient, TransportCalls
from cluster.logtext import peer_text
from cluster.membership import (
    METADATA_GROUP,
    Bootstrap,
    JoinVia,
    SeedAnswer,
    add_member,
    formation_step,
    remove_member,
)
from cluster.portmapper import mapped_dial
from cluster.raft.driver import Applied
from cluster.transport import CallHandler, PeerTransport, PeerUnreachable, Replied

if TYPE_CHECKING:
    from broker.node import Node

log = logging.getLogger("leveret.cluster")

MEMBERS: Final = "cluster.members"
JOIN: Final = "cluster.join"
SUMMARY: Final = "cluster.summary"
# How often the transport's peers are brought in line with the members.
FOLLOW_INTERVAL: Final = 0.2
# A join adds a learner that must catch up before it is promoted.
JOIN_TIMEOUT: Final = 90.0
# A fresh node waits this long for its seeds to form a cluster before giving up.
FORMATION_TIMEOUT: Final = 300.0


class JoinRefused(Exception):
    """Joining another node's cluster failed; the text is for the operator."""

    def __init__(self, text: str, exit_code: int = EX_UNAVAILABLE) -> None:
        super().__init__(text)
        self.text = text
        self.exit_code = exit_code


def unreachable_text(node: str, outcome: Any) -> str:
    if isinstance(outcome, PeerUnreachable) and outcome.cookie_differs:
        return (f"unable to join the cluster of {node}: the cookie differs: authentication failed "
                "(rejected by the remote node), please check the cookie")
    reason = getattr(outcome, "reason", None) or str(outcome)
    return f"unable to perform an operation on node '{node}': {peer_text(reason)}"


class Clustering:
    def __init__(self, node: "Node", transport: PeerTransport) -> None:
        self.node = node
        self.transport = transport
        self.groups: GroupClient | None = None  # the running core's
        # Nodes to keep links to besides the members: a node being joined, formation seeds.
        self.extra_peers: set[str] = set()
        self._peers: frozenset[str] = frozenset()
        for method, handler in {MEMBERS: self._serve_members, JOIN: self._serve_join,
                                SUMMARY: self._serve_summary,
                                PROPOSE: self._serve_group_call(PROPOSE),
                                CHANGE_MEMBERSHIP: self._serve_group_call(CHANGE_MEMBERSHIP),
                                }.items():
            transport.on_call(method, handler)

    def attach_core(self) -> GroupClient:
        """A new core started: its driver is the one forwarded calls go to."""
        assert self.node.driver is not None
        self.groups = GroupClient(self.node.driver, TransportCalls(self.transport))
        return self.groups

    # ------------------------------------------------------------------ peers

    def follow_members(self) -> None:
        """Dial exactly the members, the extra peers and the leader (a joining node is not yet
        among the members it knows, but must answer the leader that is adding it); a no-op
        when nothing changed."""
        wanted = frozenset(self.node.cluster_members() | self.extra_peers | self.node.metadata_leader()) - {
            self.node.name}
        if wanted != self._peers:
            port = self.node.settings.port_mapper_port
            self.transport.set_peers({n: mapped_dial(n, mapper_port=port) for n in sorted(wanted)})
            self._peers = wanted

    async def follow_members_forever(self) -> None:
        while True:
            self.follow_members()
            await trio.sleep(FOLLOW_INTERVAL)

    # ------------------------------------------------------------------ calls served

    def _serve_group_call(self, method: str) -> CallHandler:
        async def serve(src: str, args: Any) -> Any:
            groups = self.groups
            if groups is None or not isinstance(args, Mapping):
                return {"not_leader": None}
            return await groups.handlers()[method](args)

        return serve

    async def _serve_members(self, src: str, args: Any) -> Any:
        return {"members": sorted(self.node.cluster_members())}

    async def _serve_summary(self, src: str, args: Any) -> Any:
        from broker.control_cluster import node_summary

        return node_summary(self.node)

    async def _serve_join(self, src: str, args: Any) -> Any:
        """Another node (`src`, as its handshake proved) asks to be added to this cluster."""
        groups = self.groups
        if groups is None:
            return {"error": f"node {self.node.name} is not running"}
        # Keep a link to the joiner while it is a learner not yet in our view of the members.
        self.extra_peers.add(src)
        self.follow_members()
        try:
            outcome = await add_member(groups, METADATA_GROUP, src, catch_up_timeout=JOIN_TIMEOUT)
        finally:
            self.extra_peers.discard(src)
        if isinstance(outcome, Applied):
            log.info("node %s joined the cluster", peer_text(src))
            return {"ok": True}
        return {"error": outcome.reason}

    # ------------------------------------------------------------------ entering a cluster

    async def members_of(self, node: str) -> tuple[str, ...] | JoinRefused:
        self.extra_peers.add(node)
        self.follow_members()
        outcome = await self.transport.call(node, MEMBERS, {}, timeout=10.0)
        if not isinstance(outcome, Replied) or not isinstance(outcome.value, Mapping):
            return JoinRefused(unreachable_text(node, outcome))
        return tuple(str(m) for m in outcome.value.get("members", ()))

    async def ask_to_join(self, target: str) -> str | None:
        """Ask `target` to add this node to its cluster; None once this node is a voter,
        else the operator's text."""
        self.extra_peers.add(target)
        self.follow_members()
        try:
            outcome = await self.transport.call(target, JOIN, {}, timeout=JOIN_TIMEOUT + 10)
        finally:
            self.extra_peers.discard(target)
        if not isinstance(outcome, Replied):
            return unreachable_text(target, outcome)
        value = outcome.value
        if isinstance(value, Mapping) and value.get("ok"):
            return None
        error = value.get("error") if isinstance(value, Mapping) else value
        return f"{target} could not add {self.node.name} to its cluster: {peer_text(error)}"

    async def formation(self, seeds: tuple[str, ...]) -> str | None:
        """For a fresh node with seed nodes: None to create the cluster, or the node whose
        cluster to join. Waits (bounded) while the seeds cannot tell."""
        me = self.node.name
        self.extra_peers |= set(seeds) - {me}
        self.follow_members()
        logged = ""
        with trio.move_on_after(FORMATION_TIMEOUT):
            while True:
                answers: dict[str, SeedAnswer] = {}
                for seed in sorted(set(seeds) - {me}):
                    outcome = await self.transport.call(seed, MEMBERS, {}, timeout=2.0)
                    if isinstance(outcome, Replied) and isinstance(outcome.value, Mapping):
                        answers[seed] = SeedAnswer(tuple(outcome.value.get("members", ())))
                step = formation_step(me, seeds, answers)
                if isinstance(step, Bootstrap):
                    log.info("forming a new cluster from seed nodes %s", ", ".join(seeds))
                    return None
                if isinstance(step, JoinVia):
                    return step.node
                if step.reason != logged:
                    log.info("cluster formation: %s", step.reason)
                    logged = step.reason
                await trio.sleep(0.5)
        raise JoinRefused(f"no cluster formed from seed nodes {', '.join(seeds)} within "
                          f"{FORMATION_TIMEOUT:g} s: {logged}")

    async def leave(self) -> str | None:
        """Remove this node from its cluster (reset); None when done or alone."""
        if not self.node.cluster_members() - {self.node.name} or self.groups is None:
            return None
        # The queues that lived here only go with this node; the durable ones stay listed,
        # homed on a node that is gone, as RabbitMQ keeps them after a reset.
        await self.node.propose_metadata(md.DropTransient(self.node.name))
        outcome = await remove_member(self.groups, METADATA_GROUP, self.node.name)
        return None if isinstance(outcome, Applied) else f"could not leave the cluster: {outcome.reason}"
