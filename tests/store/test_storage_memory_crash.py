"""MemoryStore's crash model: synced batches survive, unsynced ones may be lost, as a prefix."""

from __future__ import annotations

import pytest

from storage.interface import HardState, StoreError, WriteBatch
from storage.memory_store import MemoryStore


def put(store: MemoryStore, key: bytes, *, sync: bool) -> None:
    batch = WriteBatch()
    batch.put("t", key, b"v")
    batch.set_hard_state("g", HardState(term=len(key)))
    store.write(batch, sync=sync)


def keys(store: MemoryStore) -> list[bytes]:
    return [k for k, _ in store.items("t")]


def test_crash_keeps_synced_and_drops_unsynced_writes() -> None:
    store = MemoryStore()
    put(store, b"a", sync=True)
    put(store, b"bb", sync=False)
    put(store, b"ccc", sync=False)
    assert keys(store) == [b"a", b"bb", b"ccc"]
    assert store.unsynced_batches() == 2
    crashed = store.durable_copy()
    assert keys(crashed) == [b"a"]
    assert crashed.hard_state("g") == HardState(term=1)


def test_a_synced_write_makes_earlier_unsynced_ones_durable() -> None:
    store = MemoryStore()
    put(store, b"a", sync=False)
    put(store, b"bb", sync=True)
    assert store.unsynced_batches() == 0
    assert keys(store.durable_copy()) == [b"a", b"bb"]


def test_a_crash_may_keep_a_prefix_of_the_unsynced_writes() -> None:
    store = MemoryStore()
    put(store, b"a", sync=True)
    for key in (b"bb", b"ccc", b"dddd"):
        put(store, key, sync=False)
    assert keys(store.durable_copy(keep_unsynced=2)) == [b"a", b"bb", b"ccc"]
    clean = store.durable_copy(keep_unsynced=store.unsynced_batches())
    assert keys(clean) == keys(store)
    assert clean.hard_state("g") == HardState(term=4)


def test_copies_are_independent_disks() -> None:
    store = MemoryStore()
    put(store, b"a", sync=True)
    copy = store.durable_copy()
    put(copy, b"z", sync=True)
    put(store, b"y", sync=True)
    assert keys(store) == [b"a", b"y"]
    assert keys(copy) == [b"a", b"z"]
    # And the copy's own crash model starts clean.
    put(copy, b"lost", sync=False)
    assert keys(copy.durable_copy()) == [b"a", b"z"]


def test_a_refused_batch_is_not_in_any_copy() -> None:
    store = MemoryStore()
    bad = WriteBatch()
    bad.put("t", b"k", b"v")
    bad.put_body(b"", b"empty ids are refused")
    with pytest.raises(ValueError):
        store.write(bad, sync=False)
    assert store.unsynced_batches() == 0
    assert keys(store.durable_copy(keep_unsynced=0)) == []


def test_closed_store_refuses_writes() -> None:
    store = MemoryStore()
    store.close()
    with pytest.raises(StoreError):
        store.write(WriteBatch())
