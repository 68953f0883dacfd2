"""The load generator's own accounting, without sockets: stamps, confirms, receipts, verdicts, stats."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from cli.perf.accounting import ConfirmClock, ConfirmTracker, PublishTally, ReceiveTally, make_body, read_stamp, verdict
from cli.perf.stats import percentile, ratio, spread


def test_stamp_round_trip_and_foreign_bodies() -> None:
    body = make_body(7, 12345, 999, 256)
    assert len(body) == 256
    assert read_stamp(body) == (7, 12345, 999)
    assert read_stamp(b"x" * 256) is None
    assert read_stamp(body[:10]) is None
    assert read_stamp(make_body(7, 0, 0, 64)) is None  # sequence 0 is never sent


def test_multiple_ack_settles_everything_up_to_the_tag() -> None:
    t = ConfirmTracker()
    for _ in range(10):
        t.publish()
    assert t.settle(4, True, True) == 4
    assert t.unconfirmed == 6
    assert t.settle(10, True, True) == 6
    assert (t.acked, t.unconfirmed, t.bogus) == (10, 0, 0)


def test_single_acks_out_of_order_and_nacks() -> None:
    t = ConfirmTracker()
    for _ in range(5):
        t.publish()
    assert t.settle(3, False, True) == 1
    assert t.settle(1, False, False) == 1
    assert t.unconfirmed == 3
    assert t.settle(5, True, True) == 3  # 2, 4, 5; 3 was already settled
    assert (t.acked, t.nacked, t.unconfirmed) == (4, 1, 0)


def test_repeated_or_unknown_confirms_count_nothing() -> None:
    t = ConfirmTracker()
    for _ in range(3):
        t.publish()
    assert t.settle(2, False, True) == 1
    assert t.settle(2, False, True) == 0  # twice
    assert t.settle(99, False, True) == 0  # never published
    assert t.settle(3, True, True) == 2
    assert t.settle(3, True, True) == 0  # everything already settled
    assert (t.acked, t.bogus) == (3, 3)


@given(st.lists(st.tuples(st.integers(0, 40), st.booleans(), st.booleans()), max_size=60), st.integers(0, 30))
def test_confirms_never_exceed_what_was_published(settles: list[tuple[int, bool, bool]], published: int) -> None:
    t = ConfirmTracker()
    for _ in range(published):
        t.publish()
    model: set[int] = set(range(1, published + 1))
    for tag, multiple, ok in settles:
        expected = {x for x in model if x <= tag} if multiple else ({tag} & model)
        assert t.settle(tag, multiple, ok) == len(expected)
        model -= expected
    assert t.acked + t.nacked + t.unconfirmed == published
    assert t.unconfirmed == len(model)


def test_receive_tally_counts_unique_stamped_messages_only() -> None:
    r = ReceiveTally("q", window_end_ns=100)
    assert r.record(make_body(1, 1, 0, 64), 50)
    assert r.record(make_body(1, 2, 0, 64), 150)  # after the window
    assert not r.record(make_body(1, 1, 0, 64), 60)  # duplicate
    assert not r.record(b"not one of ours" * 4, 60)
    assert r.record(make_body(2, 1, 0, 64), 70)
    assert (r.unique, r.in_window, r.duplicates, r.foreign) == (3, 2, 1, 1)
    assert r.received_from(1, 2) == 2
    assert r.received_from(1, 1) == 1
    assert r.received_from(3, 5) == 0
    assert r.seen(2, 1) and not r.seen(2, 2)


def test_receive_tally_counts_deliveries_that_overtake_earlier_ones() -> None:
    r = ReceiveTally("q", 10**12)
    for seq in (1, 2, 4, 3, 5):
        r.record(make_body(1, seq, 0, 64), 1)
    r.record(make_body(2, 1, 0, 64), 1)  # another publisher's first: in order for it
    r.record(make_body(1, 3, 0, 64), 1)  # a duplicate is not also out of order
    assert (r.unique, r.duplicates, r.out_of_order) == (6, 1, 1)
    v = verdict([PublishTally(1, sent=5), PublishTally(2, sent=1)], [r])
    assert v.out_of_order == 1 and any("published earlier" in p for p in v.problems)


def test_receive_tally_keeps_latencies_on_request() -> None:
    r = ReceiveTally("q", 10**12, keep_latencies=True)
    r.record(make_body(1, 1, 1_000, 64), 3_000)
    r.record(make_body(1, 2, 2_000, 64), 7_000)
    assert r.latencies_ns == [2_000, 5_000]


def _receive(queue: str, publisher: int, sequences: list[int], window_end: int = 10**12) -> ReceiveTally:
    r = ReceiveTally(queue, window_end)
    for seq in sequences:
        r.record(make_body(publisher, seq, 0, 64), 1)
    return r


def test_verdict_of_a_perfect_run() -> None:
    pub = PublishTally(1, sent=100)
    v = verdict([pub], [_receive("q", 1, list(range(1, 101)))])
    assert (v.delivered, v.missing, v.expected, v.problems) == (100, 0, 100, [])


def test_verdict_names_missing_messages_and_never_counts_them() -> None:
    pub = PublishTally(1, sent=100, acked=100)
    v = verdict([pub], [_receive("q", 1, list(range(1, 101, 2)))])
    assert v.delivered == 50
    assert v.missing == 50
    assert v.lost_confirmed == 50
    assert any("50 of 100 expected deliveries never arrived" in p for p in v.problems)
    assert any("confirmed messages were never delivered" in p for p in v.problems)


def test_verdict_checks_every_fanout_queue_separately() -> None:
    pub = PublishTally(1, sent=10)
    full = [_receive(f"q{i}", 1, list(range(1, 11))) for i in range(3)]
    short = _receive("q3", 1, list(range(1, 8)))
    v = verdict([pub], full + [short])
    assert v.expected == 40
    assert v.delivered == 37
    assert v.missing == 3


def test_verdict_does_not_count_invented_messages() -> None:
    # Sequence 11 was never sent: a broker cannot raise the figure by inventing it.
    pub = PublishTally(1, sent=10)
    v = verdict([pub], [_receive("q", 1, list(range(1, 12)))])
    assert v.delivered == 10
    assert v.foreign == 1
    assert v.delivered_in_window == 10


def test_stats() -> None:
    values = sorted(float(x) for x in range(1, 1001))
    assert percentile(values, 0.5) == 500
    assert percentile(values, 0.99) == 990
    assert percentile(values, 0.999) == 999
    assert math.isnan(percentile([], 0.5))
    s = spread([3.0, 1.0, 2.0, math.nan])
    assert (s.min, s.median, s.max, s.n) == (1.0, 2.0, 3.0, 3)
    r = ratio([10.0, 20.0, 30.0], [10.0, 10.0, 10.0])
    assert (r.min, r.median, r.max) == (1.0, 2.0, 3.0)
    assert ratio([1.0], [0.0]).n == 0


def test_confirm_clock_times_each_message_once_the_settled_frontier_passes_it() -> None:
    tracker, clock = ConfirmTracker(), ConfirmClock()
    for _ in range(5):
        tracker.publish()
    clock.sent(1, 3, 1_000)  # one batch of three, then one of two
    clock.sent(4, 5, 2_000)
    tracker.settle(2, True, True)  # acks 1-2 (multiple)
    clock.settled(tracker.settled_through, 5_000)
    assert clock.latencies_ns == [4_000, 4_000]
    tracker.settle(5, False, True)  # 5 singly, ahead of the frontier: not timed yet
    clock.settled(tracker.settled_through, 6_000)
    assert clock.latencies_ns == [4_000, 4_000]
    tracker.settle(4, True, False)  # a nack of 3-4 moves the frontier past 5: all timed now
    clock.settled(tracker.settled_through, 9_000, acked=False)
    assert clock.latencies_ns == [4_000, 4_000, 8_000, 7_000, 7_000]
    # Times of confirms holding an ack only (the failover figures' "first ack after").
    assert clock.times_ns == [5_000, 6_000]
    assert clock.acks_ns == [(1_000, 5_000)]  # the nack-only settling of 3-5 is not an ack
