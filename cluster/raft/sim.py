"""Deterministic simulation of Raft nodes in one process: the test owns time, network and disk.

N `RaftNode`s, each with a `MemoryStore` as its disk, exchange `PeerBatch`es
through a simulated network that delays, drops, duplicates and reorders them,
and honours symmetric and one-way partitions. Nodes crash (losing everything
in memory, sometimes in the middle of a cycle: before its write or between
its write and its sends) and restart from their disk. Operators change
membership and transfer leadership; clients propose and read. Everything is
driven by one seed.

After every step the simulation checks election safety, leader completeness,
state machine safety and ReadIndex freshness; every few steps log matching.
Then the faults heal and liveness is checked: a leader within a bounded
number of ticks, then a new proposal commits on every member, and every
acknowledged proposal is present on every member.

A failing run raises `SimFailure` whose message ends with the one-line
command reproducing it:  python -m cluster.raft.sim --seed N [options]
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Protocol

import msgpack

from storage.interface import LogEntry
from storage.memory_store import MemoryStore

from .group import LEADER, ConfChange, NotLeader, Proposed, RaftConfig, ReadState, Refused
from .log import entry_payload
from .messages import PeerBatch
from .node import RaftNode


class SimFailure(AssertionError):
    pass


class StateMachine(Protocol):
    def apply(self, index: int, data: bytes) -> Any: ...
    def snapshot(self) -> bytes: ...
    def restore(self, data: bytes) -> None: ...


class RecorderMachine:
    """Remembers every applied payload by index; its snapshot is that record."""

    def __init__(self) -> None:
        self.record: dict[int, bytes] = {}

    def apply(self, index: int, data: bytes) -> None:
        self.record[index] = data

    def snapshot(self) -> bytes:
        return msgpack.packb(list(self.record.items()))

    def restore(self, data: bytes) -> None:
        self.record = {i: d for i, d in msgpack.unpackb(data)}


@dataclass
class SimConfig:
    nodes: int = 5
    groups: int = 2
    group_size: int = 3
    steps: int = 300
    drop: float = 0.05
    duplicate: float = 0.03
    max_delay: int = 3
    crash: float = 0.01
    partition: float = 0.02
    heal: float = 0.05
    membership: float = 0.02
    transfer: float = 0.01
    propose: float = 0.3
    read: float = 0.1
    snapshot_every: int = 15
    liveness_ticks: int = 600
    check_logs_every: int = 10
    quiesce: bool = True
    election_ticks: int = 10

    def options(self) -> str:
        default = SimConfig()
        return " ".join(
            f"--{f.name.replace('_', '-')} {getattr(self, f.name)}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        )


@dataclass
class SimNode:
    id: str
    store: MemoryStore
    raft: RaftNode | None = None
    machines: dict[str, StateMachine] = field(default_factory=dict)
    applied: dict[str, int] = field(default_factory=dict)
    incarnation: int = 0
    crash_point: str | None = None  # crash inside the next cycle: "before-write" / "after-write"

    @property
    def up(self) -> bool:
        return self.raft is not None


class Sim:
    def __init__(self, seed: int, cfg: SimConfig = SimConfig(),
                 machine: Callable[[], StateMachine] = RecorderMachine) -> None:
        self.seed = seed
        self.cfg = cfg
        self.rng = random.Random(seed)
        self.machine = machine
        self.raft_cfg = RaftConfig(
            election_ticks=cfg.election_ticks, heartbeat_ticks=1, max_inflight=4, max_append_entries=8,
            quiesce=cfg.quiesce, quiesce_after_ticks=2 * cfg.election_ticks,
            node_heartbeat_ticks=2, node_timeout_ticks=cfg.election_ticks,
        )
        self.now = 0
        self.nodes: dict[str, SimNode] = {}
        self.net: list[tuple[int, int, PeerBatch]] = []
        self.net_seq = 0
        self.blocked: set[tuple[str, str]] = set()
        self.faults = True
        self.drop, self.duplicate, self.max_delay = cfg.drop, cfg.duplicate, cfg.max_delay
        # What the checks know.
        self.leaders: dict[tuple[str, int], str] = {}
        self.leader_seen: dict[tuple[str, str], int] = {}
        self.committed: dict[str, dict[int, tuple[int, bytes]]] = {}
        self.acked: dict[str, dict[int, bytes]] = {}
        self.acked_max: dict[str, int] = {}
        self.pending: dict[tuple[str, str, int], tuple[int, bytes]] = {}
        self.reads: dict[object, tuple[str, str, int]] = {}
        self.read_seq = 0
        self.proposal_seq = 0
        self.apply_hooks: list[Callable[[str, str, LogEntry, Any], None]] = []
        self.read_hooks: list[Callable[[str, ReadState], None]] = []
        self.step_hooks: list[Callable[[], None]] = []
        # Groups placed on a node after bootstrap: the placement is known outside Raft (as the
        # metadata would know it), so a node that crashed before persisting one recreates it.
        self.placed: set[tuple[str, str]] = set()
        self.initial: dict[str, tuple[str, ...]] = {}
        ids = [f"n{i + 1}" for i in range(cfg.nodes)]
        for nid in ids:
            self.nodes[nid] = SimNode(nid, MemoryStore())
            self._start(self.nodes[nid])
        self.group_ids = [f"g{i + 1}" for i in range(cfg.groups)]
        for gid in self.group_ids:
            members = self.rng.sample(ids, min(cfg.group_size, len(ids)))
            self.initial[gid] = tuple(members)
            for nid in members:
                self.placed.add((nid, gid))
                self.nodes[nid].raft.create_group(gid, members)
                self.nodes[nid].machines[gid] = self.machine()
                self.nodes[nid].applied[gid] = 0
            self.committed[gid] = {}
            self.acked[gid] = {}
            self.acked_max[gid] = 0

    # ------------------------------------------------------------------ lifecycle

    def fail(self, what: str) -> None:
        raise SimFailure(
            f"{what} (seed {self.seed}, step {self.now})\n"
            f"reproduce: python -m cluster.raft.sim --seed {self.seed} {self.cfg.options()}".rstrip()
        )

    def _start(self, n: SimNode) -> None:
        n.incarnation += 1
        n.raft = RaftNode(n.id, self.raft_cfg, rng=random.Random(self.rng.getrandbits(32)),
                          incarnation=n.incarnation)
        n.machines, n.applied = {}, {}
        n.crash_point = None
        for gid in n.store.groups():
            st = n.store
            entries = st.entries(gid, st.first_index(gid), st.last_index(gid) + 1)
            snap = n.raft.restore_group(gid, st.hard_state(gid), st.snapshot(gid), entries)
            sm = self.machine()
            if snap is not None:
                sm.restore(snap.data)
            n.machines[gid] = sm
            n.applied[gid] = snap.index if snap is not None else 0
        for nid, gid in sorted(self.placed):
            if nid == n.id and gid not in n.raft.groups:
                initial = self.initial[gid] if n.id in self.initial[gid] else ()
                n.raft.create_group(gid, initial)
                n.machines[gid] = self.machine()
                n.applied[gid] = 0

    def crash(self, n: SimNode) -> None:
        n.raft = None
        n.machines, n.applied = {}, {}
        n.store = n.store.durable_copy(keep_unsynced=0)

    def restart(self, n: SimNode) -> None:
        self._start(n)

    # ------------------------------------------------------------------ driver cycle

    def cycle(self, n: SimNode) -> None:
        raft = n.raft
        assert raft is not None
        rd = raft.ready()
        if rd is None:
            return
        if n.crash_point == "before-write":
            self.crash(n)
            return
        if rd.batch.ops:
            n.store.write(rd.batch, sync=True)
        if n.crash_point == "after-write":
            self.crash(n)
            return
        for b in rd.messages:
            self.send(b)
        for gid, snap in rd.snapshots.items():
            n.machines[gid].restore(snap.data)
            n.applied[gid] = snap.index
            self._check_snapshot(n, gid)
        for gid, entries in rd.committed.items():
            sm = n.machines[gid]
            for e in entries:
                self._record_commit(n, gid, e)
                payload = entry_payload(e)
                result = sm.apply(e.index, payload) if payload is not None else None
                n.applied[gid] = e.index
                self._resolve(n, gid, e)
                for hook in self.apply_hooks:
                    hook(n.id, gid, e, result)
            if n.applied[gid] - raft.groups[gid].log.snap_index >= self.cfg.snapshot_every:
                raft.compact(gid, n.applied[gid], sm.snapshot())
        for rs in rd.read_states:
            self._check_read(n, rs)
            for rhook in self.read_hooks:
                rhook(n.id, rs)
        raft.advance(rd)

    def send(self, b: PeerBatch) -> None:
        if (b.src, b.dst) in self.blocked:
            return
        copies = 1
        if self.faults:
            if self.rng.random() < self.drop:
                return
            if self.rng.random() < self.duplicate:
                copies = 2
        for _ in range(copies):
            delay = self.rng.randint(0, self.max_delay) if self.max_delay else 0
            self.net_seq += 1
            heapq.heappush(self.net, (self.now + delay, self.net_seq, b))

    def deliver(self) -> None:
        due: list[PeerBatch] = []
        while self.net and self.net[0][0] <= self.now:
            due.append(heapq.heappop(self.net)[2])
        for b in due:
            n = self.nodes[b.dst]
            if n.up and (b.src, b.dst) not in self.blocked:
                n.raft.step(b)

    def step(self) -> None:
        self.now += 1
        if self.faults:
            self.inject_faults()
        for hook in self.step_hooks:
            hook()
        self.deliver()
        order = list(self.nodes.values())
        self.rng.shuffle(order)
        for n in order:
            if n.up:
                n.raft.tick()
                self.cycle(n)
        self.check()

    # ------------------------------------------------------------------ faults and operators

    def up_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.up]

    def leader_of(self, gid: str) -> SimNode | None:
        best: SimNode | None = None
        for n in self.up_nodes():
            g = n.raft.groups.get(gid)
            if g is not None and g.role == LEADER and (best is None or g.term > best.raft.groups[gid].term):
                best = n
        return best

    def inject_faults(self) -> None:
        cfg, rng = self.cfg, self.rng
        ids = list(self.nodes)
        if rng.random() < cfg.crash:
            n = self.nodes[rng.choice(ids)]
            if n.up:
                if rng.random() < 0.5:
                    self.crash(n)
                else:
                    n.crash_point = rng.choice(["before-write", "after-write"])
            else:
                self.restart(n)
        for n in self.nodes.values():
            if not n.up and rng.random() < 0.05:
                self.restart(n)
        if rng.random() < cfg.partition:
            a, b = rng.sample(ids, 2)
            self.blocked.add((a, b))
            if rng.random() < 0.6:
                self.blocked.add((b, a))
            if rng.random() < 0.3:  # isolate a whole node
                for c in ids:
                    if c != a:
                        self.blocked.add((a, c))
                        self.blocked.add((c, a))
        if self.blocked and rng.random() < cfg.heal:
            self.blocked.clear()
        if rng.random() < cfg.membership:
            self.change_membership(rng.choice(self.group_ids))
        if rng.random() < cfg.transfer:
            gid = rng.choice(self.group_ids)
            leader = self.leader_of(gid)
            if leader is not None:
                voters = sorted(leader.raft.groups[gid].conf.voters)
                leader.raft.transfer_leadership(gid, rng.choice(voters))
        for gid in self.group_ids:
            if rng.random() < cfg.propose:
                self.propose(gid)
            if rng.random() < cfg.read:
                self.read(gid)

    def change_membership(self, gid: str) -> None:
        rng = self.rng
        leader = self.leader_of(gid)
        if leader is None:
            return
        conf = leader.raft.groups[gid].conf
        outsiders = sorted(set(self.nodes) - conf.members)
        choices = []
        if outsiders:
            choices.append("add_learner")
        if conf.learners:
            choices.append("promote")
        if len(conf.voters) > 2:
            choices.append("remove")
        if not choices:
            return
        op = rng.choice(choices)
        if op == "add_learner":
            target = rng.choice(outsiders)
            t = self.nodes[target]
            if not t.up:
                return
            if gid not in t.raft.groups:
                self.placed.add((target, gid))
                t.raft.create_group(gid)
                t.machines[gid] = self.machine()
                t.applied[gid] = 0
        elif op == "promote":
            target = rng.choice(sorted(conf.learners))
        else:
            target = rng.choice(sorted(conf.members))
        leader.raft.change_membership(gid, ConfChange(op, target))

    def propose(self, gid: str, payload: bytes | None = None) -> Proposed | NotLeader | Refused | None:
        leader = self.leader_of(gid)
        if leader is None:
            return None
        if payload is None:
            self.proposal_seq += 1
            payload = f"{gid}/{self.proposal_seq}".encode()
        r = leader.raft.propose(gid, payload)
        if isinstance(r, Proposed):
            self.pending[(leader.id, gid, r.index)] = (r.term, payload)
        return r

    def read(self, gid: str) -> None:
        leader = self.leader_of(gid)
        if leader is None:
            return
        self.read_seq += 1
        ctx = ("r", self.read_seq)
        if leader.raft.read_index(gid, ctx) is None:
            self.reads[ctx] = (leader.id, gid, self.acked_max[gid])

    def heal(self) -> None:
        self.faults = False
        self.blocked.clear()
        self.drop = self.duplicate = 0.0
        for n in self.nodes.values():
            if not n.up:
                self.restart(n)
            n.crash_point = None

    # ------------------------------------------------------------------ checks

    def _record_commit(self, n: SimNode, gid: str, e: LogEntry) -> None:
        known = self.committed[gid].get(e.index)
        if known is None:
            self.committed[gid][e.index] = (e.term, e.data)
            # Leader completeness for leaders elected before this commit became visible.
            for m in self.up_nodes():
                g = m.raft.groups.get(gid)
                if g is not None and g.role == LEADER and g.term > e.term:
                    self._check_contains(m, gid, e.index, e.term, e.data)
        elif known != (e.term, e.data):
            self.fail(f"state machine safety: {n.id} applies {gid}[{e.index}] = {e.term}/{e.data!r}, "
                      f"another node applied {known[0]}/{known[1]!r}")

    def _resolve(self, n: SimNode, gid: str, e: LogEntry) -> None:
        p = self.pending.pop((n.id, gid, e.index), None)
        if p is not None and p == (e.term, e.data[1:]):
            self.acked[gid][e.index] = p[1]
            if e.index > self.acked_max[gid]:
                self.acked_max[gid] = e.index

    def _check_snapshot(self, n: SimNode, gid: str) -> None:
        sm = n.machines[gid]
        if isinstance(sm, RecorderMachine):
            for index, data in sm.record.items():
                known = self.committed[gid].get(index)
                if known is not None and known[1][1:] != data:
                    self.fail(f"state machine safety: {n.id} restored {gid}[{index}] = {data!r} from a snapshot")

    def _check_read(self, n: SimNode, rs: ReadState) -> None:
        r = self.reads.pop(rs.ctx, None)
        if r is None or not rs.ok:
            return
        if rs.index < r[2]:
            self.fail(f"read index: {n.id} served a read of {rs.group} at {rs.index}, but {r[2]} was "
                      f"acknowledged before the read was asked")

    def _check_contains(self, m: SimNode, gid: str, index: int, term: int, data: bytes) -> None:
        log = m.raft.groups[gid].log
        if index <= log.snap_index:
            return
        t = log.term_at(index)
        if t != term or log.entry(index).data != data:
            self.fail(f"leader completeness: leader {m.id} of {gid} term {m.raft.groups[gid].term} "
                      f"lacks committed entry {index} (term {term}), has term {t}")

    def check(self) -> None:
        for n in self.up_nodes():
            for gid, g in n.raft.groups.items():
                if g.role != LEADER:
                    continue
                holder = self.leaders.setdefault((gid, g.term), n.id)
                if holder != n.id:
                    self.fail(f"election safety: {holder} and {n.id} both lead {gid} in term {g.term}")
                if self.leader_seen.get((n.id, gid)) != g.term:
                    self.leader_seen[(n.id, gid)] = g.term
                    for index, (term, data) in self.committed[gid].items():
                        if term < g.term:
                            self._check_contains(n, gid, index, term, data)
        if self.now % self.cfg.check_logs_every == 0:
            self.check_log_matching()

    def check_log_matching(self) -> None:
        for gid in self.group_ids:
            logs = [(n.id, n.raft.groups[gid].log) for n in self.up_nodes() if gid in n.raft.groups]
            for i, (a, la) in enumerate(logs):
                for b, lb in logs[i + 1:]:
                    lo = max(la.snap_index, lb.snap_index) + 1
                    hi = min(la.last_index, lb.last_index)
                    top = hi
                    while top >= lo and la.term_at(top) != lb.term_at(top):
                        top -= 1
                    for k in range(lo, top + 1):
                        if la.entry(k) != lb.entry(k):
                            self.fail(f"log matching: {a} and {b} agree on {gid}[{top}] but differ at {k}")

    # ------------------------------------------------------------------ run

    def run(self) -> None:
        for _ in range(self.cfg.steps):
            self.step()
        self.heal()
        self.check_liveness()

    def check_liveness(self) -> None:
        deadline = self.now + self.cfg.liveness_ticks
        for gid in self.group_ids:
            probe: tuple[int, int] | None = None
            payload = f"{gid}/probe".encode()
            while True:
                if self.now >= deadline:
                    self.fail(f"liveness: {gid} did not elect a leader and commit a new entry within "
                              f"{self.cfg.liveness_ticks} ticks after healing"
                              + (f" (probe at {probe})" if probe else ""))
                leader = self.leader_of(gid)
                if leader is not None and (probe is None or leader.raft.groups[gid].term != probe[1]):
                    r = leader.raft.propose(gid, payload)
                    if isinstance(r, Proposed):
                        probe = (r.index, r.term)
                        self.pending[(leader.id, gid, r.index)] = (r.term, payload)
                if probe is not None and probe[0] in self.committed[gid] \
                        and self.committed[gid][probe[0]][1][1:] == payload:
                    # Every current member must apply it, and thereby everything acknowledged.
                    leader = self.leader_of(gid)
                    members = leader.raft.groups[gid].conf.members if leader else frozenset()
                    if members and all(self.nodes[m].applied.get(gid, 0) >= probe[0] for m in members):
                        self._check_acked(gid, members)
                        break
                self.step()

    def _check_acked(self, gid: str, members: frozenset[str]) -> None:
        for m in members:
            sm = self.nodes[m].machines[gid]
            if not isinstance(sm, RecorderMachine):
                continue
            for index, payload in self.acked[gid].items():
                if sm.record.get(index) != payload:
                    self.fail(f"acknowledged proposal lost: {gid}[{index}] = {payload!r} missing on {m}")


def run_seed(seed: int, cfg: SimConfig = SimConfig()) -> Sim:
    sim = Sim(seed, cfg)
    sim.run()
    return sim


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cluster.raft.sim", description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=None, help="run this one seed")
    p.add_argument("--seeds", type=int, default=100, help="run seeds 0..N-1 (without --seed)")
    p.add_argument("--start", type=int, default=0)
    for f in fields(SimConfig):
        kind = type(f.default)
        conv = (lambda v: v.lower() in ("1", "true", "yes")) if kind is bool else kind
        p.add_argument(f"--{f.name.replace('_', '-')}", type=conv, default=f.default)
    a = p.parse_args(argv)
    cfg = SimConfig(**{f.name: getattr(a, f.name) for f in fields(SimConfig)})
    seeds = [a.seed] if a.seed is not None else range(a.start, a.start + a.seeds)
    failed = 0
    for s in seeds:
        try:
            run_seed(s, cfg)
        except SimFailure as e:
            failed += 1
            print(e, file=sys.stderr)
    print(f"{len(seeds) - failed}/{len(seeds)} seeds passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
