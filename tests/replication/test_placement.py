"""Queue master locators: where a new queue's leader goes."""

from __future__ import annotations

import random

from cluster.placement import choose_home

RUNNING = ("n1", "n2", "n3")


def test_client_local_is_the_default_and_the_fallback() -> None:
    rng = random.Random(1)
    assert choose_home(None, "n2", RUNNING, {}, rng) == "n2"
    assert choose_home("client-local", "n3", RUNNING, {"n3": 9}, rng) == "n3"
    assert choose_home("nonsense", "n1", RUNNING, {}, rng) == "n1"


def test_min_masters_picks_the_node_leading_fewest_queues_lowest_name_on_ties() -> None:
    rng = random.Random(1)
    assert choose_home("min-masters", "n1", RUNNING, {"n1": 3, "n2": 1, "n3": 1}, rng) == "n2"
    assert choose_home("balanced", "n1", RUNNING, {"n1": 0, "n2": 0, "n3": 0}, rng) == "n1"
    # Placing queues one after another evens the counts out.
    counts = {"n1": 5, "n2": 0, "n3": 2}
    for _ in range(9):
        home = choose_home("min-masters", "n1", RUNNING, counts, rng)
        counts[home] += 1
    assert counts == {"n1": 6, "n2": 5, "n3": 5}


def test_random_uses_running_nodes_only() -> None:
    rng = random.Random(7)
    homes = {choose_home("random", "n1", ("n2",), {}, rng) for _ in range(50)}
    assert homes == {"n1", "n2"}
