"""What `list_queues` shows of a queue's replicas: the `pid`, `slave_pids`,
`synchronised_slave_pids`, `leader`, `members` and `online` items, from what the queue's
leader knows. Pure: the caller hands in the replica set, the Raft group's voters, the
followers' match indexes, the commit index and the nodes running now.

RabbitMQ 3.10.8 (tests/ctl/rabbitmq-3.10.8-mirrored-list-queues.txt):

- a classic queue without an ha-mode policy: `slave_pids` and `synchronised_slave_pids`
  are empty text; a mirrored one lists its mirrors' pids (`[]` when it has none); a
  mirror on a node that is down is not listed (its process is gone) until it is back;
- `leader`, `members`, `online` are empty for every classic queue, mirrored or not, and
  name nodes for a quorum queue: its leader's node, its members in the order the queue
  was created, the members running now;
- a quorum queue's `slave_pids` and `synchronised_slave_pids` are empty text.

A mirror is synchronised when it can take over without losing a message: it is a Raft
voter (a learner still copying, or a replica that manual sync has not added yet, is not)
and it holds every committed entry (its match index reaches the leader's commit index at
the time asked).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from cluster.mirrors import pid_text


def synchronised_followers(followers: Sequence[str], voters: Collection[str], match: Mapping[str, int],
                           commit: int) -> list[str]:
    """The followers that are voters holding every entry committed so far, in `followers`' order."""
    return [n for n in followers if n in voters and match.get(n, -1) >= commit]


def replica_items(*, vhost: str, name: str, queue_type: str, mirrored: bool, leader: str,
                  replicas: Sequence[str], running: Collection[str], voters: Collection[str],
                  match: Mapping[str, int], commit: int) -> dict[str, Any]:
    """The six replica items of one queue's `list_queues` row (and `synchronised_nodes`,
    `follower_nodes`, `replica_followers`).

    `queue_type` is the declared type ("classic" or another, listed as RabbitMQ lists
    quorum queues); `mirrored` whether a classic queue is under an ha-mode policy;
    `replicas` the replica set in the metadata's order (empty for a plain queue);
    `running` the nodes up now, as the leader sees them."""
    items: dict[str, Any] = {"pid": pid_text(leader, (vhost, name)), "slave_pids": "",
                             "synchronised_slave_pids": "", "leader": "", "members": "", "online": ""}
    followers = [n for n in dict.fromkeys(replicas) if n != leader and n in running]
    synced = synchronised_followers(followers, voters, match, commit)
    # Not an info item: the nodes that could lead the queue now without losing a message
    # (what rebalance_queues may move its leadership to), the leader first.
    items["synchronised_nodes"] = [leader, *synced]
    # Nor these: the followers running now and every follower in the replica set, by node
    # (the management API's slave_nodes and recoverable_slaves of a mirrored queue).
    items["follower_nodes"] = followers
    items["replica_followers"] = [n for n in dict.fromkeys(replicas) if n != leader]
    if queue_type != "classic":
        members = list(replicas) or [leader]
        items.update(leader=leader, members=members, online=[n for n in members if n in running])
    elif mirrored:
        items.update(slave_pids=[pid_text(n, (vhost, name)) for n in followers],
                     synchronised_slave_pids=[pid_text(n, (vhost, name)) for n in synced])
    return items
