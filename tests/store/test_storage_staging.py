"""StagedWrites: operations waiting for the writer, and rows withdrawn before they are written."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.interface import Delete, Put, WriteBatch
from storage.memory_store import MemoryStore
from storage.staging import StagedWrites
from storage.writer import open_group_commit_writer

from .test_storage_writer import GatedStore, wait_until_writing


def recorder() -> tuple[list[Any], Any]:
    seen: list[Any] = []
    return seen, lambda exc: seen.append(exc)


def test_take_hands_over_everything_in_order_with_one_completion() -> None:
    staged = StagedWrites()
    first, done_first = recorder()
    second, done_second = recorder()
    staged.add([Put("t", b"a", b"1")], done_first)
    staged.add_row("m", b"k", b"22", done_second)
    staged.add([Delete("t", b"z")])
    assert staged.pending_ops == 3 and staged.pending_bytes == 3
    taken = staged.take()
    assert taken is not None
    batch, on_done = taken
    assert batch.ops == [Put("t", b"a", b"1"), Put("m", b"k", b"22"), Delete("t", b"z")]
    assert staged.pending_ops == 0 and staged.pending_bytes == 0 and staged.take() is None
    on_done(None)
    assert first == [None] and second == [None]
    error = OSError("disk")
    staged.add_row("m", b"k2", b"v", done_second)
    taken = staged.take()
    assert taken is not None
    taken[1](error)
    assert second == [None, error]


def test_a_row_withdrawn_before_its_write_is_never_written_and_completes_at_once() -> None:
    staged = StagedWrites()
    row_done, on_row = recorder()
    other_done, on_other = recorder()
    staged.add_row("m", b"k", b"value", on_row)
    staged.add([Put("t", b"x", b"1")], on_other)
    staged.delete("m", b"k")
    # Completed as durable now: the message is gone, nothing is left to make durable.
    assert row_done == [None] and other_done == []
    assert staged.withdrawn == 1 and staged.pending_bytes == 1
    taken = staged.take()
    assert taken is not None
    assert taken[0].ops == [Put("t", b"x", b"1")]  # neither the row nor a Delete
    taken[1](None)
    assert row_done == [None] and other_done == [None]


def test_a_row_already_taken_is_deleted_the_ordinary_way() -> None:
    staged = StagedWrites()
    staged.add_row("m", b"k", b"v")
    taken = staged.take()
    assert taken is not None and taken[0].ops == [Put("m", b"k", b"v")]
    assert staged.withdraw("m", b"k") is False
    staged.delete("m", b"k")
    taken = staged.take()
    assert taken is not None and taken[0].ops == [Delete("m", b"k")]


def test_withdrawing_a_row_without_completion_runs_no_other_completion() -> None:
    staged = StagedWrites()
    staged.add_row("m", b"silent", b"v")  # no completion
    later, on_later = recorder()
    staged.add([Put("t", b"x", b"1")], on_later)
    assert staged.withdraw("m", b"silent")
    assert later == []  # the next batch's completion is not the withdrawn row's


def test_a_row_staged_twice_is_not_withdrawable() -> None:
    staged = StagedWrites()
    staged.add_row("m", b"k", b"1")
    staged.add_row("m", b"k", b"2")
    staged.delete("m", b"k")
    taken = staged.take()
    assert taken is not None
    assert taken[0].ops == [Put("m", b"k", b"1"), Put("m", b"k", b"2"), Delete("m", b"k")]


def test_only_withdrawn_rows_left_means_nothing_to_write() -> None:
    staged = StagedWrites()
    plain, on_plain = recorder()
    staged.add([], on_plain)  # a completion with nothing to write
    staged.add_row("m", b"k", b"v")
    staged.delete("m", b"k")
    assert staged.take() is None
    assert plain == [None]


# A model: whatever sequence of stages, deletes and takes, applying the taken batches
# leaves exactly the rows that were added and not deleted, and every completion runs
# exactly once.
_actions = st.lists(
    st.one_of(
        st.tuples(st.just("row"), st.integers(0, 7), st.booleans()),
        st.tuples(st.just("delete"), st.integers(0, 7), st.just(False)),
        st.tuples(st.just("take"), st.just(0), st.just(False)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(_actions)
def test_withdrawal_never_changes_what_the_store_ends_up_with(actions: list[tuple[str, int, bool]]) -> None:
    staged = StagedWrites()
    disk: dict[bytes, bytes] = {}
    live: set[bytes] = set()  # rows whose latest event is an add
    completions: list[int] = []
    version = 0

    def apply(taken: tuple[WriteBatch, Any] | None) -> None:
        if taken is None:
            return
        for op in taken[0].ops:
            if type(op) is Put:
                disk[op.key] = op.value
            else:
                disk.pop(op.key, None)
        taken[1](None)

    for kind, n, with_done in actions:
        key = b"k%d" % n
        if kind == "row":
            if key in live:
                continue  # a message id is persisted once per queue
            version += 1
            index = version
            staged.add_row("m", key, b"v%d" % version,
                           (lambda exc, i=index: completions.append(i)) if with_done else None)
            live.add(key)
            if with_done:
                completions.append(-index)  # expected once
        elif kind == "delete":
            if key in live:
                staged.delete("m", key)
                live.discard(key)
        else:
            apply(staged.take())
    apply(staged.take())
    assert set(disk) == live
    expected = sorted(-i for i in completions if i < 0)
    ran = sorted(i for i in completions if i > 0)
    assert ran == expected


async def test_the_writer_pulls_an_attached_source_each_cycle() -> None:
    store = GatedStore()
    staged = StagedWrites()
    seen, on_done = recorder()
    withdrawn, on_withdrawn = recorder()
    async with open_group_commit_writer(store) as writer:  # type: ignore[arg-type]
        writer.attach(staged)
        staged.add([Put("t", b"first", b"v")], on_done)
        writer.poke()
        await wait_until_writing(store)
        # While that write is under way, the next cycle's operations stay with the source.
        staged.add_row("t", b"acked", b"v", on_withdrawn)
        staged.add([Put("t", b"second", b"vv")], on_done)
        writer.poke()
        await trio.testing.wait_all_tasks_blocked()
        assert writer.pending_ops == 2 and writer.held_bytes >= 3
        assert staged.withdraw("t", b"acked")
        assert withdrawn == [None]
        store.gate.set()
        while len(seen) < 2:
            await trio.sleep(0.01)
    assert seen == [None, None]
    assert [k for k, _ in store.inner.items("t")] == [b"first", b"second"]
    assert store.write_sizes == [1, 1]


async def test_closing_the_writer_writes_what_a_source_still_holds() -> None:
    store = MemoryStore()
    staged = StagedWrites()
    seen, on_done = recorder()
    async with open_group_commit_writer(store) as writer:
        writer.attach(staged)
        staged.add([Put("t", b"late", b"v")], on_done)
    assert seen == [None]
    assert store.get("t", b"late") == b"v"


def test_a_row_made_by_a_function_is_made_only_when_taken() -> None:
    staged = StagedWrites()
    made: list[bytes] = []

    def make(value: bytes) -> bytes:
        made.append(value)
        return value

    staged.add_row("m", b"kept", lambda: make(b"kept-value"), size=10)
    staged.add_row("m", b"gone", lambda: make(b"gone-value"), size=10)
    assert staged.pending_bytes == 20 and made == []
    assert staged.withdraw("m", b"gone")
    assert staged.pending_bytes == 10
    taken = staged.take()
    assert taken is not None
    assert taken[0].ops == [Put("m", b"kept", b"kept-value")]
    assert made == [b"kept-value"]  # the withdrawn row was never encoded


def test_the_writer_is_woken_once_per_fill_not_per_operation() -> None:
    wakes: list[int] = []
    staged = StagedWrites(on_staged=lambda: wakes.append(1))
    staged.add_row("m", b"a", b"1")
    staged.add_row("m", b"b", b"2")
    staged.add([Put("t", b"x", b"1")])
    staged.delete("m", b"a")  # withdrawn: nothing new to write
    assert len(wakes) == 1
    staged.take()
    staged.delete("m", b"b")  # taken already: a Delete, into an empty staging
    assert len(wakes) == 2


async def test_rows_not_yet_durable_are_found_with_the_writer() -> None:
    store = GatedStore()
    staged = StagedWrites()
    async with open_group_commit_writer(store) as writer:  # type: ignore[arg-type]
        writer.attach(staged)
        staged.add([Put("m", b"writing", b"w"), Put("m", b"replaced", b"old"), Put("other", b"x", b"no")])
        writer.poke()
        await wait_until_writing(store)
        writer.submit(WriteBatch([Put("m", b"submitted", b"s"), Delete("m", b"writing")]), lambda exc: None)
        staged.add_row("m", b"staged", lambda: b"made")
        staged.add([Put("m", b"replaced", b"new")])
        keys = {b"writing", b"replaced", b"submitted", b"staged", b"x", b"absent"}
        # In flight, submitted and staged rows are found, newest first; a later delete removes.
        assert writer.find_unwritten("m", keys) == {b"replaced": b"new", b"submitted": b"s", b"staged": b"made"}
        store.gate.set()
    assert writer.find_unwritten("m", keys) == {}


def test_on_written_sees_each_taken_batch_and_its_outcome_before_the_completions() -> None:
    seen: list[Any] = []
    staged = StagedWrites(on_written=lambda batch, exc: seen.append(("cycle", list(batch.ops), exc)))
    staged.add_row("m", b"k", b"v", lambda exc: seen.append(("row", exc)))
    staged.add([Delete("t", b"z")])
    taken = staged.take()
    assert taken is not None
    error = OSError("no space left on device")
    taken[1](error)
    assert seen == [("cycle", [Put("m", b"k", b"v"), Delete("t", b"z")], error), ("row", error)]
    # Without completions of its own, a cycle is still reported.
    seen.clear()
    staged.add([Delete("t", b"y")])
    taken = staged.take()
    assert taken is not None
    taken[1](None)
    assert seen == [("cycle", [Delete("t", b"y")], None)]
