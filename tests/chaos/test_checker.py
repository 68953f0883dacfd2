"""The checker fails runs that lose a confirmed message or deliver one never published, and
the nemesis's plans are reproducible by seed (pure: no broker needed)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.chaos.checker import Confirm, FaultSpan, check, failover_times, recovery_times, summarise
from tests.chaos.nemesis import KINDS, LEADER, plan


def test_a_clean_history_passes_and_counts_duplicates() -> None:
    v = check(["a", "b", "c", "d"], ["a", "b", "c"], ["a", "b", "b", "c", "c", "c"])
    assert v.ok
    assert (v.published, v.confirmed, v.delivered) == (4, 3, 3)
    assert v.lost == () and v.unexpected == ()
    assert v.duplicated == 3 and v.duplicated_ids == 2


def test_a_confirmed_message_that_never_arrives_is_reported_lost() -> None:
    v = check(["a", "b", "c"], ["a", "b", "c"], ["a", "c"])
    assert not v.ok
    assert v.lost == ("b",)
    assert v.unexpected == ()


def test_a_delivery_never_published_is_reported_unexpected() -> None:
    v = check(["a", "b"], ["a", "b"], ["a", "b", "ghost"])
    assert not v.ok
    assert v.unexpected == ("ghost",)
    assert v.lost == ()


def test_an_unconfirmed_message_may_or_may_not_arrive() -> None:
    assert check(["a", "b"], ["a"], ["a"]).ok  # b was nacked or timed out and is gone
    assert check(["a", "b"], ["a"], ["a", "b"]).ok  # b made it after all


@settings(max_examples=60, deadline=None)
@given(st.sets(st.integers(0, 50)), st.data())
def test_lost_and_unexpected_are_exactly_the_set_differences(published: set[int], data: st.DataObject) -> None:
    ids = sorted(str(i) for i in published)
    confirmed = data.draw(st.sets(st.sampled_from(ids))) if ids else set()
    delivered = data.draw(st.lists(st.sampled_from([*ids, "x1", "x2"]), max_size=80))
    v = check(ids, confirmed, delivered)
    assert set(v.lost) == confirmed - set(delivered)
    assert set(v.unexpected) == set(delivered) - set(ids)
    assert v.duplicated == len(delivered) - len(set(delivered))
    assert v.ok == (not v.lost and not v.unexpected)


def test_failover_time_is_the_worst_wait_of_a_publisher_on_a_surviving_node() -> None:
    confirms = [
        Confirm("p0.1", 1.0, 0, "n1", "q1"), Confirm("p0.2", 9.0, 0, "n2", "q1"),  # on the killed node
        Confirm("p1.1", 1.5, 1, "n2", "q1"), Confirm("p1.2", 3.0, 1, "n2", "q2"),
        Confirm("p2.1", 1.8, 2, "n3", "q2"), Confirm("p2.2", 6.0, 2, "n3", "q1"),
    ]
    fault = FaultSpan("kill", ("n1",), 2.0, 8.0)
    assert failover_times([fault], confirms) == (4.0,)  # publisher 2 waited 4 s; publisher 0 was on n1
    assert recovery_times([fault], confirms) == (4.0,)  # q1 confirmed again at 6.0, q2 at 3.0
    quiet = FaultSpan("pause", ("n2",), 20.0, 25.0)
    assert failover_times([quiet], confirms) == (None,)
    assert recovery_times([quiet], confirms) == (None,)
    assert summarise([1.0, None, 3.0, 2.0]) == "2.00/3.00"
    assert summarise([None]) == "-"


def test_a_plan_is_reproduced_by_its_seed_and_keeps_faults_apart() -> None:
    a = plan(7, KINDS, faults=6)
    assert a == plan(7, KINDS, faults=6)
    assert a != plan(8, KINDS, faults=6)
    for before, after in zip(a, a[1:]):
        assert after.at >= before.at + before.duration  # one fault at a time
    for f in a:
        assert f.kind in KINDS
        assert f.target == LEADER or 0 <= f.target < 3
        if f.kind == "bridge":
            assert f.other is not None and f.other != f.target
    assert all(f.target == LEADER for f in plan(3, ("kill",), faults=5, leader_share=1.0))
