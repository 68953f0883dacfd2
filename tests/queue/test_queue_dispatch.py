"""Consumer choice: round robin, consumer priorities, credit, single active consumer, exclusivity."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, strategies as st

from broker.arguments import Refusal
from broker.dispatch import Consumer, ConsumerSet

EXCLUSIVE = Refusal(403, "ACCESS_REFUSED - queue 'q' in vhost '/' in exclusive use")


def always(_c: Consumer) -> bool:
    return True


def test_round_robin_is_fair() -> None:
    cs = ConsumerSet("q", "/")
    for i in range(3):
        assert cs.add(Consumer(f"t{i}", channel=1)) is None
    picks = [cs.next_consumer(always).tag for _ in range(9)]  # type: ignore[union-attr]
    assert picks == ["t0", "t1", "t2"] * 3


@given(st.integers(1, 8), st.integers(1, 200))
def test_round_robin_spreads_evenly(n: int, messages: int) -> None:
    cs = ConsumerSet("q", "/")
    for i in range(n):
        cs.add(Consumer(f"t{i}", channel=i))
    counts = Counter(cs.next_consumer(always).tag for _ in range(messages))  # type: ignore[union-attr]
    assert max(counts.values()) - min(counts.get(f"t{i}", 0) for i in range(n)) <= 1


def test_consumers_without_credit_are_skipped() -> None:
    cs = ConsumerSet("q", "/")
    for tag in ("a", "b", "c"):
        cs.add(Consumer(tag, channel=tag))
    blocked = {"b"}
    picks = [cs.next_consumer(lambda c: c.tag not in blocked).tag for _ in range(4)]  # type: ignore[union-attr]
    assert picks == ["a", "c", "a", "c"]
    assert cs.next_consumer(lambda c: False) is None


def test_higher_priority_consumers_first_lower_only_when_they_are_full() -> None:
    cs = ConsumerSet("q", "/")
    cs.add(Consumer("low", channel=1, priority=0))
    cs.add(Consumer("high1", channel=1, priority=10))
    cs.add(Consumer("high2", channel=2, priority=10))
    picks = [cs.next_consumer(always).tag for _ in range(4)]  # type: ignore[union-attr]
    assert picks == ["high1", "high2", "high1", "high2"]
    full = {"high1", "high2"}
    assert cs.next_consumer(lambda c: c.tag not in full).tag == "low"  # type: ignore[union-attr]
    cs.remove(1, "high1")
    cs.remove(2, "high2")
    assert cs.next_consumer(always).tag == "low"  # type: ignore[union-attr]


def test_single_active_consumer_hand_over() -> None:
    cs = ConsumerSet("q", "/", single_active=True)
    cs.add(Consumer("first", channel=1))
    cs.add(Consumer("second", channel=2, priority=100))  # priority does not matter for SAC in 3.10
    cs.add(Consumer("third", channel=3))
    assert cs.active.tag == "first"  # type: ignore[union-attr]
    assert [cs.next_consumer(always).tag for _ in range(3)] == ["first"] * 3  # type: ignore[union-attr]
    # The active consumer out of credit: nobody else gets it.
    assert cs.next_consumer(lambda c: c.tag != "first") is None
    cs.remove(1, "first")
    assert cs.active.tag == "second"  # type: ignore[union-attr]
    assert cs.next_consumer(always).tag == "second"  # type: ignore[union-attr]
    cs.remove_channel(2)
    assert cs.active.tag == "third"  # type: ignore[union-attr]
    cs.remove(3, "third")
    assert cs.active is None and cs.next_consumer(always) is None


def test_exclusive_consumer_rules() -> None:
    cs = ConsumerSet("q", "/")
    assert cs.add(Consumer("ex", channel=1, exclusive=True)) is None
    assert cs.add(Consumer("other", channel=2)) == EXCLUSIVE
    assert cs.add(Consumer("other2", channel=2, exclusive=True)) == EXCLUSIVE
    assert len(cs) == 1
    cs.remove(1, "ex")
    assert cs.add(Consumer("plain", channel=2)) is None
    assert cs.add(Consumer("ex2", channel=3, exclusive=True)) == EXCLUSIVE


def test_remove_channel_drops_all_its_consumers() -> None:
    cs = ConsumerSet("q", "/")
    cs.add(Consumer("a", channel="ch1"))
    cs.add(Consumer("b", channel="ch2"))
    cs.add(Consumer("c", channel="ch1", priority=5))
    gone = cs.remove_channel("ch1")
    assert [c.tag for c in gone] == ["a", "c"]
    assert [c.tag for c in cs] == ["b"]
    assert cs.remove("ch1", "a") is None
    assert cs.get("ch2", "b") is not None


def test_same_tag_on_two_channels_are_two_consumers() -> None:
    cs = ConsumerSet("q", "/")
    cs.add(Consumer("t", channel=1))
    cs.add(Consumer("t", channel=2))
    assert [cs.next_consumer(always).channel for _ in range(2)] == [1, 2]  # type: ignore[union-attr]
