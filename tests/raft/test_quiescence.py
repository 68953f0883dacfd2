"""Idle groups go quiet; node-level liveness wakes them when a member node fails or restarts."""

from __future__ import annotations

from cluster.raft.group import LEADER
from cluster.raft.sim import Sim, SimConfig

CFG = SimConfig(nodes=3, groups=30, group_size=3, steps=0)


def settled_sim(seed: int = 1) -> Sim:
    sim = Sim(seed, CFG)
    sim.heal()
    sim.max_delay = 1
    for gid in sim.group_ids:
        sim.nodes["n1"].raft.campaign(gid)
    for _ in range(120):
        sim.step()
    return sim


def count_messages(sim: Sim, steps: int) -> tuple[int, int]:
    frames = messages = 0
    original = sim.send

    def counting(b):  # type: ignore[no-untyped-def]
        nonlocal frames, messages
        frames += 1
        messages += len(b.messages)
        original(b)

    sim.send = counting  # type: ignore[method-assign]
    for _ in range(steps):
        sim.step()
    sim.send = original  # type: ignore[method-assign]
    return frames, messages


def test_idle_groups_stop_ticking_and_sending() -> None:
    sim = settled_sim()
    for n in sim.nodes.values():
        assert not n.raft.active, f"{n.id} still ticks {sorted(n.raft.active)}"
    frames, messages = count_messages(sim, 100)
    assert messages == 0
    # Only node-level heartbeats: one frame per ordered node pair every 2 ticks.
    assert frames <= 6 * 100 // 2 + 6


def test_activity_wakes_a_group_and_it_quiesces_again() -> None:
    sim = settled_sim()
    sim.propose("g1")
    for _ in range(60):
        sim.step()
    assert sim.acked["g1"]
    for n in sim.nodes.values():
        assert not n.raft.active


def test_crash_of_the_leaders_node_elects_new_leaders() -> None:
    sim = settled_sim()
    leaders = {gid: sim.leader_of(gid).id for gid in sim.group_ids}
    victim = sim.nodes[leaders["g1"]]
    sim.crash(victim)
    for _ in range(80):
        sim.step()
    for gid in sim.group_ids:
        leader = sim.leader_of(gid)
        assert leader is not None and leader is not victim
        if leaders[gid] == victim.id:
            assert leader.raft.groups[gid].term > 1
    sim.restart(victim)
    for gid in sim.group_ids:
        sim.propose(gid)
    for _ in range(120):
        sim.step()
    for gid in sim.group_ids:
        assert victim.applied[gid] == max(n.applied[gid] for n in sim.nodes.values())


def test_a_quick_restart_of_the_leaders_node_is_noticed() -> None:
    # The node is back before the failure detector times out: its new incarnation wakes the groups.
    sim = settled_sim()
    victim = sim.leader_of("g1")
    sim.crash(victim)
    sim.restart(victim)
    for _ in range(100):
        sim.step()
    for gid in sim.group_ids:
        leader = sim.leader_of(gid)
        assert leader is not None
        assert sum(1 for n in sim.nodes.values() if n.raft.groups[gid].role == LEADER) == 1
        r = sim.propose(gid)
        assert r is not None
    for _ in range(60):
        sim.step()
    for gid in sim.group_ids:
        assert len({n.applied[gid] for n in sim.nodes.values()}) == 1


def test_the_leaders_status_carries_each_followers_match_index() -> None:
    # What list_queues' synchronised_slave_pids are read from (cluster.replica_listing).
    sim = settled_sim()
    sim.propose("g1")
    for _ in range(60):
        sim.step()
    leader = sim.leader_of("g1")
    assert leader is not None
    status = leader.raft.status("g1")
    assert status.role == LEADER and set(status.match) == set(status.voters) - {leader.id}
    assert all(index == status.commit for index in status.match.values()), status
    follower = next(n for n in sim.nodes.values() if n.id != leader.id and "g1" in n.raft.groups)
    assert follower.raft.status("g1").match == {}
