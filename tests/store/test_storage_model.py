"""Random operation sequences: LmdbStore (reopened now and then) must answer exactly like MemoryStore."""

from __future__ import annotations

import shutil
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from storage.interface import (
    AppendEntries,
    CompactPrefix,
    Delete,
    DeleteBody,
    DropGroup,
    HardState,
    LogEntry,
    Put,
    PutBody,
    PutSnapshot,
    SetHardState,
    Snapshot,
    Store,
    TruncateSuffix,
    WriteBatch,
)
from storage.lmdb_store import LmdbStore
from storage.memory_store import MemoryStore

GROUPS = ["a", "b", "queue/é"]
TABLES = ["t", "tt"]
BODY_IDS = [b"m1", b"m2", b"m3"]

groups = st.sampled_from(GROUPS)
indexes = st.integers(min_value=0, max_value=24)
small_bytes = st.binary(max_size=6)
keys = st.sampled_from([b"", b"a", b"ab", b"b", b"\x00", b"\xff"])


@st.composite
def appends(draw: st.DrawFn) -> AppendEntries:
    start = draw(st.integers(min_value=1, max_value=20))
    count = draw(st.integers(min_value=1, max_value=5))
    term = draw(st.integers(min_value=0, max_value=3))
    return AppendEntries(
        draw(groups), tuple(LogEntry(i, term, draw(small_bytes)) for i in range(start, start + count))
    )


operations = st.one_of(
    appends(),
    appends(),
    st.builds(SetHardState, groups, st.builds(HardState, indexes, st.sampled_from([None, "n1", "ñ"]), indexes)),
    st.builds(TruncateSuffix, groups, indexes),
    st.builds(CompactPrefix, groups, indexes),
    st.builds(PutSnapshot, groups, st.builds(Snapshot, indexes, indexes, small_bytes)),
    st.builds(DropGroup, groups),
    st.builds(Put, st.sampled_from(TABLES), keys, small_bytes),
    st.builds(Delete, st.sampled_from(TABLES), keys),
    st.builds(PutBody, st.sampled_from(BODY_IDS), small_bytes),
    st.builds(DeleteBody, st.sampled_from(BODY_IDS)),
)


def view(store: Store) -> dict[str, object]:
    """Everything observable through the Store protocol for the ids we use."""
    seen: dict[str, object] = {"groups": store.groups()}
    for g in GROUPS:
        seen[g] = (
            store.hard_state(g),
            store.first_index(g),
            store.last_index(g),
            store.entries(g, 0, 100),
            store.snapshot(g),
        )
    for t in TABLES:
        seen[t] = list(store.items(t))
    seen["bodies"] = [store.body(b) for b in BODY_IDS]
    return seen


class StoresAgree(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="leveret-model-")
        # A tiny map makes the random runs cross map growth too.
        self.lmdb = LmdbStore(self.directory, map_size=32 * 1024)
        self.memory = MemoryStore()

    @rule(ops=st.lists(operations, max_size=8), sync=st.booleans())
    def write(self, ops: list, sync: bool) -> None:
        outcomes = []
        for store in (self.memory, self.lmdb):
            try:
                store.write(WriteBatch(list(ops)), sync=sync)
                outcomes.append("ok")
            except ValueError:
                outcomes.append("refused")
        assert outcomes[0] == outcomes[1], (outcomes, ops)

    # The rules below aim at the interesting region of a log (around its first
    # and last index), which blind random indexes rarely hit.

    @rule(
        group=groups,
        back=st.integers(min_value=-1, max_value=3),
        count=st.integers(min_value=1, max_value=6),
        term=st.integers(min_value=0, max_value=3),
        others=st.lists(operations, max_size=3),
        sync=st.booleans(),
    )
    def append_near_end(self, group: str, back: int, count: int, term: int, others: list, sync: bool) -> None:
        start = max(1, self.memory.last_index(group) + 1 - back)
        entries = tuple(LogEntry(i, term, b"%d" % i) for i in range(start, start + count))
        self.write([*others, AppendEntries(group, entries)], sync)

    @rule(group=groups, data=st.data(), compact=st.booleans(), snapshot=st.booleans())
    def trim_inside(self, group: str, data: st.DataObject, compact: bool, snapshot: bool) -> None:
        first, last = self.memory.first_index(group), self.memory.last_index(group)
        index = data.draw(st.integers(min_value=first - 1, max_value=last + 1))
        ops: list = []
        if snapshot:
            ops.append(PutSnapshot(group, Snapshot(index, 1, b"s%d" % index)))
        ops.append(CompactPrefix(group, index) if compact else TruncateSuffix(group, index))
        self.write(ops, sync=True)

    @rule()
    def reopen(self) -> None:
        self.lmdb.close()
        self.lmdb = LmdbStore(self.directory, map_size=32 * 1024)

    @rule(group=groups, lo=st.integers(-2, 26), hi=st.integers(-2, 26))
    def read_range(self, group: str, lo: int, hi: int) -> None:
        assert self.memory.entries(group, lo, hi) == self.lmdb.entries(group, lo, hi)

    @rule(table=st.sampled_from(TABLES), prefix=keys)
    def read_prefix(self, table: str, prefix: bytes) -> None:
        assert list(self.memory.items(table, prefix)) == list(self.lmdb.items(table, prefix))

    @precondition(lambda self: self.memory.unsynced_batches() == 0)
    @rule()
    def crash_after_sync_loses_nothing(self) -> None:
        assert view(self.memory.durable_copy()) == view(self.memory)

    @invariant()
    def agree(self) -> None:
        assert view(self.memory) == view(self.lmdb)

    def teardown(self) -> None:
        self.lmdb.close()
        shutil.rmtree(self.directory, ignore_errors=True)


StoresAgree.TestCase.settings = settings(
    max_examples=80,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestStoresAgree = StoresAgree.TestCase
