"""Membership: the cluster view, formation from a seed list, and adding/removing members."""

from __future__ import annotations

import itertools

import trio
import trio.testing
from hypothesis import given, strategies as st

from cluster.group_client import Unavailable
from cluster.membership import (
    Bootstrap,
    JoinVia,
    SeedAnswer,
    WaitForSeeds,
    add_member,
    cluster_view,
    formation_step,
    remove_member,
)
from cluster.raft.driver import Applied

from .harness import GROUP, journal, leader, start


def test_the_view_lists_reachable_members_as_running_and_names_the_rest_as_partitioned() -> None:
    view = cluster_view("b", ["a", "b", "c"], reachable=["c", "z"])
    assert view.disk_nodes == ("a", "b", "c")
    assert view.running_nodes == ("b", "c")
    assert view.partitions == {"b": ("a",)}
    assert cluster_view("a", ["a"], reachable=[]).partitions == {}


SEEDS = ("n1", "n2", "n3")


def test_the_lowest_seed_bootstraps_and_the_others_wait_for_it() -> None:
    assert formation_step("n1", SEEDS, {}) == Bootstrap()
    assert isinstance(formation_step("n2", SEEDS, {}), WaitForSeeds)
    assert "n1" in formation_step("n3", SEEDS, {"n2": SeedAnswer(())}).reason  # type: ignore[union-attr]
    assert formation_step("n3", SEEDS, {"n1": SeedAnswer(("n1",))}) == JoinVia("n1")
    # A node alone in its list (or with none) is a cluster of one.
    assert formation_step("n9", ("n9",), {}) == Bootstrap()
    assert formation_step("n9", (), {}) == Bootstrap()


def test_a_formed_cluster_is_joined_even_by_the_lowest_seed() -> None:
    # n1 restarted fresh after n2 and n3 formed a cluster without it: it joins theirs.
    assert formation_step("n1", SEEDS, {"n3": SeedAnswer(("n2", "n3"))}) == JoinVia("n3")


@given(st.permutations(SEEDS), st.lists(st.sampled_from(SEEDS), max_size=12))
def test_formation_never_creates_two_clusters(order: list[str], reachability_flips: list[str]) -> None:
    """Nodes take formation steps in any order with any subset reachable: exactly one
    node ever bootstraps, and everyone ends in its cluster."""
    cluster: dict[str, tuple[str, ...]] = {}  # node -> the members it believes in
    up = set(SEEDS)
    flips = iter(reachability_flips)
    bootstraps = 0
    for node in itertools.islice(itertools.cycle(order), 60):
        flip = next(flips, None)
        if flip is not None and flip != node:
            up ^= {flip}
        if node in cluster:
            continue
        answers = {n: SeedAnswer(cluster.get(n, ())) for n in SEEDS if n in up and n != node}
        step = formation_step(node, SEEDS, answers)
        if isinstance(step, Bootstrap):
            bootstraps += 1
            cluster[node] = (node,)
        elif isinstance(step, JoinVia):
            members = cluster[step.node] + (node,)
            for m in members:
                cluster[m] = members
    assert bootstraps <= 1
    assert len({cluster[n] for n in cluster}) <= 1


async def test_a_member_is_added_through_any_node_and_removed(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net, drivers, clients = await start(nursery, ("a", "b", "c", "d"), ("a", "b", "c"))
        lead = await leader(drivers)
        for i in range(25):
            await clients[lead].propose(GROUP, b"%d" % i)
        follower = next(n for n in ("a", "b", "c") if n != lead)
        assert isinstance(await add_member(clients[follower], GROUP, "d"), Applied)
        assert drivers[lead].node.status(GROUP).voters == {"a", "b", "c", "d"}
        assert journal(drivers["d"])[:25] == journal(drivers[lead])[:25]
        # Adding it again changes nothing.
        assert isinstance(await add_member(clients["d"], GROUP, "d"), Applied)
        assert isinstance(await remove_member(clients["d"], GROUP, "c"), Applied)
        await trio.sleep(1)
        assert drivers["d"].node.status(GROUP).voters == {"a", "b", "d"}
        nursery.cancel_scope.cancel()


async def test_adding_a_member_from_a_minority_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net, drivers, clients = await start(nursery, ("a", "b", "c", "d"), ("a", "b", "c"))
        lead = await leader(drivers)
        follower = next(n for n in ("a", "b", "c") if n != lead)
        net.down.add(follower)
        assert isinstance(await add_member(clients[follower], GROUP, "d"), Unavailable)
        nursery.cancel_scope.cancel()


async def test_a_follower_removes_itself(autojump_clock: trio.testing.MockClock) -> None:
    """The leader stops replicating to a node at its removal, so the node never sees that
    entry applied; its own removal is done once committed."""
    async with trio.open_nursery() as nursery:
        net, drivers, clients = await start(nursery, ("a", "b", "c"), ("a", "b", "c"))
        lead = await leader(drivers)
        follower = next(n for n in drivers if n != lead)
        assert isinstance(await remove_member(clients[follower], GROUP, follower), Applied)
        assert drivers[lead].node.status(GROUP).voters == {"a", "b", "c"} - {follower}
        nursery.cancel_scope.cancel()
