"""QueueState paging named case by case (the paged model test covers random mixes):
the window holds, pages are written and read in page-sized batches, and order,
counts, bytes, priorities and TTL come out as without paging."""

from __future__ import annotations

from broker.amqp.spec import BasicProperties
from broker.arguments import QueueSettings
from broker.message import Message
from broker.queue import (
    Deliver,
    Delivered,
    Dropped,
    Enqueue,
    Expire,
    MemoryPages,
    PagingLimits,
    Purge,
    Purged,
    QueueState,
    Requeue,
    Settle,
)

_ids = iter(range(1, 10**9))


def m(size: int = 1, priority: int = 0, expiration_ms: int | None = None) -> Message:
    return Message("ex", "rk", BasicProperties(), b"x" * size, priority=priority,
                   expiration_ms=expiration_ms, id=next(_ids))


def paged(window: int = 100, window_bytes: int = 1 << 20, **kw: object) -> tuple[QueueState, MemoryPages]:
    pages = MemoryPages()
    state = QueueState("q", QueueSettings(**kw), paging=PagingLimits.window(window, window_bytes),  # type: ignore[arg-type]
                       pages=pages)
    return state, pages


def in_memory(state: QueueState) -> int:
    return state.messages_ready - state.messages_paged_out


def drain(state: QueueState, now: int = 0) -> list[Delivered]:
    out = []
    while state.messages_ready:
        for e in state.apply(Deliver(now, "c", False)):
            if isinstance(e, Delivered):
                out.append(e)
    return out


def test_backlog_stays_in_window_and_drains_in_order() -> None:
    state, pages = paged(window=100)
    msgs = [m(3) for _ in range(10_000)]
    for i, msg in enumerate(msgs):
        state.apply(Enqueue(msg, 0))
        assert in_memory(state) <= 100
    assert (state.messages_ready, state.message_bytes_ready) == (10_000, 30_000)
    assert state.messages_paged_out >= 10_000 - 100
    # Pages of a quarter window: one write per 25 messages, not one per message.
    assert pages.writes <= 10_000 // 25 + 1
    got = drain(state)
    assert [d.message.id for d in got] == [msg.id for msg in msgs]
    assert [d.remaining for d in got] == list(range(9_999, -1, -1))
    assert pages.reads == pages.writes and not pages.pages
    assert (state.messages_paged_out, state.message_bytes_ready) == (0, 0)


def test_byte_window_pages_large_messages() -> None:
    state, pages = paged(window=1000, window_bytes=4000)
    for _ in range(100):
        state.apply(Enqueue(m(500), 0))
    assert state.message_bytes_ready - state.message_bytes_paged_out <= 4000
    assert state.messages_paged_out > 80
    assert len(drain(state)) == 100


def test_publishing_while_consuming_keeps_order_through_pages() -> None:
    state, _ = paged(window=8)
    published, delivered = [], []
    for round_ in range(200):
        for _ in range(3):
            msg = m()
            published.append(msg.id)
            state.apply(Enqueue(msg, 0))
        for e in state.apply(Deliver(0, "c", False)):
            delivered.append(e.message.id)  # type: ignore[union-attr]
        assert in_memory(state) <= 8
    delivered += [d.message.id for d in drain(state)]
    assert delivered == published


def test_priorities_page_lowest_first_and_deliver_highest_first() -> None:
    state, _ = paged(window=20, max_priority=5)
    low = [m(priority=1) for _ in range(50)]
    high = [m(priority=5) for _ in range(50)]
    for msg in low + high:
        state.apply(Enqueue(msg, 0))
    assert in_memory(state) <= 20
    # The head level (priority 5) keeps its head in memory; low-priority messages go first.
    top = state._levels[5]
    assert len(top.head) >= 5
    assert [d.message.id for d in drain(state)] == [x.id for x in high + low]


def test_per_message_ttl_of_a_paged_message_applies_when_it_reaches_the_head() -> None:
    state, _ = paged(window=4, dead_letter_exchange=None)
    msgs = [m(expiration_ms=10 if i == 30 else None) for i in range(40)]
    for msg in msgs:
        state.apply(Enqueue(msg, 0))
    assert state.next_expiry(0) is None  # the head does not expire; the TTL is deep in a page
    assert state.apply(Expire(50)) == []
    got = []
    for _ in range(30):
        got += state.apply(Deliver(50, "c", False))
    # Delivering the 30th message brings the expired one to the head: dropped there.
    assert got[-1] == Dropped(msgs[30], "expired")
    assert [d.message.id for d in drain(state, 50)] == [x.id for x in msgs[31:]]


def test_expiring_a_whole_paged_backlog_in_one_command() -> None:
    state, pages = paged(window=10, message_ttl_ms=5)
    for _ in range(500):
        state.apply(Enqueue(m(), 0))
    effects = state.apply(Expire(5))
    assert len(effects) == 500 and all(isinstance(e, Dropped) for e in effects)
    assert state.messages_ready == 0 and not pages.pages


def test_requeue_goes_back_among_paged_messages_in_order() -> None:
    state, _ = paged(window=4)
    msgs = [m() for _ in range(30)]
    for msg in msgs:
        state.apply(Enqueue(msg, 0))
    first = [e for _ in range(10) for e in state.apply(Deliver(0, "c", True))]
    # Requeue the odd ones, then the even ones: the odd ones may be paged meanwhile.
    state.apply(Requeue(tuple(d.seq for d in first[1::2]), 0))  # type: ignore[union-attr]
    state.apply(Requeue(tuple(d.seq for d in first[0::2]), 0))  # type: ignore[union-attr]
    got = drain(state)
    assert [d.message.id for d in got] == [x.id for x in msgs]
    assert [d.redelivered for d in got] == [True] * 10 + [False] * 20


def test_purge_drops_pages_unread() -> None:
    state, pages = paged(window=10)
    for _ in range(100):
        state.apply(Enqueue(m(2), 0))
    reads = pages.reads
    assert state.apply(Purge()) == [Purged(100)]
    assert pages.reads == reads and not pages.pages
    assert (state.messages_ready, state.message_bytes_ready, state.messages_paged_out) == (0, 0, 0)
    state.apply(Enqueue(m(), 0))
    assert len(drain(state)) == 1


def test_unacked_messages_are_not_paged_and_settle_normally() -> None:
    state, _ = paged(window=4)
    for _ in range(20):
        state.apply(Enqueue(m(), 0))
    seqs = [e.seq for _ in range(10) for e in state.apply(Deliver(0, "c", True))]  # type: ignore[union-attr]
    assert state.messages_unacknowledged == 10
    assert state.unacked_messages(seqs[:3]) == [state._unacked[s].message for s in seqs[:3]]
    state.apply(Settle(tuple(seqs)))
    assert (state.messages_unacknowledged, state.messages_ready) == (0, 10)


def test_memory_window_settings_are_validated() -> None:
    import pytest

    from broker.config import ConfigError, resolve_settings

    def resolve(values: dict[str, object]):  # type: ignore[no-untyped-def]
        return resolve_settings(file_values=values, file_label="leveret.yaml", env={}, overrides={}, hostname="box")

    default = resolve({})
    assert (default.queue_memory_window, default.queue_memory_window_bytes) == (10_000, 32 << 20)
    s = resolve({"queue_memory_window": 1000, "queue_memory_window_bytes": "8MiB"})
    assert (s.queue_memory_window, s.queue_memory_window_bytes) == (1000, 8 << 20)
    assert resolve({"queue_memory_window": 0}).queue_memory_window == 0
    with pytest.raises(ConfigError, match="queue_memory_window.*0 turns paging off"):
        resolve({"queue_memory_window": -1})
    with pytest.raises(ConfigError, match="queue_memory_window_bytes"):
        resolve({"queue_memory_window_bytes": 0})


def test_paging_limits_derive_page_sizes() -> None:
    assert PagingLimits.window() == PagingLimits(10_000, 32 << 20, 1000, 4 << 20)
    assert PagingLimits.window(1000, 1 << 20) == PagingLimits(1000, 1 << 20, 250, 1 << 18)
    assert PagingLimits.window(1, 1) == PagingLimits(1, 1, 1, 1)
