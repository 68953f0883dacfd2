"""Replica planning for plain, mirrored (ha-mode all / exactly / nodes) and quorum queues,
and the rebalance plan: tables of cases first, then properties over random clusters."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.mirrors import (DEFAULT_QUORUM_GROUP_SIZE, ReplicaPlan, leader_moves, pid_text,
                             plan_replicas, queue_ident)

N3 = ("n1", "n2", "n3")
N5 = ("n1", "n2", "n3", "n4", "n5")


def plan(*, queue_type: str = "classic", arguments: Mapping[str, Any] | None = None,
         policy: Mapping[str, Any] | None = None, members: Collection[str] = N3,
         running: Collection[str] | None = None, current: Sequence[str] = (),
         leader: str | None = None, home: str = "n1", replica_counts: Mapping[str, int] | None = None,
         lost: Collection[str] = (), synchronised: Collection[str] = ()) -> ReplicaPlan:
    return plan_replicas(queue_type=queue_type, arguments=arguments or {}, policy=policy,
                         members=members, running=members if running is None else running,
                         current=current, leader=leader, home=home,
                         replica_counts=replica_counts or {}, lost=lost, synchronised=synchronised)


ALL = {"ha-mode": "all"}


def exactly(n: int, **more: Any) -> dict[str, Any]:
    return {"ha-mode": "exactly", "ha-params": n, **more}


def nodes(*listed: str) -> dict[str, Any]:
    return {"ha-mode": "nodes", "ha-params": list(listed)}


# --- plain classic queues ------------------------------------------------------------

@pytest.mark.parametrize("policy", [None, {}, {"max-length": 5}])
def test_a_classic_queue_without_ha_mode_has_one_replica(policy: Mapping[str, Any] | None) -> None:
    assert plan(policy=policy, home="n2") == ReplicaPlan(("n2",), "manual", "classic")
    assert plan(policy=policy, current=("n3",), leader="n3").members == ("n3",)


def test_a_plain_queue_whose_leader_is_unknown_stays_where_its_data_is() -> None:
    # n2 is down: its queue is not moved to the home of a new queue.
    assert plan(current=("n2",), leader=None, running=("n1", "n3")).members == ("n2",)


def test_a_queue_whose_every_replica_was_forgotten_has_an_empty_plan() -> None:
    for policy in (None, ALL, exactly(2), nodes("n1")):
        p = plan(policy=policy, members=("n1", "n2"), current=("n3",), leader=None)
        assert p.members == () and p.leader is None
    assert plan(queue_type="quorum", members=("n1",), current=("n2", "n3")).members == ()


# --- ha-mode all ---------------------------------------------------------------------

def test_all_new_queue_puts_home_first_then_every_member() -> None:
    assert plan(policy=ALL, home="n2") == ReplicaPlan(("n2", "n1", "n3"), "manual", "classic")


def test_all_includes_members_that_are_down() -> None:
    assert plan(policy=ALL, running=("n1",)).members == ("n1", "n2", "n3")


def test_all_a_joining_node_gains_a_mirror_and_a_forgotten_one_is_gone() -> None:
    assert plan(policy=ALL, members=N3 + ("n4",), current=("n2", "n1", "n3"), leader="n2").members \
        == ("n2", "n1", "n3", "n4")
    assert plan(policy=ALL, members=("n1", "n2"), current=("n2", "n1", "n3"), leader="n2").members \
        == ("n2", "n1")


def test_all_keeps_the_leader_first_and_the_current_order() -> None:
    assert plan(policy=ALL, current=("n1", "n2", "n3"), leader="n3", home="n1").members == ("n3", "n1", "n2")


# --- ha-mode exactly -----------------------------------------------------------------

def test_exactly_new_queue_fills_from_the_least_loaded_running_nodes() -> None:
    counts = {"n1": 4, "n2": 9, "n3": 1, "n4": 1, "n5": 0}
    assert plan(policy=exactly(3), members=N5, home="n2", replica_counts=counts).members == ("n2", "n5", "n3")


def test_exactly_ties_go_to_the_lowest_name() -> None:
    assert plan(policy=exactly(2), members=N5, home="n3").members == ("n3", "n1")


def test_exactly_never_more_than_the_members() -> None:
    assert plan(policy=exactly(5), home="n2").members == ("n2", "n1", "n3")


def test_exactly_skips_nodes_that_are_down_when_filling() -> None:
    assert plan(policy=exactly(3), members=N5, running=("n1", "n4", "n5"), home="n1").members == ("n1", "n4", "n5")
    # Fewer running nodes than asked: only those.
    assert plan(policy=exactly(3), running=("n1",)).members == ("n1",)


def test_exactly_keeps_current_replicas_and_only_tops_up() -> None:
    counts = {"n1": 0, "n2": 0, "n3": 0, "n4": 0, "n5": 0}
    p = plan(policy=exactly(3), members=N5, current=("n4", "n5"), leader="n5", replica_counts=counts)
    assert p.members == ("n5", "n4", "n1")


def test_exactly_keeps_a_replica_on_a_node_down_until_it_is_lost() -> None:
    current = ("n1", "n2", "n3")
    down = plan(policy=exactly(3), members=N5, running=("n1", "n2", "n4", "n5"), current=current, leader="n1")
    assert down.members == current
    counts = {"n4": 7, "n5": 2}
    gone = plan(policy=exactly(3), members=N5, running=("n1", "n2", "n4", "n5"), current=current,
                leader="n1", lost=("n3",), replica_counts=counts)
    assert gone.members == ("n1", "n2", "n5")


def test_exactly_a_forgotten_replica_is_replaced() -> None:
    p = plan(policy=exactly(3), members=("n1", "n2", "n4"), current=("n1", "n2", "n3"), leader="n2")
    assert p.members == ("n2", "n1", "n4")


def test_exactly_lowered_count_keeps_the_leader_and_running_replicas_first() -> None:
    current = ("n1", "n2", "n3", "n4")
    p = plan(policy=exactly(2), members=N5, running=("n1", "n3", "n4", "n5"), current=current, leader="n4")
    assert p.members == ("n4", "n1")
    assert plan(policy=exactly(1), members=N5, current=current, leader="n3").members == ("n3",)


def test_exactly_keeps_the_leader_even_on_a_node_marked_lost() -> None:
    p = plan(policy=exactly(2), current=("n1", "n2"), leader="n2", lost=("n2",), running=("n1", "n2", "n3"))
    assert p.members == ("n2", "n1")


def test_exactly_with_every_replica_lost_waits_for_them() -> None:
    # Re-placing every replica would make a new, empty queue: keep them.
    p = plan(policy=exactly(2), members=N5, running=("n1", "n4"), current=("n2", "n3"), leader=None,
             lost=("n2", "n3"))
    assert p.members == ("n2", "n3")


def test_exactly_with_the_leader_unknown_keeps_surviving_replicas() -> None:
    p = plan(policy=exactly(2), current=("n2", "n3"), leader=None, running=("n1", "n3"))
    assert p.members == ("n2", "n3")


# --- ha-mode nodes -------------------------------------------------------------------

def test_nodes_new_queue_on_a_listed_home() -> None:
    assert plan(policy=nodes("n3", "n2"), home="n2").members == ("n2", "n3")


def test_nodes_new_queue_homed_elsewhere_is_led_by_a_listed_running_node() -> None:
    # RabbitMQ starts it on the declaring node, then migrates the master to a listed node
    # once a listed mirror synchronises (an empty queue at once): the same end state.
    counts = {"n2": 5, "n3": 1}
    assert plan(policy=nodes("n2", "n3"), home="n1", replica_counts=counts).members == ("n3", "n2")


def test_nodes_new_queue_with_no_listed_node_running_keeps_home_as_leader() -> None:
    assert plan(policy=nodes("n2", "n3"), home="n1", running=("n1",)).members == ("n1", "n2", "n3")


def test_nodes_ignores_listed_nodes_that_are_not_members() -> None:
    assert plan(policy=nodes("n2", "ghost@nowhere"), home="n2").members == ("n2",)
    p = plan(policy=nodes("n1", "n3", "n9"), current=("n1", "n2"), leader="n1")
    assert p.members == ("n1", "n3")


def test_nodes_with_no_listed_member_keeps_the_current_replicas_or_home() -> None:
    assert plan(policy=nodes("ghost@nowhere"), home="n2").members == ("n2",)
    assert plan(policy=nodes("ghost@nowhere"), current=("n1", "n3"), leader="n3").members == ("n3", "n1")


def test_nodes_includes_a_listed_member_that_is_down() -> None:
    assert plan(policy=nodes("n1", "n3"), running=("n1", "n2"), current=("n1",), leader="n1").members \
        == ("n1", "n3")


def test_nodes_keeps_an_unlisted_leader_until_a_listed_replica_is_synchronised() -> None:
    base = dict(policy=nodes("n2", "n3"), current=("n1", "n2", "n3"), leader="n1")
    assert plan(**base).members == ("n1", "n2", "n3")
    assert plan(**base, synchronised=("n3",)).members == ("n3", "n2")
    # A synchronised replica on a node that is down cannot take over.
    assert plan(**base, synchronised=("n3",), running=("n1", "n2")).members == ("n1", "n2", "n3")
    # The first listed synchronised one (by name) takes over.
    assert plan(**base, synchronised=("n3", "n2")).members == ("n2", "n3")
    # Only a replica can be synchronised: a listed node without one yet cannot take over.
    assert plan(policy=nodes("n2", "n3"), current=("n1", "n2"), leader="n1", synchronised=("n3",)).members \
        == ("n1", "n2", "n3")


def test_nodes_a_listed_leader_drops_unlisted_replicas() -> None:
    p = plan(policy=nodes("n1", "n2"), current=("n1", "n2", "n3"), leader="n1")
    assert p.members == ("n1", "n2")


# --- sync mode -----------------------------------------------------------------------

def test_sync_mode_defaults_to_manual_as_in_rabbitmq() -> None:
    assert plan(policy=ALL).sync_mode == "manual"
    assert plan(policy={**ALL, "ha-sync-mode": "automatic"}).sync_mode == "automatic"
    assert plan(policy={**ALL, "ha-sync-mode": "manual"}).sync_mode == "manual"
    assert plan(policy=exactly(2, **{"ha-sync-mode": "automatic"})).sync_mode == "automatic"


def test_promote_keys_and_batch_size_do_not_change_the_plan() -> None:
    extra = {"ha-promote-on-shutdown": "always", "ha-promote-on-failure": "when-synced",
             "ha-sync-batch-size": 10}
    args = dict(current=("n1", "n2"), leader="n1")
    assert plan(policy={**exactly(2), **extra}, **args) == plan(policy=exactly(2), **args)


def test_a_malformed_ha_definition_leaves_the_queue_unmirrored() -> None:
    for policy in ({"ha-mode": "exactly", "ha-params": 0}, {"ha-mode": "exactly", "ha-params": True},
                   {"ha-mode": "nodes", "ha-params": []}, {"ha-mode": "sideways"}):
        assert plan(policy=policy, home="n2").members == ("n2",)


# --- quorum queues -------------------------------------------------------------------

def test_quorum_default_group_size_is_rabbitmqs_three() -> None:
    assert DEFAULT_QUORUM_GROUP_SIZE == 3
    p = plan(queue_type="quorum", members=N5, home="n4")
    assert p == ReplicaPlan(("n4", "n1", "n2"), "automatic", "quorum")


def test_quorum_initial_group_size_home_first_then_least_loaded_running() -> None:
    counts = {"n1": 3, "n2": 0, "n3": 2, "n4": 0, "n5": 1}
    p = plan(queue_type="quorum", arguments={"x-quorum-initial-group-size": 4}, members=N5,
             running=("n1", "n2", "n3", "n5"), home="n3", replica_counts=counts)
    assert p.members == ("n3", "n2", "n5", "n1")


def test_quorum_group_size_is_capped_by_running_members() -> None:
    p = plan(queue_type="quorum", arguments={"x-quorum-initial-group-size": 9}, running=("n1", "n2"))
    assert p.members == ("n1", "n2")
    assert plan(queue_type="quorum", arguments={"x-quorum-initial-group-size": 1}).members == ("n1",)


def test_quorum_members_do_not_follow_cluster_membership_except_forgetting() -> None:
    # A node joining does not gain a member; one down keeps its; a forgotten one loses it.
    assert plan(queue_type="quorum", members=N5, current=N3, leader="n2").members == ("n2", "n1", "n3")
    assert plan(queue_type="quorum", running=("n1",), current=N3, leader="n1", lost=("n2", "n3")).members == N3
    assert plan(queue_type="quorum", members=("n1", "n3"), current=N3, leader="n3").members == ("n3", "n1")


def test_quorum_ignores_ha_keys() -> None:
    args = dict(queue_type="quorum", members=N5, current=N3, leader="n1")
    for policy in (ALL, exactly(1), nodes("n5"), {**ALL, "ha-sync-mode": "manual"}):
        assert plan(policy=policy, **args) == ReplicaPlan(N3, "automatic", "quorum")


# --- leader_moves --------------------------------------------------------------------

def test_rebalance_evens_out_leaders_over_running_nodes() -> None:
    leaders = {f"q{i}": "n1" for i in range(7)}
    members = {q: N3 for q in leaders}
    moves = leader_moves(leaders, members, N3)
    after = Counter({**leaders, **dict(moves)}.values())
    assert sorted(after.values()) == [2, 2, 3]
    assert moves == [("q0", "n2"), ("q1", "n3"), ("q2", "n2"), ("q3", "n3")]


def test_rebalance_moves_only_to_a_running_member_of_the_queue() -> None:
    leaders = {"a": "n1", "b": "n1", "c": "n1"}
    members = {"a": ("n1",), "b": ("n1", "n3"), "c": ("n1", "n2", "n3")}
    assert leader_moves(leaders, members, ("n1", "n2")) == [("c", "n2")]


def test_rebalance_moves_the_shortest_queue_first() -> None:
    leaders = {"a": "n1", "b": "n1"}
    members = {"a": ("n1", "n2"), "b": ("n1", "n2")}
    assert leader_moves(leaders, members, ("n1", "n2"), lengths={"a": 50, "b": 3}) == [("b", "n2")]


def test_rebalance_leaves_balanced_and_down_led_queues_alone() -> None:
    leaders = {"a": "n1", "b": "n2", "c": "n3", "d": "n1"}
    members = {q: N3 for q in leaders}
    assert leader_moves(leaders, members, N3) == []
    # Queues led by n3, which is down, are Raft's to re-elect, not the rebalance's.
    down = {"a": "n3", "b": "n3", "c": "n3"}
    assert leader_moves(down, {q: N3 for q in down}, ("n1", "n2")) == []


def test_rebalance_relieves_a_node_under_its_share_when_spread_is_two() -> None:
    # RabbitMQ moves only from a node above ceil(total/nodes) = 2, so leaves 2/2/0.
    leaders = {"a": "n1", "b": "n1", "c": "n2", "d": "n2"}
    moves = leader_moves(leaders, {q: N3 for q in leaders}, N3)
    assert moves == [("a", "n3")]


# --- pids ----------------------------------------------------------------------------

def test_pid_text_has_rabbitmqs_shape_and_is_stable() -> None:
    ident = queue_ident("/", "orders")
    assert pid_text("leveret@n1", ident) == f"<leveret@n1.1.{ident}.0>"
    assert pid_text("leveret@n2", ("/", "orders")) == f"<leveret@n2.1.{ident}.0>"
    assert ident == queue_ident("/", "orders") == 0xFFFFFFFF & ident
    assert queue_ident("a", "bc") != queue_ident("ab", "c")
    assert queue_ident("/", "orders") != queue_ident("other", "orders")


def test_pid_text_matches_rabbitmqs_pid_pattern() -> None:
    import re
    assert re.fullmatch(r"<[^<>.]+@[^<>]+\.\d+\.\d+\.\d+>", pid_text("leveret@host", ("/", "q")))


# --- properties ----------------------------------------------------------------------

NAMES = ("n1", "n2", "n3", "n4", "n5", "n6")


@st.composite
def situations(draw: st.DrawFn) -> dict[str, Any]:
    members = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=6, unique=True))
    running = draw(st.lists(st.sampled_from(members), min_size=1, unique=True))
    home = draw(st.sampled_from(running))
    # Replicas may sit on nodes since forgotten (not in members).
    current = draw(st.lists(st.sampled_from(NAMES), max_size=6, unique=True))
    leader = draw(st.one_of(st.none(), st.sampled_from(current))) if current else None
    if leader is not None and leader not in running:
        leader = None  # a leader is reachable; one that is down is unknown
    lost = draw(st.lists(st.sampled_from([m for m in members if m not in running] or ["x"]), unique=True))
    counts = draw(st.dictionaries(st.sampled_from(NAMES), st.integers(0, 20), max_size=6))
    synchronised = draw(st.lists(st.sampled_from(current), unique=True)) if current else []
    queue_type = draw(st.sampled_from(("classic", "quorum")))
    policy = draw(st.one_of(
        st.none(), st.just(ALL),
        st.integers(1, 7).map(exactly),
        st.lists(st.sampled_from(NAMES + ("ghost",)), min_size=1, max_size=4, unique=True).map(lambda l: nodes(*l)),
    ))
    arguments = draw(st.one_of(st.just({}), st.integers(1, 7).map(lambda n: {"x-quorum-initial-group-size": n})))
    return dict(queue_type=queue_type, arguments=arguments, policy=policy, members=members, running=running,
                current=current, leader=leader, home=home, replica_counts=counts, lost=lost,
                synchronised=synchronised)


@settings(max_examples=300, deadline=None)
@given(situations())
def test_plan_is_within_members_deterministic_and_without_repeats(s: dict[str, Any]) -> None:
    p = plan_replicas(**s)
    assert set(p.members) <= set(s["members"])
    assert len(set(p.members)) == len(p.members)
    assert p == plan_replicas(**{**s, "members": list(reversed(s["members"])),
                                 "running": list(reversed(s["running"]))})
    assert p.sync_mode in ("automatic", "manual")
    assert p.kind == ("quorum" if s["queue_type"] == "quorum" else "classic")
    survivors = [n for n in s["current"] if n in s["members"]]
    if s["current"] and not survivors:
        assert p.members == ()
    else:
        assert p.members, "a queue with a surviving replica (or a new one) has a leader"


@settings(max_examples=300, deadline=None)
@given(situations())
def test_plan_keeps_the_leader_while_it_is_a_member(s: dict[str, Any]) -> None:
    p = plan_replicas(**s)
    leader = s["leader"]
    mode = (s["policy"] or {}).get("ha-mode")
    hands_over = s["queue_type"] == "classic" and mode == "nodes" and any(
        n in s["synchronised"] and n in s["running"] for n in s["policy"]["ha-params"] if n in s["members"])
    if leader is not None and leader in s["members"] and not hands_over:
        assert p.members[0] == leader


@settings(max_examples=300, deadline=None)
@given(situations())
def test_plan_size_rules(s: dict[str, Any]) -> None:
    p = plan_replicas(**s)
    members, current = set(s["members"]), s["current"]
    mode = (s["policy"] or {}).get("ha-mode")
    if s["queue_type"] == "quorum":
        if current:
            assert set(p.members) == set(current) & members
        else:
            size = s["arguments"].get("x-quorum-initial-group-size", 3)
            assert len(p.members) == min(size, len(s["running"]))
            assert set(p.members) <= set(s["running"])
    elif not current or set(current) & members:
        if mode == "all":
            assert set(p.members) == members
        elif mode == "exactly":
            count = s["policy"]["ha-params"]
            assert len(p.members) <= max(count, 1)
            # Filled as far as running, non-lost nodes allow.
            room = set(s["running"]) - set(s["lost"])
            assert len(p.members) == count or room <= set(p.members) or len(p.members) == len(members)
        elif mode == "nodes":
            listed = set(s["policy"]["ha-params"]) & members
            if listed:
                assert listed <= set(p.members) and len(set(p.members) - listed) <= 1
        else:
            assert len(p.members) == 1


@settings(max_examples=200, deadline=None)
@given(situations())
def test_exactly_keeps_replicas_that_are_not_lost(s: dict[str, Any]) -> None:
    s = {**s, "queue_type": "classic", "policy": exactly(len(NAMES))}
    p = plan_replicas(**s)
    kept = [n for n in s["current"] if n in s["members"] and n not in s["lost"]]
    assert set(kept) <= set(p.members)


@st.composite
def leaderships(draw: st.DrawFn) -> tuple[dict[str, str], dict[str, tuple[str, ...]], list[str], dict[str, int]]:
    nodes_ = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=6, unique=True))
    running = draw(st.lists(st.sampled_from(nodes_), min_size=1, unique=True))
    queues = [f"q{i}" for i in range(draw(st.integers(0, 25)))]
    members: dict[str, tuple[str, ...]] = {}
    leaders: dict[str, str] = {}
    for q in queues:
        group = draw(st.lists(st.sampled_from(nodes_), min_size=1, max_size=len(nodes_), unique=True))
        members[q] = tuple(group)
        leaders[q] = draw(st.sampled_from(group))
    lengths = draw(st.dictionaries(st.sampled_from(queues), st.integers(0, 100))) if queues else {}
    return leaders, members, running, lengths


def _loads(leaders: Mapping[str, str], running: Collection[str]) -> list[int]:
    counts = Counter(n for n in leaders.values() if n in running)
    return [counts.get(n, 0) for n in running]


@settings(max_examples=300, deadline=None)
@given(leaderships())
def test_leader_moves_stay_within_members_and_never_widen_the_spread(
        case: tuple[dict[str, str], dict[str, tuple[str, ...]], list[str], dict[str, int]]) -> None:
    leaders, members, running, lengths = case
    moves = leader_moves(leaders, members, running, lengths)
    assert moves == leader_moves(leaders, members, list(reversed(running)), lengths)
    assert len({q for q, _ in moves}) == len(moves), "a queue moves at most once"
    now = dict(leaders)
    before = _loads(now, running)
    spread = max(before) - min(before)
    for queue, target in moves:
        assert target in members[queue] and target in running and target != now[queue]
        assert now[queue] in running
        now[queue] = target
        loads = _loads(now, running)
        assert max(loads) - min(loads) <= spread
        spread = max(loads) - min(loads)
    # No move is left that would help: every queue still on a node leading two more than
    # one of its running members has either moved already or is pinned.
    moved = {q for q, _ in moves}
    counts = Counter(n for n in now.values() if n in running)
    for queue, node in now.items():
        if node in running and queue not in moved:
            assert all(counts[node] < counts[m] + 2 for m in members[queue] if m in running and m != node)
