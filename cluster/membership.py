"""Who is in the cluster: joining, leaving, forming from a seed list, and cluster_status.

The cluster's members are the members of the metadata Raft group: a node joins
by being added to it (as a learner that catches up from the log or a snapshot,
then promoted to voter: one server change at a time, as Raft's single-server
membership change requires), leaves by being removed, and is forgotten by being
removed while it is down. There is no second list of members to keep in step.

Which members are *running* is what this node can reach over its peer links, so
two sides of a partition each list the nodes they can reach and name the others
under network partitions; both clear by themselves when the links come back.

Formation from `cluster_nodes` (nodes started together with the same seed list)
must give one cluster, never two: a fresh node joins any seed that already
belongs to a formed cluster; failing that, only the lowest-named seed creates
the cluster, and every other node waits until it has. A lone lowest seed that
never comes up therefore holds formation back rather than letting two nodes
each create a cluster of their own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

import trio

from cluster.group_client import GroupClient, Unavailable
from cluster.raft.driver import Applied
from cluster.raft.group import ConfChange, Refused

# The Raft group every node belongs to: vhosts, users, exchanges, queues, bindings, policies.
METADATA_GROUP: Final = "metadata"
# How long a learner may take to catch up before its join is given up.
CATCH_UP_TIMEOUT: Final = 60.0
PROMOTE_RETRY: Final = 0.1


# --------------------------------------------------------------------------- the view


@dataclass(frozen=True, slots=True)
class ClusterView:
    """What cluster_status shows, from one node's side."""

    disk_nodes: tuple[str, ...]  # every member (every Leveret node is a disc node)
    running_nodes: tuple[str, ...]  # members this node can reach, itself included
    partitions: Mapping[str, tuple[str, ...]]  # this node -> the members it cannot reach


def cluster_view(me: str, members: Iterable[str], reachable: Iterable[str]) -> ClusterView:
    everyone = sorted(set(members) | {me})
    up = set(reachable) | {me}
    running = tuple(n for n in everyone if n in up)
    cut_off = tuple(n for n in everyone if n not in up)
    return ClusterView(tuple(everyone), running, {me: cut_off} if cut_off else {})


# --------------------------------------------------------------------------- formation


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """Create the cluster: the metadata group with this node as its only voter."""


@dataclass(frozen=True, slots=True)
class JoinVia:
    """Join the cluster `node` belongs to."""

    node: str


@dataclass(frozen=True, slots=True)
class WaitForSeeds:
    reason: str


@dataclass(frozen=True, slots=True)
class SeedAnswer:
    """A reachable seed's word: the members of its cluster (empty while it has none)."""

    members: tuple[str, ...]


def formation_step(me: str, seeds: Iterable[str],
                   answers: Mapping[str, SeedAnswer]) -> Bootstrap | JoinVia | WaitForSeeds:
    """What a fresh node with seed list `seeds` does next, given the seeds that answered."""
    others = sorted(set(seeds) - {me})
    if not others:
        return Bootstrap()
    formed = sorted(n for n in others if n in answers and answers[n].members)
    if formed:
        return JoinVia(formed[0])
    lowest = min([me, *others])
    if lowest == me:
        return Bootstrap()
    if lowest in answers:
        return WaitForSeeds(f"waiting for {lowest} to form the cluster")
    return WaitForSeeds(f"waiting for {lowest}, the lowest-named seed node, to be reachable")


# --------------------------------------------------------------------------- changes


async def add_member(client: GroupClient, group: str, node: str, *,
                     catch_up_timeout: float = CATCH_UP_TIMEOUT) -> Applied | Refused | Unavailable:
    """Add `node` to `group` as a voter: first a learner, promoted once it has caught up.
    Idempotent: a node that is already a learner is only promoted, a voter is left be."""
    added = await client.change_membership(group, ConfChange("add_learner", node))
    if isinstance(added, Refused) and "already a member" not in added.reason:
        return added
    if isinstance(added, Unavailable):
        return added
    with trio.move_on_after(catch_up_timeout):
        while True:
            promoted = await client.change_membership(group, ConfChange("promote", node))
            if isinstance(promoted, Applied) or isinstance(promoted, Unavailable):
                return promoted
            if "is not a learner" in promoted.reason:
                return promoted if "already" not in added.reason else Applied(group, 0, None)
            # Not caught up yet, or another change in flight: ask again shortly.
            await trio.sleep(PROMOTE_RETRY)
    return Unavailable(group, f"{node} did not catch up within {catch_up_timeout:g} s")


async def remove_member(client: GroupClient, group: str, node: str) -> Applied | Refused | Unavailable:
    return await client.change_membership(group, ConfChange("remove", node))
