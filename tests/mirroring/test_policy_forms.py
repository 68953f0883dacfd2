"""Each way of replicating a queue on a 3-node cluster (ha-mode all, exactly 2, nodes [b, c],
quorum with 2 and with the default 3 replicas): the replica set the metadata names is the
Raft group's voter set, confirmed persistent messages published on one node are consumed on
another, and a kill -9 of the leader's node loses no confirmed message.

A group of three survives its leader's loss: the survivors elect a new leader and serve at
once. A group of two cannot (one voter is no majority, as a 2-member quorum queue in
RabbitMQ), so there the killed node is restarted and the messages are consumed from the
other replica."""

from __future__ import annotations

import pytest

from tests.ctl.support import connect
from tests.mirroring.support import (
    drain,
    node_named,
    publish_confirmed,
    replica_row,
    running,
    set_policy,
    wait_for,
    wait_replicas,
)
from tests.support.node_process import NodeProcess

A, B, C = "a@localhost", "b@localhost", "c@localhost"

# (id, policy definition or None, declare arguments, replica count, nodes that must be replicas)
FORMS = [
    ("ha-all", '{"ha-mode":"all"}', {}, 3, {A, B, C}),
    ("ha-exactly-2", '{"ha-mode":"exactly","ha-params":2,"ha-sync-mode":"automatic"}', {}, 2, {A}),
    ("ha-nodes-b-c", '{"ha-mode":"nodes","ha-params":["b@localhost","c@localhost"]}', {}, 2, {B, C}),
    ("quorum-2", None, {"x-queue-type": "quorum", "x-quorum-initial-group-size": 2}, 2, {A}),
    ("quorum-default", None, {"x-queue-type": "quorum"}, 3, {A, B, C}),
]


@pytest.mark.parametrize("form, policy, arguments, size, included", FORMS, ids=[f[0] for f in FORMS])
def test_replica_set_cross_node_traffic_and_leader_kill(
        cluster: list[NodeProcess], form: str, policy: str | None, arguments: dict, size: int,
        included: set[str]) -> None:
    a, b, c = cluster
    queue = f"{form}.q"
    if policy is not None:
        set_policy(a, f"mirror-{form}", f"^{form}\\.", policy)
    conn = connect(a)
    conn.channel().queue_declare(queue, durable=True, arguments=arguments)
    conn.close()

    # The replica set: the metadata's on every node and the group's voters agree.
    row = wait_for(lambda: replica_row(a, queue), what="queue known")
    replicas = set(row["replicas"])
    assert len(replicas) == size and included <= replicas, row
    leader_row = wait_replicas(cluster, queue, replicas)
    leader = node_named(cluster, leader_row["leader"])

    # Published on a node, consumed on another one (neither need be the leader).
    first = [b"first-%03d" % i for i in range(150)]
    publish_confirmed(b, queue, first)
    got = drain(c, queue, len(first))
    assert [body for body, _ in got] == first
    assert not any(redelivered for _, redelivered in got)

    # Confirmed messages survive a kill -9 of the leader's node.
    publisher = next(n for n in cluster if n is not leader)
    second = [b"second-%03d" % i for i in range(150)]
    publish_confirmed(publisher, queue, second)
    leader.kill()
    if size == 2:
        # Unavailable until the killed replica is back (and the group has a leader again).
        leader.start()
        wait_replicas(cluster, queue, replicas, timeout=60)
    survivor = next(n for n in running(cluster) if n is not leader)
    got = drain(survivor, queue, len(second), timeout=60)
    bodies = [body for body, _ in got]
    assert sorted(set(bodies)) == second, (len(bodies), sorted(set(second) - set(bodies))[:5])
    # A message delivered twice was flagged redelivered the second time.
    seen: set[bytes] = set()
    for body, redelivered in got:
        assert body not in seen or redelivered, body
        seen.add(body)
    if size == 3:
        # The group went on with two voters; the killed node comes back as a replica.
        assert leader.name in set(wait_for(lambda: replica_row(survivor, queue), what="queue")["replicas"])
        leader.start()
    wait_replicas(cluster, queue, replicas, timeout=60)
