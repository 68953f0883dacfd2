"""Deterministic simulation of Raft nodes in one process: the test owns time, network and disk.

N `RaftNode`s, each with a `MemoryStore` as its disk, exchange `PeerBatch`es
through a simulated network that delays, drops, duplicates and reorders them,
and honours symmetric and one-way partitions. Everything is driven by one seed.

The fault model (docs/raft.md has the whole of it):

* Crashes lose everything in memory and whatever the disk was not asked to
  sync. A cycle writes its Ready unsynced, then syncs, then sends; a crash may
  strike before the write, between write and sync (the disk keeps a random
  prefix of the unsynced batches, as `MemoryStore.durable_copy` allows), or
  between sync and send. A node relying on anything it did not have synced
  before acting on it (a vote, an acknowledged entry) is caught on restart.
* Vote amnesia: a node that has just granted a vote may crash right after
  sending it and restart at once, so a vote it failed to persist is forgotten
  while the election is still on.
* Clients send proposals and reads to whichever node believes it leads the
  group, deposed leaders stranded in a minority included.
* Adversarial schedules, not only random faults: a leader caught in the
  Figure 8 shape (entries of an earlier term on a quorum but its own first
  entry not yet) or with a partially replicated tail is crashed or isolated;
  leadership is handed to two voters at once, so two candidates contest one
  term.
* Operators change membership and transfer leadership.

After every step `Invariants` (sim_invariants.py) checks election safety, log
matching, leader completeness, no acknowledged proposal lost, state machine
safety and ReadIndex freshness, each on what the step changed. Then the
faults heal and liveness is checked group by group: a leader within a bounded
number of ticks, then a new proposal commits on every member, and every
acknowledged proposal is present on every member.

A run is bounded by its steps and `liveness_ticks`, never by the wall clock;
an exception escaping the core is reported as a failure of the seed too.

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

from storage.interface import AppendEntries, LogEntry, WriteBatch
from storage.memory_store import MemoryStore

from .group import LEADER, ConfChange, NotLeader, Proposed, RaftConfig, RaftGroup, Refused
from .log import entry_payload
from .messages import PeerBatch, VoteReply
from .node import RaftNode
from .sim_invariants import Invariants
from .sim_schedules import Figure8Schedule


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
    quiesce: bool = True
    election_ticks: int = 10
    max_append_entries: int = 8
    max_inflight: int = 4
    restart: float = 0.05  # per down node per step
    pause: float = 0.0  # a node stops (no ticks, no messages) for a while, then resumes unaware
    partial: float = 0.0  # strike a leader whose entries are on less than a quorum
    figure8: bool = False  # play the Figure 8 schedule on g1 (which needs five voters)
    contest: float = 0.0  # hand a group's leadership to two voters at once
    amnesia: float = 0.0  # a node that just granted a vote crashes and restarts at once

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
    crash_point: str | None = None  # crash inside the next cycle: see CRASH_POINTS

    @property
    def up(self) -> bool:
        return self.raft is not None


# Where a crash may strike inside a driver cycle (write, sync, send, apply).
CRASH_POINTS = ("before-write", "before-sync", "before-send")


class Sim:
    def __init__(self, seed: int, cfg: SimConfig = SimConfig(),
                 machine: Callable[[], StateMachine] = RecorderMachine) -> None:
        self.seed = seed
        self.cfg = cfg
        self.rng = random.Random(seed)
        self.machine = machine
        self.raft_cfg = RaftConfig(
            election_ticks=cfg.election_ticks, heartbeat_ticks=1, max_inflight=cfg.max_inflight,
            max_append_entries=cfg.max_append_entries,
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
        self.pending: dict[tuple[str, str, int], tuple[int, bytes]] = {}
        self.read_seq = 0
        self.paused: dict[str, int] = {}  # node → the step it resumes at
        self.contests: dict[str, int] = {}  # group → the step an operator gives up handing it to two
        self.figure8 = Figure8Schedule(self, "g1") if cfg.figure8 else None
        self.proposal_seq = 0
        self.apply_hooks: list[Callable[[str, str, LogEntry, Any], None]] = []
        self.read_hooks: list[Callable[[str, ReadState], None]] = []
        self.step_hooks: list[Callable[[], None]] = []
        # Groups placed on a node after bootstrap: the placement is known outside Raft (as the
        # metadata would know it), so a node that crashed before persisting one recreates it.
        self.placed: set[tuple[str, str]] = set()
        self.initial: dict[str, tuple[str, ...]] = {}
        self.group_ids = [f"g{i + 1}" for i in range(cfg.groups)]
        self.inv = Invariants(self.fail, self.group_ids)
        ids = [f"n{i + 1}" for i in range(cfg.nodes)]
        for nid in ids:
            self.nodes[nid] = SimNode(nid, MemoryStore())
            self._start(self.nodes[nid])
        for gid in self.group_ids:
            members = self.rng.sample(ids, min(cfg.group_size, len(ids)))
            self.initial[gid] = tuple(members)
            for nid in members:
                self.placed.add((nid, gid))
                self.nodes[nid].raft.create_group(gid, members)
                self.nodes[nid].machines[gid] = self.make_machine(self.nodes[nid], gid)
                self.nodes[nid].applied[gid] = 0

    # What the checks know, under the names tests read.
    @property
    def leaders(self) -> dict[tuple[str, int], str]:
        return self.inv.leaders

    @property
    def committed(self) -> dict[str, dict[int, tuple[int, bytes]]]:
        return self.inv.committed

    @property
    def acked(self) -> dict[str, dict[int, bytes]]:
        return {gid: {i: data[1:] for i, (_, data) in acked.items()} for gid, acked in self.inv.acked.items()}

    # ------------------------------------------------------------------ what a harness may replace

    def make_machine(self, n: SimNode, gid: str) -> StateMachine:
        """A fresh state machine for `gid` on `n` (at bootstrap, on placement and on every
        restart). A harness that hosts more than the machine on each node (a replicated
        queue's shell, say) overrides this to build its per-node part alongside."""
        return self.machine()

    def probe_payload(self, gid: str) -> bytes:
        """The entry the liveness check proposes after healing; it must be one the machine
        accepts (a no-op for a machine that parses its entries)."""
        return f"{gid}/probe".encode()

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
        self.paused.pop(n.id, None)
        self.inv.restarted(n.id)
        for gid in n.store.groups():
            st = n.store
            entries = st.entries(gid, st.first_index(gid), st.last_index(gid) + 1)
            snap = n.raft.restore_group(gid, st.hard_state(gid), st.snapshot(gid), entries)
            sm = self.make_machine(n, gid)
            if snap is not None:
                sm.restore(snap.data)
            n.machines[gid] = sm
            n.applied[gid] = snap.index if snap is not None else 0
            if gid in self.inv.entries:
                log = n.raft.groups[gid].log
                self.inv.wrote(n.id, gid, log, log.snap_index + 1)
        for nid, gid in sorted(self.placed):
            if nid == n.id and gid not in n.raft.groups:
                initial = self.initial[gid] if n.id in self.initial[gid] else ()
                n.raft.create_group(gid, initial)
                n.machines[gid] = self.make_machine(n, gid)
                n.applied[gid] = 0

    def crash(self, n: SimNode, keep_unsynced: int = 0) -> None:
        n.raft = None
        n.machines, n.applied = {}, {}
        n.store = n.store.durable_copy(keep_unsynced=keep_unsynced)

    def restart(self, n: SimNode) -> None:
        self._start(n)

    # ------------------------------------------------------------------ driver cycle

    def cycle(self, n: SimNode) -> None:
        """One driver cycle: write, sync, send, apply, advance (node.py's contract), with crashes."""
        raft = n.raft
        assert raft is not None
        rd = raft.ready()
        if rd is None:
            return
        if n.crash_point == "before-write":
            self.crash(n)
            return
        if rd.batch.ops:
            n.store.write(rd.batch, sync=False)
            if n.crash_point == "before-sync":
                self.crash(n, keep_unsynced=self.rng.randint(0, n.store.unsynced_batches()))
                return
            n.store.write(WriteBatch(), sync=True)  # the fsync: every earlier write is durable
        if n.crash_point == "before-send":
            self.crash(n)
            return
        for op in rd.batch.ops:
            if isinstance(op, AppendEntries) and op.group in self.inv.entries:
                self.inv.wrote(n.id, op.group, raft.groups[op.group].log, op.entries[0].index)
        for b in rd.messages:
            self.send(b)
        if self.faults and self.cfg.amnesia and self._granted_a_vote(rd.messages) \
                and self.rng.random() < self.cfg.amnesia:
            self.crash(n)
            self.restart(n)
            return
        for gid, snap in rd.snapshots.items():
            n.machines[gid].restore(snap.data)
            n.applied[gid] = snap.index
            self._check_snapshot(n, gid)
        up = self.up_nodes()
        for gid, entries in rd.committed.items():
            sm = n.machines[gid]
            for e in entries:
                self.inv.applied(n, gid, e.index, e.term, e.data, up)
                payload = entry_payload(e)
                result = sm.apply(e.index, payload) if payload is not None else None
                n.applied[gid] = e.index
                self._resolve(n, gid, e)
                for hook in self.apply_hooks:
                    hook(n.id, gid, e, result)
            if n.applied[gid] - raft.groups[gid].log.snap_index >= self.cfg.snapshot_every:
                raft.compact(gid, n.applied[gid], sm.snapshot())
        for rs in rd.read_states:
            self.inv.read_served(n.id, rs)
            for rhook in self.read_hooks:
                rhook(n.id, rs)
        raft.advance(rd)

    @staticmethod
    def _granted_a_vote(batches: list[PeerBatch]) -> bool:
        return any(isinstance(m, VoteReply) and m.granted and not m.pre for b in batches for m in b.messages)

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
            resume = self.paused.get(b.dst)
            if resume is not None:
                # A paused process reads its socket when it resumes.
                self.net_seq += 1
                heapq.heappush(self.net, (resume, self.net_seq, b))
            elif n.up and (b.src, b.dst) not in self.blocked:
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
            if n.up and n.id not in self.paused:
                n.raft.tick()
                self.cycle(n)
        self.inv.check_step(self.up_nodes())

    # ------------------------------------------------------------------ faults and operators

    def up_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.up]

    def leader_of(self, gid: str) -> SimNode | None:
        """The leader of the highest term among the up nodes (what an operator would find)."""
        best: SimNode | None = None
        for n in self.up_nodes():
            g = n.raft.groups.get(gid)
            if g is not None and g.role == LEADER and (best is None or g.term > best.raft.groups[gid].term):
                best = n
        return best

    def believed_leaders(self, gid: str) -> list[SimNode]:
        """Every up node that believes it leads `gid`, deposed ones not yet told included."""
        return [n for n in self.up_nodes() if gid in n.raft.groups and n.raft.groups[gid].role == LEADER]

    def client_leader(self, gid: str, rng: random.Random) -> SimNode | None:
        """The node a client talks to: any node that believes it leads, as a client with a stale
        leader hint (or on the minority side of a partition) would."""
        believers = self.believed_leaders(gid)
        return rng.choice(believers) if believers else None

    def inject_faults(self) -> None:
        cfg, rng = self.cfg, self.rng
        ids = list(self.nodes)
        if rng.random() < cfg.crash:
            n = self.nodes[rng.choice(ids)]
            if n.up:
                if rng.random() < 0.5:
                    self.crash(n)
                else:
                    n.crash_point = rng.choice(CRASH_POINTS)
            else:
                self.restart(n)
        for n in self.nodes.values():
            if not n.up and rng.random() < cfg.restart:
                self.restart(n)
        if self.figure8 is None and rng.random() < cfg.partition:  # else the schedule owns partitions
            a, b = rng.sample(ids, 2)
            self.blocked.add((a, b))
            if rng.random() < 0.6:
                self.blocked.add((b, a))
            if rng.random() < 0.3:  # isolate a whole node
                self.isolate(a)
        if self.figure8 is None and self.blocked and rng.random() < cfg.heal:
            self.blocked.clear()
        if self.figure8 is not None:
            self.figure8.step()
        if cfg.partial:
            self.strike_partial_replication()
        if rng.random() < cfg.pause:
            # The pause that matters is a leader's: it resumes believing it still leads.
            leaders = self.believed_leaders(rng.choice(self.group_ids))
            n = rng.choice(leaders) if leaders else self.nodes[rng.choice(ids)]
            if n.up and n.id not in self.paused:
                self.paused[n.id] = self.now + rng.randint(cfg.election_ticks, 5 * cfg.election_ticks)
        for nid, until in list(self.paused.items()):
            if until <= self.now:
                del self.paused[nid]
        if rng.random() < cfg.membership:
            self.change_membership(rng.choice(self.group_ids))
        if rng.random() < cfg.transfer:
            gid = rng.choice(self.group_ids)
            leader = self.leader_of(gid)
            if leader is not None:
                voters = sorted(leader.raft.groups[gid].conf.voters)
                leader.raft.transfer_leadership(gid, rng.choice(voters))
        if rng.random() < cfg.contest:
            # An operator waits (an election timeout at most) for two voters to catch up.
            self.contests[rng.choice(self.group_ids)] = self.now + cfg.election_ticks
        for gid, until in list(self.contests.items()):
            if self.contest(gid) or until <= self.now:
                del self.contests[gid]
        for gid in self.group_ids:
            if rng.random() < cfg.propose:
                self.propose(gid)
            if rng.random() < cfg.read:
                self.read(gid)

    def isolate(self, a: str) -> None:
        for c in self.nodes:
            if c != a:
                self.blocked.add((a, c))
                self.blocked.add((c, a))

    def strike(self, n: SimNode) -> None:
        """Take a leader away mid-replication: crash it, or cut it off from everyone."""
        if self.rng.random() < 0.5:
            self.crash(n)
        else:
            self.isolate(n.id)

    def strike_partial_replication(self) -> None:
        """Strike leaders whose entries sit on less than a quorum: the diverging tails of
        several terms that the Figure 8 shape is made of (sim_schedules.py plays it out)."""
        for gid in self.group_ids:
            for n in self.believed_leaders(gid):
                g = n.raft.groups[gid]
                if self.quorum_match(g) < g.log.last_index and self.rng.random() < self.cfg.partial:
                    self.strike(n)

    @staticmethod
    def quorum_match(g: RaftGroup) -> int:
        """The highest index a leader knows a quorum of voters to hold (its progress, not its commit)."""
        matches = sorted((g.stable if v == g.me else (g.progress[v].match if v in g.progress else 0)
                          for v in g.conf.voters), reverse=True)
        return matches[len(matches) // 2] if matches else 0

    def contest(self, gid: str) -> bool:
        """Hand leadership to two caught-up voters at once: each is told to campaign at once
        (TimeoutNow), so both stand in the same term and the other voters choose. False if
        there is no leader with two caught-up voters right now."""
        leader = self.leader_of(gid)
        if leader is None:
            return False
        g = leader.raft.groups[gid]
        caught_up = sorted(v for v in g.conf.voters - {leader.id}
                           if v in g.progress and g.progress[v].match == g.log.last_index)
        if len(caught_up) < 2:
            return False
        for target in self.rng.sample(caught_up, 2):
            leader.raft.transfer_leadership(gid, target)
        return True

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
                t.machines[gid] = self.make_machine(t, gid)
                t.applied[gid] = 0
        elif op == "promote":
            target = rng.choice(sorted(conf.learners))
        else:
            target = rng.choice(sorted(conf.members))
        leader.raft.change_membership(gid, ConfChange(op, target))

    def propose(self, gid: str, payload: bytes | None = None,
                to: SimNode | None = None) -> Proposed | NotLeader | Refused | None:
        """A client's proposal, to `to` or else to a node that believes it leads."""
        leader = to or self.client_leader(gid, self.rng)
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
        leader = self.client_leader(gid, self.rng)
        if leader is None:
            return
        self.read_seq += 1
        ctx = ("r", self.read_seq)
        if leader.raft.read_index(gid, ctx) is None:
            self.inv.read_asked(ctx, leader.id, gid)

    def heal(self) -> None:
        self.faults = False
        self.blocked.clear()
        self.paused.clear()
        self.drop = self.duplicate = 0.0
        for n in self.nodes.values():
            if not n.up:
                self.restart(n)
            n.crash_point = None

    # ------------------------------------------------------------------ outcomes

    def _resolve(self, n: SimNode, gid: str, e: LogEntry) -> None:
        """The proposer of the entry applied at `e.index` learns its fate: acknowledged if it is ours."""
        p = self.pending.pop((n.id, gid, e.index), None)
        if p is not None and p == (e.term, e.data[1:]):
            self.inv.acknowledged(gid, e.index, e.term, e.data)

    def _check_snapshot(self, n: SimNode, gid: str) -> None:
        sm = n.machines[gid]
        if isinstance(sm, RecorderMachine):
            for index, data in sm.record.items():
                known = self.committed[gid].get(index)
                if known is not None and known[1][1:] != data:
                    self.fail(f"state machine safety: {n.id} restored {gid}[{index}] = {data!r} from a snapshot")

    # ------------------------------------------------------------------ run

    def run(self) -> None:
        try:
            for _ in range(self.cfg.steps):
                self.step()
            self.heal()
            self.check_liveness()
            self.inv.check_logs(self.up_nodes(), self.group_ids)
        except SimFailure:
            raise
        except Exception as e:  # the core's own assertions, or a crash of it: a failed seed too
            self.fail(f"{type(e).__name__} raised: {e}")

    def check_liveness(self) -> None:
        deadline = self.now + self.cfg.liveness_ticks
        for gid in self.group_ids:
            probe: tuple[int, int] | None = None
            payload = self.probe_payload(gid)
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
            for index, (_, data) in self.inv.acked[gid].items():
                if sm.record.get(index) != data[1:]:
                    self.fail(f"acknowledged proposal lost: {gid}[{index}] = {data[1:]!r} missing on {m}")


def run_seed(seed: int, cfg: SimConfig = SimConfig()) -> Sim:
    sim = Sim(seed, cfg)
    sim.run()
    return sim


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, SimConfig]:
    """The command line of a reproduce line: the seed(s) and the configuration."""
    p = argparse.ArgumentParser(prog="python -m cluster.raft.sim", description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=None, help="run this one seed")
    p.add_argument("--seeds", type=int, default=100, help="run seeds 0..N-1 (without --seed)")
    p.add_argument("--start", type=int, default=0)
    for f in fields(SimConfig):
        kind = type(f.default)
        conv = (lambda v: v.lower() in ("1", "true", "yes")) if kind is bool else kind
        p.add_argument(f"--{f.name.replace('_', '-')}", type=conv, default=f.default)
    a = p.parse_args(argv)
    return a, SimConfig(**{f.name: getattr(a, f.name) for f in fields(SimConfig)})


def main(argv: list[str] | None = None) -> int:
    a, cfg = parse_args(argv)
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
