"""The charts' history (`broker.management.rates.History`): values at aligned times as
RabbitMQ's `samples` give them, bounded memory however long the node runs, and the chart
items (`samples`, `avg`, `avg_rate`) in RabbitMQ 3.10.8's shape."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.management.rates import (
    COARSE_KEEP_S,
    COARSE_STEP_S,
    FINE_KEEP_S,
    MAX_CHART_SAMPLES,
    History,
    SampleRange,
    chart,
    chart_ranges,
    sum_values,
    with_details,
)


def test_a_range_is_aligned_on_its_increment_newest_first() -> None:
    at = SampleRange.last(1_000_012_345, 60, 5)
    assert at == SampleRange(1_000_010_000, 5000, 13)
    assert at.times_ms()[:3] == [1_000_010_000, 1_000_005_000, 1_000_000_000]
    assert SampleRange.from_wire(at.wire()) == at
    assert SampleRange.from_wire([1, 0, 3]) is None and SampleRange.from_wire([1, 5, MAX_CHART_SAMPLES + 1]) is None
    assert SampleRange.from_wire("x") is None and SampleRange.from_wire([1.5, 5, 3]) is None


def test_values_are_the_latest_sample_at_or_before_each_time_and_zero_before_the_first() -> None:
    h = History()
    h.record(1000.0, {"q": {"publish": 10, "messages": 1}})
    h.record(1005.0, {"q": {"publish": 30, "messages": 3}})
    h.record(1010.0, {"q": {"publish": 30, "messages": 3}})  # unchanged: not kept
    assert h.kept("q") == 2
    at = SampleRange(1_015_000, 5000, 5)  # 1015, 1010, 1005, 1000, 995
    assert h.values("q", ("publish", "messages"), at) == {"publish": [30, 30, 30, 10, 0],
                                                          "messages": [3, 3, 3, 1, 0]}
    assert h.values("other", ("publish",), at) == {}
    h.record(1015.0, {})  # the queue is gone (deleted, or led elsewhere now): forgotten
    assert h.values("q", ("publish",), at) == {} and h.kept("q") == 0


def test_a_day_of_busy_samples_keeps_ten_minutes_fine_and_an_hour_coarse() -> None:
    h = History()
    t, n = 0.0, 0
    while t <= 86_400:
        n += 1
        h.record(t, {"q": {"publish": n}})
        t += 5.0
    bound = FINE_KEEP_S / 5 + 1 + COARSE_KEEP_S / COARSE_STEP_S + 2
    assert h.kept("q") <= bound
    last = t - 5.0
    # The last ten minutes at 5 s: every sample's own value.
    fine = h.values("q", ("publish",), SampleRange(int(last * 1000), 5000, 121))["publish"]
    assert fine == [n - i for i in range(121)]
    # The last hour at 60 s: within a minute's samples of the truth, never ahead of it.
    coarse = h.values("q", ("publish",), SampleRange(int(last * 1000), 60_000, 61))["publish"]
    truth = [n - i * 12 for i in range(61)]
    assert all(0 <= want - got < 12 for got, want in zip(coarse, truth)), (coarse, truth)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0.5, 90.0), st.integers(0, 3)), min_size=1, max_size=300))
def test_history_stays_bounded_and_never_invents_a_value(steps: list[tuple[float, int]]) -> None:
    """Whatever the sample times and values, what is kept is bounded and every value answered
    is one that was sampled at or before its time (or 0 before the first)."""
    h = History()
    t, seen = 0.0, []
    for gap, value in steps:
        t += gap
        h.record(t, {"q": {"messages": value}})
        seen.append((t, value))
    assert h.kept("q") <= FINE_KEEP_S / 0.5 + COARSE_KEEP_S / COARSE_STEP_S + 3
    at = SampleRange(int(t * 1000), 7000, 30)
    for when, got in zip(at.times_ms(), h.values("q", ("messages",), at)["messages"]):
        before = [v for s, v in seen if s * 1000 <= when]
        if when >= (t - FINE_KEEP_S) * 1000:
            assert got == (before[-1] if before else 0)
        else:
            assert got == 0 or got in before


def test_charts_sum_objects_and_take_rabbitmqs_shape() -> None:
    at = SampleRange(20_000, 5000, 3)  # 20 s, 15 s, 10 s
    summed = sum_values([{"publish": [5, 3, 1]}, {"publish": [10, 10, 0]}, {}], ("publish", "ack"), at)
    assert summed == {"publish": [15, 13, 1], "ack": [0, 0, 0]}
    drawn = chart(summed["publish"], at)
    assert drawn == {"samples": [{"sample": 15, "timestamp": 20_000}, {"sample": 13, "timestamp": 15_000},
                                 {"sample": 1, "timestamp": 10_000}],
                     "avg_rate": 1.4, "avg": 29 / 3}
    assert with_details({"publish": 15}, {"publish": 0.4}, ("publish",), {"publish": drawn}) == {
        "publish": 15, "publish_details": {"rate": 0.4, **drawn}}


def test_chart_ranges_from_the_query() -> None:
    assert chart_ranges({}, 10_000) == {}
    assert chart_ranges({"msg_rates_age": "60"}, 10_000) == {}  # both or neither
    ranges = chart_ranges({"msg_rates_age": "60", "msg_rates_incr": "5", "lengths_age": "600",
                           "lengths_incr": "60"}, 1_000_000)
    assert ranges == {"msg": SampleRange(1_000_000, 5000, 13), "lengths": SampleRange(960_000, 60_000, 11)}
    assert isinstance(chart_ranges({"lengths_age": "x", "lengths_incr": "5"}, 0), str)
    assert isinstance(chart_ranges({"lengths_age": "60", "lengths_incr": "0"}, 0), str)
    assert isinstance(chart_ranges({"lengths_age": "86400", "lengths_incr": "1"}, 0), str)
