"""Partitions from the members' own words (pure).

A node cannot tell a peer that is down from one it is cut off from: both are a peer link
that does not work. The management API's `/api/nodes` asks every member it reaches which
peers *they* reach; a member that someone reaches and another member does not is running
on the far side of a partition from that member. A member nobody reaches is down, not
partitioned (RabbitMQ lists a stopped node as not running, with no partition).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def partitions(members: Iterable[str], reach: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    """Each member heard from (a key of `reach`: the peers it has a working link to) and
    the members it is partitioned from: running (heard from, or reached by some member
    heard from) but not among the peers it reaches. Members not heard from are absent."""
    everyone = set(members) | set(reach)
    reached = {node: set(peers) for node, peers in reach.items()}
    running = set(reach) | {peer for peers in reached.values() for peer in peers}
    return {node: sorted(n for n in everyone if n != node and n in running and n not in peers)
            for node, peers in reached.items()}
