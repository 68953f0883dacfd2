"""Hypothesis drives the core's API directly: which node ticks, which message is delivered,
dropped or duplicated, who proposes, reads, compacts, transfers, crashes and restarts."""

from __future__ import annotations

import random

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from cluster.raft.group import ConfChange, Proposed, RaftConfig
from cluster.raft.log import entry_payload
from cluster.raft.messages import Message, PeerBatch
from cluster.raft.node import RaftNode
from storage.memory_store import MemoryStore

IDS = ("a", "b", "c")
CFG = RaftConfig(election_ticks=4, heartbeat_ticks=1, max_inflight=2, max_append_entries=3,
                 quiesce_after_ticks=4, node_timeout_ticks=4)


class RaftCore(RuleBasedStateMachine):
    @initialize(seed=st.integers(0, 2**16))
    def setup(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.stores = {i: MemoryStore() for i in IDS}
        self.incarnation = {i: 0 for i in IDS}
        self.nodes: dict[str, RaftNode | None] = {}
        self.applied: dict[str, list[tuple[int, int, bytes]]] = {}
        self.wire: list[Message] = []
        self.leaders: dict[int, str] = {}
        self.committed: dict[int, tuple[int, bytes]] = {}
        self.counter = 0
        for i in IDS:
            self.nodes[i] = RaftNode(i, CFG, rng=random.Random(self.rng.random()), incarnation=0)
            self.nodes[i].create_group("g", IDS)
            self.applied[i] = []
            self.cycle(i)

    def cycle(self, i: str) -> None:
        node = self.nodes[i]
        if node is None:
            return
        while (rd := node.ready()) is not None:
            if rd.batch.ops:
                self.stores[i].write(rd.batch)
            for b in rd.messages:
                self.wire.extend(b.messages)
            for e in rd.committed.get("g", []):
                known = self.committed.setdefault(e.index, (e.term, e.data))
                assert known == (e.term, e.data), f"{i} applied a different entry at {e.index}"
                self.applied[i].append((e.index, e.term, e.data))
            node.advance(rd)

    @rule(i=st.sampled_from(IDS), n=st.integers(1, 6))
    def tick(self, i: str, n: int) -> None:
        if self.nodes[i] is not None:
            for _ in range(n):
                self.nodes[i].tick()
            self.cycle(i)

    @precondition(lambda self: self.wire)
    @rule(k=st.integers(0, 1000), dup=st.booleans())
    def deliver(self, k: int, dup: bool) -> None:
        m = self.wire[k % len(self.wire)] if dup else self.wire.pop(k % len(self.wire))
        node = self.nodes[m.dst]
        if node is not None:
            node.step(PeerBatch(m.src, m.dst, self.incarnation[m.src], (m,)))
            self.cycle(m.dst)

    @precondition(lambda self: self.wire)
    @rule(k=st.integers(0, 1000))
    def drop(self, k: int) -> None:
        self.wire.pop(k % len(self.wire))

    @rule(i=st.sampled_from(IDS))
    def propose(self, i: str) -> None:
        if self.nodes[i] is not None:
            self.counter += 1
            r = self.nodes[i].propose("g", str(self.counter).encode())
            if self.nodes[i].is_leader("g"):
                assert isinstance(r, Proposed) or r.reason
            self.cycle(i)

    @rule(i=st.sampled_from(IDS))
    def read(self, i: str) -> None:
        if self.nodes[i] is not None:
            self.nodes[i].read_index("g", self.counter)
            self.cycle(i)

    @rule(i=st.sampled_from(IDS), j=st.sampled_from(IDS))
    def transfer(self, i: str, j: str) -> None:
        if self.nodes[i] is not None:
            self.nodes[i].transfer_leadership("g", j)
            self.cycle(i)

    @rule(i=st.sampled_from(IDS), j=st.sampled_from(IDS), op=st.sampled_from(["remove", "add_learner", "promote"]))
    def change(self, i: str, j: str, op: str) -> None:
        if self.nodes[i] is not None:
            self.nodes[i].change_membership("g", ConfChange(op, j))
            self.cycle(i)

    @rule(i=st.sampled_from(IDS))
    def compact(self, i: str) -> None:
        node = self.nodes[i]
        if node is not None and self.applied[i]:
            index = self.applied[i][-1][0]
            if index > node.groups["g"].log.snap_index:
                node.compact("g", index, b"")
                self.cycle(i)

    @rule(i=st.sampled_from(IDS))
    def crash_and_restart(self, i: str) -> None:
        store = self.stores[i] = self.stores[i].durable_copy()
        self.incarnation[i] += 1
        node = RaftNode(i, CFG, rng=random.Random(self.rng.random()), incarnation=self.incarnation[i])
        entries = store.entries("g", store.first_index("g"), store.last_index("g") + 1)
        snap = node.restore_group("g", store.hard_state("g"), store.snapshot("g"), entries)
        self.applied[i] = [(snap.index, 0, b"")] if snap is not None else []
        self.nodes[i] = node
        self.cycle(i)

    @invariant()
    def one_leader_per_term(self) -> None:
        for i, node in self.nodes.items():
            if node is not None and node.is_leader("g"):
                term = node.groups["g"].term
                assert self.leaders.setdefault(term, i) == i, f"two leaders in term {term}"

    @invariant()
    def logs_match_below_commit(self) -> None:
        for i, node in self.nodes.items():
            if node is None:
                continue
            g = node.groups["g"]
            assert g.commit <= g.last_index
            for index in range(g.log.snap_index + 1, g.commit + 1):
                if index in self.committed:
                    e = g.log.entry(index)
                    assert (e.term, e.data) == self.committed[index], f"{i} holds a different committed entry"

    @invariant()
    def applied_entries_are_in_order(self) -> None:
        for seq in self.applied.values():
            idx = [x[0] for x in seq]
            assert idx == sorted(set(idx))


RaftCore.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
TestRaftCore = RaftCore.TestCase


def test_payload_of_core_entries_is_hidden() -> None:
    from storage.interface import LogEntry

    from cluster.raft.log import NOOP_DATA, normal_data

    assert entry_payload(LogEntry(1, 1, normal_data(b"x"))) == b"x"
    assert entry_payload(LogEntry(1, 1, NOOP_DATA)) is None
