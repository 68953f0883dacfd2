"""`RaftNode`: every Raft group hosted on one node, behind one Ready/advance cycle.

A node may host thousands of groups (one per mirrored queue plus metadata),
so nothing here may cost per group per tick unless the group is busy:

* One `Ready` per cycle for all groups: one `WriteBatch` (hard states, entries,
  snapshots of every group, written with one fsync), messages grouped into
  one `PeerBatch` per destination node, committed entries per group.
* Only *active* groups are ticked and only *dirty* groups are visited by
  `ready()`; a quiescent group costs nothing until a message or a local
  operation wakes it.
* Quiescence. A leader whose group has been idle for `quiesce_after_ticks`,
  with every member holding every entry and the commit index, sends one last
  heartbeat flagged `quiesce` and stops ticking; a follower receiving it stops
  its election timer. Liveness of quiescent groups is then watched once per
  node pair: every node sends each peer node a `PeerBatch` (empty if need be)
  every `node_heartbeat_ticks`, carrying its incarnation (a number that
  changes on every restart). When a peer node is not heard from for
  `node_timeout_ticks`, or comes back with a new incarnation, every quiescent
  group that has it as a member wakes: followers whose leader lived there drop
  their lease and will campaign after a randomized timeout; leaders resume
  heartbeats and check-quorum. Any message for a quiescent group also wakes
  it (a restarted follower's pre-vote wakes its leader, which then brings it
  back). Idle cost is therefore O(peer nodes), not O(groups).

The driver contract (as etcd's): call `tick`, `step`, `propose`, ... freely;
then `ready()`; persist `ready.batch`, only then send `ready.messages`; apply
`ready.snapshots` and `ready.committed`; serve `ready.read_states` once
applied; then `advance(ready)`. Do not call anything else between `ready()`
and `advance()`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from storage.interface import HardState, LogEntry, Snapshot, WriteBatch

from .group import (
    LEADER,
    ConfChange,
    NotLeader,
    Proposed,
    RaftConfig,
    RaftGroup,
    ReadState,
    Refused,
)
from .log import Conf, snapshot_data, split_snapshot
from .messages import Message, PeerBatch


@dataclass(frozen=True, slots=True)
class GroupStatus:
    group: str
    role: str
    term: int
    leader: str | None
    commit: int
    applied: int
    last_index: int
    snapshot_index: int
    voters: frozenset[str]
    learners: frozenset[str]
    quiescent: bool
    # On the leader, every other member's match index (the last entry it is known to hold):
    # who has caught up with the commit index. Empty on a follower, which does not know.
    match: Mapping[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Ready:
    """Everything the driver must do this cycle, for all groups of the node."""

    batch: WriteBatch = field(default_factory=WriteBatch)
    messages: list[PeerBatch] = field(default_factory=list)
    snapshots: dict[str, Snapshot] = field(default_factory=dict)  # restore state machine (app data)
    committed: dict[str, list[LogEntry]] = field(default_factory=dict)  # apply in order, after snapshots
    read_states: list[ReadState] = field(default_factory=list)
    _persisted: list[tuple[RaftGroup, int, HardState]] = field(default_factory=list)


class RaftNode:
    def __init__(
        self,
        node_id: str,
        config: RaftConfig = RaftConfig(),
        *,
        rng: random.Random | None = None,
        incarnation: int = 0,
    ) -> None:
        self.id = node_id
        self.cfg = config
        self.rng = rng if rng is not None else random.Random()
        self.incarnation = incarnation
        self.groups: dict[str, RaftGroup] = {}
        # Insertion-ordered dicts used as sets: a str set iterates in an order that
        # depends on PYTHONHASHSEED, and the order groups are ticked and visited
        # decides the order of messages, so a seed would not replay the same run.
        self.active: dict[str, None] = {}
        self.dirty: dict[str, None] = {}
        self.outbox: dict[str, list[Message]] = {}
        self.now = 0
        self.peers: tuple[str, ...] = ()  # sorted, for the same reason
        self.peers_stale = False
        self.peer_heard: dict[str, int] = {}
        self.peer_alive: dict[str, bool] = {}
        self.peer_incarnation: dict[str, int] = {}
        self.heartbeat_due = False
        self.dropped: list[str] = []

    # ------------------------------------------------------------------ groups

    def create_group(self, group: str, voters: tuple[str, ...] | frozenset[str] = (),
                     learners: tuple[str, ...] | frozenset[str] = ()) -> None:
        """A new group. Initial members all call this with the same members; a node
        being added to an existing group calls it with none and waits for the leader."""
        assert group not in self.groups
        conf = Conf(frozenset(voters), frozenset(learners))
        snap = Snapshot(0, 0, snapshot_data(conf, b""))
        g = self._install(group, HardState(), snap, [])
        g.snap_to_persist = snap
        g.snap_replaces_log = True
        g.persisted_hs = HardState(-1)  # force the first hard state out
        self.dirty[group] = None

    def restore_group(self, group: str, hard_state: HardState | None, snapshot: Snapshot | None,
                      entries: list[LogEntry]) -> Snapshot | None:
        """A group from persisted state; returns the snapshot (app data) to restore the state
        machine from, if any. Committed entries after it come out in the next Ready."""
        assert group not in self.groups
        if snapshot is None:
            snapshot = Snapshot(0, 0, snapshot_data(Conf(), b""))
        self._install(group, hard_state or HardState(), snapshot, entries)
        self.dirty[group] = None
        _, app = split_snapshot(snapshot.data)
        return Snapshot(snapshot.index, snapshot.term, app) if snapshot.index > 0 else None

    def _install(self, group: str, hs: HardState, snap: Snapshot, entries: list[LogEntry]) -> RaftGroup:
        g = RaftGroup(group, self.id, self.cfg, self.rng, self, hs, snap, entries)
        self.groups[group] = g
        self.active[group] = None
        self.peers_stale = True
        return g

    def drop_group(self, group: str) -> None:
        """Forget a group here (after this node was removed from it)."""
        g = self.groups.pop(group)
        g.quiescent = True  # nothing more comes out of it
        self.active.pop(group, None)
        self.dirty.pop(group, None)
        self.dropped.append(group)
        self.peers_stale = True

    def status(self, group: str) -> GroupStatus:
        g = self.groups[group]
        conf = g.conf
        match = {peer: pr.match for peer, pr in g.progress.items()} if g.role == LEADER else {}
        return GroupStatus(group, g.role, g.term, g.leader, g.commit, g.applied, g.last_index,
                           g.log.snap_index, conf.voters, conf.learners, g.quiescent, match)

    # ------------------------------------------------------------------ host interface for groups

    def send(self, m: Message) -> None:
        box = self.outbox.get(m.dst)
        if box is None:
            self.outbox[m.dst] = [m]
        else:
            box.append(m)

    def alive(self, node: str) -> bool:
        return node == self.id or self.peer_alive.get(node, True)

    def quiesced(self, group: RaftGroup) -> None:
        self.active.pop(group.id, None)

    def woke(self, group: RaftGroup) -> None:
        self.active[group.id] = None

    def conf_changed(self, group: RaftGroup) -> None:
        self.peers_stale = True

    # ------------------------------------------------------------------ inputs

    def tick(self) -> None:
        self.now += 1
        if self.peers_stale:
            self._refresh_peers()
        timeout = self.cfg.node_timeout_ticks
        for peer in self.peers:
            if self.peer_alive.get(peer, True) and self.now - self.peer_heard.get(peer, self.now) > timeout:
                self.peer_alive[peer] = False
                self._wake_groups_of(peer)
        if self.now % self.cfg.node_heartbeat_ticks == 0:
            self.heartbeat_due = True
        groups = self.groups
        for gid in list(self.active):
            g = groups[gid]
            g.tick()
            if g.has_ready():
                self.dirty[gid] = None

    def _refresh_peers(self) -> None:
        peers: set[str] = set()
        for g in self.groups.values():
            peers |= g.conf.members
        peers.discard(self.id)
        for p in peers.difference(self.peers):
            self.peer_heard.setdefault(p, self.now)
        self.peers = tuple(sorted(peers))
        self.peers_stale = False

    def _wake_groups_of(self, peer: str) -> None:
        for g in self.groups.values():
            if g.quiescent and (peer in g.conf.members or g.leader == peer):
                g.wake(leader_lost=g.leader == peer)
                self.dirty[g.id] = None

    def step(self, batch: PeerBatch) -> None:
        """Take every message another node sent us in one cycle."""
        src = batch.src
        known = self.peer_incarnation.get(src)
        self.peer_incarnation[src] = batch.incarnation
        self.peer_heard[src] = self.now
        if known is not None and known != batch.incarnation:
            self._wake_groups_of(src)  # it restarted: whatever it knew in memory is gone
        if not self.peer_alive.get(src, True):
            self.peer_alive[src] = True
        for m in batch.messages:
            self.step_message(m)

    def step_message(self, m: Message) -> None:
        g = self.groups.get(m.group)
        if g is None:
            return  # not (yet, or any longer) hosted here
        g.step(m)
        self.dirty[m.group] = None

    def propose(self, group: str, data: bytes) -> Proposed | NotLeader | Refused:
        g = self.groups.get(group)
        if g is None:
            return Refused(group, "no such group on this node")
        self.dirty[group] = None
        return g.propose(data)

    def change_membership(self, group: str, change: ConfChange) -> Proposed | NotLeader | Refused:
        g = self.groups.get(group)
        if g is None:
            return Refused(group, "no such group on this node")
        self.dirty[group] = None
        return g.propose_conf(change)

    def transfer_leadership(self, group: str, target: str) -> NotLeader | Refused | None:
        g = self.groups.get(group)
        if g is None:
            return Refused(group, "no such group on this node")
        self.dirty[group] = None
        return g.transfer(target)

    def read_index(self, group: str, ctx: object) -> NotLeader | Refused | None:
        """Ask for a linearizable read; a `ReadState` carrying `ctx` comes out in a later Ready."""
        g = self.groups.get(group)
        if g is None:
            return Refused(group, "no such group on this node")
        self.dirty[group] = None
        return g.read_index(ctx)

    def campaign(self, group: str) -> None:
        """Start an election now (tests and bootstrap of a single-node group)."""
        g = self.groups[group]
        g.wake()
        if g.role != LEADER:
            g.campaign(pre=self.cfg.pre_vote)
        self.dirty[group] = None

    def compact(self, group: str, index: int, app_data: bytes) -> None:
        """Take the state machine's snapshot at applied `index`; drop the log through it."""
        self.groups[group].compact(index, app_data)
        self.dirty[group] = None

    def is_leader(self, group: str) -> bool:
        g = self.groups.get(group)
        return g is not None and g.role == LEADER

    # ------------------------------------------------------------------ ready / advance

    def has_ready(self) -> bool:
        return bool(self.dirty or self.outbox or self.heartbeat_due or self.dropped)

    def ready(self) -> Ready | None:
        if not self.has_ready():
            return None
        rd = Ready()
        batch = rd.batch
        for group in self.dropped:
            batch.drop_group(group)
        self.dropped = []
        for gid in self.dirty:
            g = self.groups.get(gid)
            if g is None:
                continue
            g.flush_reads()
            if g.snap_to_persist is not None:
                s = g.snap_to_persist
                batch.put_snapshot(gid, s)
                batch.compact_prefix(gid, s.index)
                if g.snap_replaces_log:
                    batch.truncate_suffix(gid, s.index + 1)
                g.snap_to_persist = None
            if g.unstable_from is not None:
                lo = max(g.unstable_from, g.log.snap_index + 1)
                batch.append(gid, g.log.slice(lo, g.log.last_index + 1))
                g.unstable_from = None
            hs = g.hard_state()
            if hs != g.persisted_hs:
                batch.set_hard_state(gid, hs)
            rd._persisted.append((g, g.log.last_index, hs))
            if g.snap_to_install is not None:
                s = g.snap_to_install
                _, app = split_snapshot(s.data)
                rd.snapshots[gid] = Snapshot(s.index, s.term, app)
                g.snap_to_install = None
            if g.commit > g.applied:
                rd.committed[gid] = g.log.slice(g.applied + 1, g.commit + 1)
                g.applied = g.commit
            if g.read_states:
                rd.read_states.extend(g.read_states)
                g.read_states = []
        self.dirty = {}
        if self.heartbeat_due:
            self.heartbeat_due = False
            if self.peers_stale:
                self._refresh_peers()
            for peer in self.peers:
                self.outbox.setdefault(peer, [])
        for dst, msgs in self.outbox.items():
            rd.messages.append(PeerBatch(self.id, dst, self.incarnation, tuple(msgs)))
        self.outbox = {}
        return rd

    def advance(self, rd: Ready) -> None:
        for g, stable, hs in rd._persisted:
            g.persisted(stable, hs)
            if g.has_ready():
                self.dirty[g.id] = None
