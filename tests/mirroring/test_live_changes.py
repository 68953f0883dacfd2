"""Replica sets changing while a confirmed publisher and an acking consumer run: policies
set, changed and cleared; a node joining and being forgotten; manual synchronisation."""

from __future__ import annotations

import time

import pytest

from tests.support.cluster import join
from tests.ctl.support import ctl, ok
from tests.mirroring.support import (
    declare,
    Load,
    control,
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

A, B, C, D = "a@localhost", "b@localhost", "c@localhost", "d@localhost"


def test_policy_set_changed_and_cleared_under_load(cluster: list[NodeProcess]) -> None:
    a, b, c = cluster
    queue = "live.q"
    declare(a, queue)
    wait_for(lambda: all(replica_row(n, queue) for n in cluster), what="queue known everywhere")
    with Load(b, c, queue, count=600, seconds=60, publish_gap=0.0) as load:
        wait_for(lambda: len(load.received) >= 100, what="load flowing")
        set_policy(a, "live", r"^live\.", '{"ha-mode":"all","ha-sync-mode":"automatic"}')
        wait_replicas(cluster, queue, {A, B, C})
        wait_for(lambda: len(load.received) >= 250, 30, "load flowing on the mirrored queue")
        set_policy(a, "live", r"^live\.", '{"ha-mode":"exactly","ha-params":2,"ha-sync-mode":"automatic"}')
        row = wait_for(lambda: (r := replica_row(a, queue)) and len(r["replicas"]) == 2 and r, what="2 replicas")
        wait_replicas(cluster, queue, set(row["replicas"]))
        wait_for(lambda: len(load.received) >= 400, 30, "load flowing on 2 replicas")
        ok(a, "clear_policy", "live")
        # Without its policy the queue keeps its group, with one replica (docs/mirroring.md).
        one = wait_for(lambda: (r := replica_row(a, queue)) and len(r["replicas"]) == 1 and r, what="1 replica")
        wait_replicas(cluster, queue, set(one["replicas"]))
        load.wait()
    load.check()
    assert len(load.confirmed) == 600


def test_a_node_joins_and_is_forgotten_under_load(cluster: list[NodeProcess]) -> None:
    a, b, c = cluster
    set_policy(a, "member", r"^member\.", '{"ha-mode":"all","ha-sync-mode":"automatic"}')
    declare(a, "member.loaded")
    declare(b, "member.idle")
    wait_replicas(cluster, "member.loaded", {A, B, C})
    wait_replicas(cluster, "member.idle", {A, B, C})
    publish_confirmed(c, "member.idle", [b"kept-%d" % i for i in range(20)])
    d = NodeProcess(name=D)
    try:
        d.start()
        with Load(b, c, "member.loaded", count=600, seconds=60, publish_gap=0.0) as load:
            wait_for(lambda: len(load.received) >= 100, what="load flowing")
            join(d, a.name)
            every = [*cluster, d]
            # The new member gains a replica of every ha-all queue, its group's voter.
            wait_replicas(every, "member.loaded", {A, B, C, D}, timeout=60)
            wait_replicas(every, "member.idle", {A, B, C, D}, timeout=60)
            # It serves them too: the idle queue's messages, consumed on d.
            got = drain(d, "member.idle", 20)
            assert sorted(body for body, _ in got) == sorted(b"kept-%d" % i for i in range(20))
            publish_confirmed(d, "member.idle", [b"again"])
            d.stop()
            assert ok(a, "forget_cluster_node", D).out == f"Removing node {D} from the cluster\n"
            # Forgotten: out of the metadata's replica sets and of every group's voters.
            wait_replicas(cluster, "member.loaded", {A, B, C}, timeout=60)
            wait_replicas(cluster, "member.idle", {A, B, C}, timeout=60)
            load.wait()
        load.check()
        assert len(load.confirmed) == 600
        assert [body for body, _ in drain(c, "member.idle", 1)] == [b"again"]
    finally:
        d.stop()
        ctl(a, "forget_cluster_node", D)  # so the other tests' ha-all queues are on a, b, c only


def test_manual_sync_adds_mirrors_only_on_sync_queue(cluster: list[NodeProcess]) -> None:
    a, b, c = cluster
    queue, empty = "manual.q", "manual.empty"
    declare(a, queue)
    declare(a, empty)
    bodies = [b"m-%03d" % i for i in range(50)]
    publish_confirmed(b, queue, bodies)
    # ha-sync-mode manual is the default.
    set_policy(a, "manual", r"^manual\.", '{"ha-mode":"all"}')
    # The empty queue has nothing to copy: its mirrors are synchronised at once.
    wait_replicas(cluster, empty, {A, B, C})
    # The queue with messages is mirrored in the metadata, but its group stays the leader alone.
    wait_for(lambda: all((r := replica_row(n, queue)) and set(r["replicas"]) == {A, B, C} for n in cluster),
             what="replicas named")
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        row = replica_row(a, queue)
        assert row is not None and row["voters"] == [A] and row["learners"] == [], row
        time.sleep(0.2)
    # Asked of a node that does not lead it: the command reaches the leader.
    reply = control(b, "sync_queue", name=queue)
    assert reply["ok"], reply
    leader = wait_replicas(cluster, queue, {A, B, C})
    # Synchronised mirrors hold every message: the leader's node may die.
    node_named(cluster, leader["leader"]).kill()
    survivor = next(n for n in running(cluster))
    got = drain(survivor, queue, len(bodies), timeout=60)
    assert sorted({body for body, _ in got}) == bodies
    node_named(cluster, leader["leader"]).start()
    wait_replicas(cluster, queue, {A, B, C}, timeout=60)
