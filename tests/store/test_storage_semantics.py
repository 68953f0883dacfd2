"""The store contract of storage/interface.py, checked on MemoryStore and LmdbStore alike."""

from __future__ import annotations

import pytest

from storage.interface import HardState, LogEntry, Snapshot, Store, WriteBatch


def entries(lo: int, hi: int, term: int = 1) -> list[LogEntry]:
    return [LogEntry(i, term, f"{term}:{i}".encode()) for i in range(lo, hi + 1)]


def write(store: Store, fill: object) -> None:
    batch = WriteBatch()
    fill(batch)  # type: ignore[operator]
    store.write(batch)


def indexes(store: Store, group: str) -> list[int]:
    return [e.index for e in store.entries(group, 0, 1 << 40)]


def test_empty_store(store: Store) -> None:
    assert store.hard_state("g") is None
    assert store.first_index("g") == 1
    assert store.last_index("g") == 0
    assert store.entries("g", 0, 100) == []
    assert store.snapshot("g") is None
    assert store.groups() == []
    assert store.get("t", b"k") is None
    assert list(store.items("t")) == []
    assert store.body(b"b") is None


def test_append_and_read_range(store: Store) -> None:
    write(store, lambda b: b.append("g", entries(1, 10)))
    assert (store.first_index("g"), store.last_index("g")) == (1, 10)
    assert store.entries("g", 3, 6) == entries(3, 5)
    assert store.entries("g", -5, 3) == entries(1, 2)
    assert store.entries("g", 9, 1000) == entries(9, 10)
    assert store.entries("g", 6, 6) == []
    assert store.entries("g", 7, 2) == []


def test_append_overwrites_conflicting_suffix(store: Store) -> None:
    write(store, lambda b: b.append("g", entries(1, 10)))
    write(store, lambda b: b.append("g", entries(4, 5, term=2)))
    assert indexes(store, "g") == [1, 2, 3, 4, 5]
    assert store.entries("g", 3, 6) == entries(3, 3) + entries(4, 5, term=2)
    assert store.last_index("g") == 5


def test_append_right_after_last_and_before_first(store: Store) -> None:
    write(store, lambda b: b.append("g", entries(5, 7)))
    write(store, lambda b: b.append("g", entries(8, 9)))
    assert indexes(store, "g") == [5, 6, 7, 8, 9]
    # Starting before the first entry replaces the whole log.
    write(store, lambda b: b.append("g", entries(2, 6, term=3)))
    assert store.entries("g", 0, 100) == entries(2, 6, term=3)
    assert store.first_index("g") == 2


def test_append_leaving_a_gap_fails_the_whole_batch(store: Store) -> None:
    write(store, lambda b: b.append("g", entries(1, 3)))
    batch = WriteBatch()
    batch.put("t", b"k", b"v")
    batch.put_body(b"b", b"body")
    batch.set_hard_state("g", HardState(5, "n", 2))
    batch.append("g", entries(4, 4))
    batch.append("g", entries(6, 6))  # 5 is missing
    with pytest.raises(ValueError, match="gap"):
        store.write(batch)
    assert store.get("t", b"k") is None
    assert store.body(b"b") is None
    assert store.hard_state("g") is None
    assert indexes(store, "g") == [1, 2, 3]
    assert store.last_index("g") == 3


def test_malformed_operations_are_refused(store: Store) -> None:
    bad = [
        lambda b: b.append("g", [LogEntry(1, 1, b""), LogEntry(3, 1, b"")]),
        lambda b: b.append("g", [LogEntry(0, 1, b"")]),
        lambda b: b.append("", entries(1, 1)),
        lambda b: b.append("a\x00b", entries(1, 1)),
        lambda b: b.put("bad table", b"k", b"v"),
        lambda b: b.put("t", b"k" * 401, b"v"),
        lambda b: b.put_body(b"", b"x"),
    ]
    for fill in bad:
        batch = WriteBatch()
        batch.put("t", b"first", b"v")
        fill(batch)
        with pytest.raises(ValueError):
            store.write(batch)
    assert store.get("t", b"first") is None


def test_truncate_suffix(store: Store) -> None:
    write(store, lambda b: b.append("g", entries(1, 10)))
    write(store, lambda b: b.truncate_suffix("g", 8))
    assert indexes(store, "g") == list(range(1, 8))
    write(store, lambda b: b.truncate_suffix("g", 100))
    assert store.last_index("g") == 7
    write(store, lambda b: b.truncate_suffix("g", 1))
    assert indexes(store, "g") == []
    assert (store.first_index("g"), store.last_index("g")) == (1, 0)
    write(store, lambda b: b.truncate_suffix("nobody", 1))
    assert store.groups() == []


def test_compact_prefix_and_snapshot_bounds(store: Store) -> None:
    write(store, lambda b: b.append("g", entries(1, 10)))
    write(store, lambda b: (b.put_snapshot("g", Snapshot(6, 1, b"state")), b.compact_prefix("g", 6)))
    assert indexes(store, "g") == [7, 8, 9, 10]
    assert (store.first_index("g"), store.last_index("g")) == (7, 10)
    assert store.snapshot("g") == Snapshot(6, 1, b"state")
    write(store, lambda b: b.compact_prefix("g", 3))  # already gone: no-op
    assert store.first_index("g") == 7
    # Compacting everything: bounds come from the snapshot.
    write(store, lambda b: (b.put_snapshot("g", Snapshot(10, 2, b"later")), b.compact_prefix("g", 10)))
    assert indexes(store, "g") == []
    assert (store.first_index("g"), store.last_index("g")) == (11, 10)
    write(store, lambda b: b.append("g", entries(11, 12, term=2)))
    assert (store.first_index("g"), store.last_index("g")) == (11, 12)


def test_snapshot_kept_alongside_older_entries(store: Store) -> None:
    # A snapshot ahead of the log does not hide the entries still there.
    write(store, lambda b: (b.append("g", entries(1, 5)), b.put_snapshot("g", Snapshot(3, 1, b"s"))))
    assert (store.first_index("g"), store.last_index("g")) == (1, 5)
    write(store, lambda b: b.truncate_suffix("g", 1))
    assert (store.first_index("g"), store.last_index("g")) == (4, 3)


def test_hard_state_and_groups(store: Store) -> None:
    write(store, lambda b: b.set_hard_state("b", HardState(3, "n2", 7)))
    write(store, lambda b: b.append("a", entries(1, 1)))
    write(store, lambda b: b.put_snapshot("c", Snapshot(0, 0, b"")))
    write(store, lambda b: b.set_hard_state("d", HardState()))
    assert store.hard_state("b") == HardState(3, "n2", 7)
    assert store.hard_state("d") == HardState(0, None, 0)
    assert store.groups() == ["a", "b", "c", "d"]
    write(store, lambda b: b.truncate_suffix("a", 1))
    assert store.groups() == ["b", "c", "d"]


def test_drop_group_forgets_everything(store: Store) -> None:
    def fill(b: WriteBatch) -> None:
        b.set_hard_state("g", HardState(2, "x", 1))
        b.append("g", entries(1, 5))
        b.put_snapshot("g", Snapshot(2, 1, b"s"))
        b.append("other", entries(1, 2))

    write(store, fill)
    write(store, lambda b: b.drop_group("g"))
    assert store.hard_state("g") is None
    assert store.snapshot("g") is None
    assert (store.first_index("g"), store.last_index("g")) == (1, 0)
    assert store.entries("g", 0, 10) == []
    assert store.groups() == ["other"]
    assert indexes(store, "other") == [1, 2]
    # A group may come back after being dropped, starting anew.
    write(store, lambda b: b.append("g", entries(7, 8)))
    assert indexes(store, "g") == [7, 8]


def test_operations_apply_in_order_within_a_batch(store: Store) -> None:
    def fill(b: WriteBatch) -> None:
        b.append("g", entries(1, 5))
        b.truncate_suffix("g", 3)
        b.append("g", entries(3, 4, term=2))
        b.drop_group("h")
        b.append("h", entries(1, 1))
        b.drop_group("h")
        b.append("h", entries(9, 9))
        b.put("t", b"k", b"1")
        b.delete("t", b"k")
        b.put("t", b"k2", b"2")

    write(store, fill)
    assert store.entries("g", 0, 10) == entries(1, 2) + entries(3, 4, term=2)
    assert indexes(store, "h") == [9]
    assert store.get("t", b"k") is None
    assert store.get("t", b"k2") == b"2"


def test_tables_are_separate_and_ordered(store: Store) -> None:
    def fill(b: WriteBatch) -> None:
        for key in [b"b2", b"a", b"b1", b"c", b"b", b"\xff", b""]:
            b.put("t", key, key + b"!")
        b.put("t2", b"b1", b"other table")
        b.put("tt", b"b1", b"prefix-named table")

    write(store, fill)
    assert [k for k, _ in store.items("t")] == [b"", b"a", b"b", b"b1", b"b2", b"c", b"\xff"]
    assert list(store.items("t", b"b")) == [(b"b", b"b!"), (b"b1", b"b1!"), (b"b2", b"b2!")]
    assert list(store.items("t2")) == [(b"b1", b"other table")]
    assert store.get("tt", b"b1") == b"prefix-named table"
    write(store, lambda b: (b.delete("t", b"b1"), b.delete("t", b"absent")))
    assert list(store.items("t", b"b")) == [(b"b", b"b!"), (b"b2", b"b2!")]


def test_bodies(store: Store) -> None:
    write(store, lambda b: (b.put_body(b"m1", b"x" * 100_000), b.put_body(b"m2", b"")))
    assert store.body(b"m1") == b"x" * 100_000
    assert store.body(b"m2") == b""
    write(store, lambda b: (b.delete_body(b"m1"), b.delete_body(b"nope")))
    assert store.body(b"m1") is None


def test_long_and_unicode_group_names(store: Store) -> None:
    long_name = "queue/" + "é" * 600  # longer than LMDB's key limit once encoded
    write(store, lambda b: (b.append(long_name, entries(1, 3)), b.set_hard_state("vhost/ñ", HardState(1))))
    assert indexes(store, long_name) == [1, 2, 3]
    assert store.groups() == sorted([long_name, "vhost/ñ"])


def test_caller_reusing_its_batch_changes_nothing_written(store: Store) -> None:
    batch = WriteBatch()
    batch.put("t", b"k", b"v")
    store.write(batch)
    batch.put("t", b"k2", b"v2")
    assert store.get("t", b"k2") is None


def test_unsynced_writes_are_visible(store: Store) -> None:
    batch = WriteBatch()
    batch.append("g", entries(1, 2))
    store.write(batch, sync=False)
    assert indexes(store, "g") == [1, 2]
