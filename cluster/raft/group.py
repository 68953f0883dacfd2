"""One Raft group's state machine on one node: elections, replication, commit, reads, changes.

This is the classic core in the shape of etcd's raft package, without I/O:
`tick()` advances logical time, `step(msg)` handles a message, and the local
operations (`propose`, `propose_conf`, `read_index`, `transfer`, `compact`)
queue their effects. The hosting `RaftNode` collects the effects of all its
groups into one `Ready` and calls `advance` once they are carried out.

Design points (each a Raft thesis or etcd behaviour):

* Pre-vote (thesis §9.6): a node first asks whether it *could* win at term+1
  and only bumps its term when a majority says yes, so a partitioned node
  rejoining cannot depose a healthy leader.
* Leader lease for votes + check-quorum (thesis §6.2, §9.6): a follower that
  heard from its leader within the election timeout ignores vote requests
  (unless ordered by TimeoutNow), and a leader that did not hear from a
  majority within an election timeout steps down.
* Progress per follower in probe / replicate / snapshot state; in replicate
  state appends are pipelined, at most `max_inflight` unacknowledged messages
  per follower (flow control). Rejections carry a (index, term) hint so the
  leader skips a whole conflicting term per round trip.
* Commit only an index whose entry has the leader's current term (§5.4.2); a
  new leader appends a no-op to get there.
* Configuration changes one server at a time, effective when appended
  (§4.1), at most one uncommitted, and only once the leader has committed in
  its term (the fix of the single-server change bug, raft-dev 2015). A leader
  that removes itself keeps leading until the change commits, then steps down
  and hands over with TimeoutNow.
* ReadIndex (§6.4): a read is served at the commit index recorded when it
  arrived, once a majority has acknowledged a heartbeat sent after it, and
  once this leader has committed an entry of its term.
* Quiescence: an idle leader whose members hold every entry and the commit
  index sends a final heartbeat with `quiesce` and stops ticking; its
  followers stop their election timers. Failure detection for quiescent
  groups is done once per node pair by the host (see node.py).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

from storage.interface import HardState, LogEntry, Snapshot

from .log import NOOP_DATA, Conf, RaftLog, conf_data, normal_data, snapshot_data
from .messages import (
    Append,
    AppendReply,
    Heartbeat,
    HeartbeatReply,
    InstallSnapshot,
    Message,
    TimeoutNow,
    Vote,
    VoteReply,
)

FOLLOWER = "follower"
PRE_CANDIDATE = "pre-candidate"
CANDIDATE = "candidate"
LEADER = "leader"

PROBE = "probe"
REPLICATE = "replicate"
SNAPSHOT = "snapshot"


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """Timing is in ticks; the driver decides how long a tick is."""

    election_ticks: int = 10
    heartbeat_ticks: int = 1
    max_inflight: int = 64
    max_append_entries: int = 256
    check_quorum: bool = True
    pre_vote: bool = True
    quiesce: bool = True
    quiesce_after_ticks: int = 20
    node_heartbeat_ticks: int = 2
    node_timeout_ticks: int = 10


# Outcomes of local operations: errors are values.


@dataclass(frozen=True, slots=True)
class NotLeader:
    """This node is not the group's leader; `leader` is the best known one (or None)."""

    group: str
    leader: str | None


@dataclass(frozen=True, slots=True)
class Refused:
    """The leader cannot take the request now (e.g. a configuration change is in flight)."""

    group: str
    reason: str


@dataclass(frozen=True, slots=True)
class Proposed:
    """The entry was appended at (index, term); it is committed when applied with this term."""

    group: str
    index: int
    term: int


@dataclass(frozen=True, slots=True)
class ReadState:
    """A ReadIndex request: serve it once the state machine has applied `index`.

    `ok` is False when leadership was lost before the read was confirmed.
    """

    group: str
    ctx: object
    index: int
    ok: bool = True


@dataclass(frozen=True, slots=True)
class ConfChange:
    """One server change: op is "add_learner", "add_voter", "promote" or "remove"."""

    op: str
    node: str


class Host:
    """What a group needs from the node hosting it (implemented by RaftNode)."""

    def send(self, m: Message) -> None: ...
    def alive(self, node: str) -> bool: ...
    def quiesced(self, group: "RaftGroup") -> None: ...
    def woke(self, group: "RaftGroup") -> None: ...
    def conf_changed(self, group: "RaftGroup") -> None: ...


class Progress:
    """What the leader knows of one follower's log."""

    __slots__ = ("match", "next", "state", "probe_sent", "inflight", "pending_snapshot",
                 "recent_active", "stall", "snapshot_elapsed", "read_ack")

    def __init__(self, next_index: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = PROBE
        self.probe_sent = False
        self.inflight: deque[int] = deque()  # last index of each unacknowledged append
        self.pending_snapshot = 0
        self.recent_active = False
        self.stall = 0
        self.snapshot_elapsed = 0
        self.read_ack = 0

    def become_probe(self) -> None:
        if self.state == SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = PROBE
        self.probe_sent = False
        self.inflight.clear()
        self.pending_snapshot = 0

    def become_replicate(self) -> None:
        self.state = REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflight.clear()
        self.pending_snapshot = 0

    def become_snapshot(self, index: int) -> None:
        self.state = SNAPSHOT
        self.pending_snapshot = index
        self.snapshot_elapsed = 0
        self.inflight.clear()


class RaftGroup:
    """One group's Raft state on the node `me`."""

    def __init__(
        self,
        group: str,
        me: str,
        config: RaftConfig,
        rng: random.Random,
        host: Host,
        hard_state: HardState,
        snapshot: Snapshot,
        entries: list[LogEntry],
    ) -> None:
        self.id = group
        self.me = me
        self.cfg = config
        self.rng = rng
        self.host = host
        self.log = RaftLog(snapshot, entries)
        self.term = hard_state.term
        self.vote = hard_state.vote
        self.commit = max(hard_state.commit, self.log.snap_index)
        assert self.commit <= self.log.last_index
        self.applied = self.log.snap_index  # handed to the driver for applying
        self.stable = self.log.last_index  # persisted through this index
        self.unstable_from: int | None = None
        self.persisted_hs = hard_state
        self.snap_to_persist: Snapshot | None = None
        self.snap_replaces_log = False
        self.snap_to_install: Snapshot | None = None  # the state machine must restore it
        self.role = FOLLOWER
        self.leader: str | None = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = 0
        self._reset_randomized_timeout()
        self.quiescent = False
        self.idle_ticks = 0
        self.votes: dict[str, bool] = {}
        self.progress: dict[str, Progress] = {}
        self.pending_conf_index = 0
        self.transfer_target: str | None = None
        self.transfer_elapsed = 0
        self.read_seq = 0
        self.reads: deque[tuple[int, object, int]] = deque()
        self.reads_waiting: list[object] = []  # arrived before this leader committed in its term
        self.read_broadcast = False
        self.read_states: list[ReadState] = []

    # ------------------------------------------------------------------ queries

    @property
    def conf(self) -> Conf:
        return self.log.conf

    @property
    def last_index(self) -> int:
        return self.log.last_index

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.commit)

    def has_ready(self) -> bool:
        return bool(
            self.unstable_from is not None
            or self.snap_to_persist is not None
            or self.read_states
            or self.read_broadcast
            or self.commit > self.applied
            or self.persisted_hs.term != self.term
            or self.persisted_hs.vote != self.vote
            or self.persisted_hs.commit != self.commit
        )

    def _quorum(self) -> int:
        return len(self.conf.voters) // 2 + 1

    def _committed_in_term(self) -> bool:
        return self.log.term_at(self.commit) == self.term

    # ------------------------------------------------------------------ transitions

    def _reset_randomized_timeout(self) -> None:
        e = self.cfg.election_ticks
        self.randomized_timeout = e + self.rng.randrange(e)

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = None
        self.leader = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_randomized_timeout()
        self.votes = {}
        self._abort_transfer()
        self._fail_reads()
        self.progress = {}

    def become_follower(self, term: int, leader: str | None) -> None:
        self._reset(term)
        self.role = FOLLOWER
        self.leader = leader

    def _become_pre_candidate(self) -> None:
        # A pre-candidate keeps its term and vote: nothing it does is binding.
        self.role = PRE_CANDIDATE
        self.leader = None
        self.votes = {self.me: True}
        self.election_elapsed = 0
        self._reset_randomized_timeout()

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.role = CANDIDATE
        self.vote = self.me
        self.votes = {self.me: True}

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role = LEADER
        self.leader = self.me
        last = self.log.last_index
        # Sorted: a frozenset's order depends on PYTHONHASHSEED, and this order is the
        # order of the leader's messages, which a seeded simulation must replay exactly.
        for peer in sorted(self.conf.members):
            if peer != self.me:
                self.progress[peer] = Progress(last + 1)
        # Conservatively treat the tail as a possibly uncommitted configuration change.
        self.pending_conf_index = last
        self._append_local(NOOP_DATA)
        self._broadcast_append()

    def campaign(self, pre: bool, transfer: bool = False) -> None:
        if self.me not in self.conf.voters:
            return
        if pre:
            self._become_pre_candidate()
            term = self.term + 1
        else:
            self._become_candidate()
            term = self.term
        if self._poll():
            return
        last_index, last_term = self.log.last_index, self.log.last_term
        for peer in sorted(self.conf.voters):
            if peer != self.me:
                self.host.send(Vote(self.id, term, self.me, peer, last_index, last_term, pre, transfer))

    def _poll(self) -> bool:
        """Count votes; win or lose the (pre-)election if decided. True if decided."""
        voters = self.conf.voters
        granted = sum(1 for n, g in self.votes.items() if g and n in voters)
        rejected = sum(1 for n, g in self.votes.items() if not g and n in voters)
        q = self._quorum()
        if granted >= q:
            if self.role == PRE_CANDIDATE:
                self.campaign(pre=False)
            else:
                self._become_leader()
            return True
        if len(voters) - rejected < q:
            self.become_follower(self.term, None)
            return True
        return False

    # ------------------------------------------------------------------ ticks

    def tick(self) -> None:
        if self.role == LEADER:
            self._tick_leader()
            return
        self.election_elapsed += 1
        if self.election_elapsed >= self.randomized_timeout:
            self.election_elapsed = 0
            if self.me in self.conf.voters:
                self.campaign(pre=self.cfg.pre_vote)
            else:
                self._reset_randomized_timeout()

    def _tick_leader(self) -> None:
        cfg = self.cfg
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        self.idle_ticks += 1
        if self.election_elapsed >= cfg.election_ticks:
            self.election_elapsed = 0
            if cfg.check_quorum:
                active = sum(
                    1 for v in self.conf.voters
                    if v == self.me or (v in self.progress and self.progress[v].recent_active)
                )
                if active < self._quorum():
                    self.become_follower(self.term, None)
                    return
                for pr in self.progress.values():
                    pr.recent_active = False
        if self.transfer_target is not None:
            self.transfer_elapsed += 1
            if self.transfer_elapsed >= cfg.election_ticks:
                self._abort_transfer()
        for peer, pr in self.progress.items():
            if pr.state == SNAPSHOT:
                pr.snapshot_elapsed += 1
                if pr.snapshot_elapsed >= cfg.election_ticks:
                    # The snapshot or its reply was lost: try again from a probe.
                    pr.become_probe()
                    self._send_append(peer)
        if self.heartbeat_elapsed >= cfg.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            if cfg.quiesce and self._can_quiesce():
                self._broadcast_heartbeat(quiesce=True)
                self.quiescent = True
                self.host.quiesced(self)
            else:
                self._broadcast_heartbeat()

    def _can_quiesce(self) -> bool:
        if self.idle_ticks < self.cfg.quiesce_after_ticks:
            return False
        last = self.log.last_index
        if (self.commit != last or self.stable != last or self.transfer_target is not None
                or self.reads or self.reads_waiting):
            return False
        for peer, pr in self.progress.items():
            if pr.match != last or pr.state != REPLICATE or not self.host.alive(peer):
                return False
        return True

    def wake(self, leader_lost: bool = False) -> None:
        """Leave quiescence (any activity, or the host detected a member node's failure)."""
        if self.quiescent:
            self.quiescent = False
            self.idle_ticks = 0
            self.election_elapsed = 0
            self._reset_randomized_timeout()
            if self.role == LEADER:
                for pr in self.progress.values():
                    pr.recent_active = True  # they were quiet because we told them to be
            self.host.woke(self)
        if leader_lost and self.role != LEADER:
            # Give up the lease at once so this follower grants votes to a successor.
            self.leader = None

    # ------------------------------------------------------------------ local operations

    def _append_local(self, data: bytes) -> LogEntry:
        e = LogEntry(self.log.last_index + 1, self.term, data)
        self.log.append(e)
        if self.unstable_from is None:
            self.unstable_from = e.index
        return e

    def propose(self, payload: bytes) -> Proposed | NotLeader | Refused:
        if self.role != LEADER:
            return NotLeader(self.id, self.leader)
        if self.transfer_target is not None:
            return Refused(self.id, "leadership transfer in progress")
        self.wake()
        self.idle_ticks = 0
        e = self._append_local(normal_data(payload))
        self._broadcast_append(empty=False)
        return Proposed(self.id, e.index, e.term)

    def propose_conf(self, change: ConfChange) -> Proposed | NotLeader | Refused:
        if self.role != LEADER:
            return NotLeader(self.id, self.leader)
        if self.transfer_target is not None:
            return Refused(self.id, "leadership transfer in progress")
        if self.pending_conf_index > self.commit:
            return Refused(self.id, "a configuration change is already in progress")
        if not self._committed_in_term():
            return Refused(self.id, "the leader has not yet committed an entry in its term")
        conf = self.conf
        voters, learners = set(conf.voters), set(conf.learners)
        node = change.node
        if change.op == "add_learner":
            if node in conf.members:
                return Refused(self.id, f"{node} is already a member")
            learners.add(node)
        elif change.op == "add_voter":
            if node in conf.voters:
                return Refused(self.id, f"{node} is already a voter")
            learners.discard(node)
            voters.add(node)
        elif change.op == "promote":
            if node not in conf.learners:
                return Refused(self.id, f"{node} is not a learner")
            pr = self.progress.get(node)
            if pr is None or pr.match < self.commit:
                return Refused(self.id, f"learner {node} has not caught up")
            learners.discard(node)
            voters.add(node)
        elif change.op == "remove":
            if node not in conf.members:
                return Refused(self.id, f"{node} is not a member")
            voters.discard(node)
            learners.discard(node)
            if not voters:
                return Refused(self.id, "cannot remove the last voter")
        else:
            raise ValueError(f"unknown configuration change {change.op!r}")
        self.wake()
        self.idle_ticks = 0
        new = Conf(frozenset(voters), frozenset(learners))
        e = self._append_local(conf_data(new))
        self.pending_conf_index = e.index
        self._conf_applied()
        self._broadcast_append(empty=False)
        return Proposed(self.id, e.index, e.term)

    def _conf_applied(self) -> None:
        """The latest configuration changed (appended or truncated): follow it."""
        conf = self.conf
        if self.role == LEADER:
            last = self.log.last_index
            for peer in sorted(conf.members):
                if peer != self.me and peer not in self.progress:
                    pr = Progress(last + 1)
                    pr.recent_active = True
                    self.progress[peer] = pr
            for peer in list(self.progress):
                if peer not in conf.members:
                    del self.progress[peer]
            if self.transfer_target is not None and self.transfer_target not in conf.voters:
                self._abort_transfer()
        elif self.role in (CANDIDATE, PRE_CANDIDATE) and self.me not in conf.voters:
            self.become_follower(self.term, None)
        self.host.conf_changed(self)

    def read_index(self, ctx: object) -> NotLeader | None:
        if self.role != LEADER:
            return NotLeader(self.id, self.leader)
        self.wake()
        self.idle_ticks = 0
        if not self._committed_in_term():
            self.reads_waiting.append(ctx)
        else:
            self._queue_read(ctx)
        return None

    def _queue_read(self, ctx: object) -> None:
        voters = self.conf.voters
        if voters == {self.me} or (len(voters) == 1 and self.me in voters):
            self.read_states.append(ReadState(self.id, ctx, self.commit))
            return
        self.read_seq += 1
        self.reads.append((self.read_seq, ctx, self.commit))
        self.read_broadcast = True

    def _release_reads(self) -> None:
        q = self._quorum()
        voters = self.conf.voters
        while self.reads:
            seq, ctx, index = self.reads[0]
            acks = 1 if self.me in voters else 0
            for v in voters:
                pr = self.progress.get(v)
                if pr is not None and pr.read_ack >= seq:
                    acks += 1
            if acks < q:
                break
            self.reads.popleft()
            self.read_states.append(ReadState(self.id, ctx, index))

    def _fail_reads(self) -> None:
        for _, ctx, index in self.reads:
            self.read_states.append(ReadState(self.id, ctx, index, ok=False))
        for ctx in self.reads_waiting:
            self.read_states.append(ReadState(self.id, ctx, 0, ok=False))
        self.reads.clear()
        self.reads_waiting = []
        self.read_broadcast = False

    def flush_reads(self) -> None:
        """Send one heartbeat round for all reads queued since the last flush."""
        if self.read_broadcast:
            self.read_broadcast = False
            if self.role == LEADER:
                self._broadcast_heartbeat()

    def transfer(self, target: str) -> NotLeader | Refused | None:
        if self.role != LEADER:
            return NotLeader(self.id, self.leader)
        if target == self.me:
            return None
        if target not in self.conf.voters:
            return Refused(self.id, f"{target} is not a voter")
        self.wake()
        self.idle_ticks = 0
        self.transfer_target = target
        self.transfer_elapsed = 0
        pr = self.progress[target]
        if pr.match == self.log.last_index:
            self.host.send(TimeoutNow(self.id, self.term, self.me, target))
        else:
            self._send_append(target)
        return None

    def _abort_transfer(self) -> None:
        self.transfer_target = None
        self.transfer_elapsed = 0

    def compact(self, index: int, app_data: bytes) -> None:
        """The state machine's snapshot as of applied `index` replaces the log through it."""
        assert index <= self.applied, (index, self.applied)
        if index <= self.log.snap_index:
            return
        term = self.log.term_at(index)
        assert term is not None
        snap = Snapshot(index, term, snapshot_data(self.log.conf_at(index), app_data))
        self.log.compact(snap)
        self.snap_to_persist = snap
        self.snap_replaces_log = False

    # ------------------------------------------------------------------ messages

    def step(self, m: Message) -> None:
        if self.quiescent and not (isinstance(m, Heartbeat) and m.quiesce):
            if self.role == LEADER:
                # Replies to our own last heartbeat do not end quiescence; anything else
                # from a member (a restarted follower's pre-vote, a rejection) does.
                if m.src in self.conf.members and not isinstance(m, HeartbeatReply):
                    self.wake()
            else:
                self.wake()
        if m.term > self.term:
            if isinstance(m, Vote):
                in_lease = self.leader is not None and (
                    self.role == LEADER or self.election_elapsed < self.cfg.election_ticks
                ) and self.cfg.check_quorum
                if in_lease and not m.transfer:
                    return  # a healthy leader exists: do not let this candidate disrupt it
            if isinstance(m, Vote) and m.pre:
                pass  # answering a pre-vote changes nothing
            elif isinstance(m, VoteReply) and m.pre and m.granted:
                pass  # a granted pre-vote carries the term we asked about
            elif isinstance(m, (Append, Heartbeat, InstallSnapshot)):
                self.become_follower(m.term, m.src)
            else:
                self.become_follower(m.term, None)
        elif m.term < self.term:
            if isinstance(m, (Append, Heartbeat)):
                # A deposed leader: tell it our term so it steps down (it cannot win a
                # pre-vote, so this reply is how it learns).
                self.host.send(AppendReply(self.id, self.term, self.me, m.src, 0, reject=True))
            elif isinstance(m, Vote) and m.pre:
                self.host.send(VoteReply(self.id, self.term, self.me, m.src, False, True))
            return

        if isinstance(m, Vote):
            self._on_vote(m)
        elif self.role == LEADER:
            self._step_leader(m)
        elif self.role in (CANDIDATE, PRE_CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    def _on_vote(self, m: Vote) -> None:
        can_vote = (
            self.vote == m.src
            or (self.vote is None and self.leader is None)
            or (m.pre and m.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(m.last_index, m.last_term):
            self.host.send(VoteReply(self.id, m.term, self.me, m.src, True, m.pre))
            if not m.pre:
                self.vote = m.src
                self.election_elapsed = 0
        else:
            self.host.send(VoteReply(self.id, self.term, self.me, m.src, False, m.pre))

    def _step_candidate(self, m: Message) -> None:
        if isinstance(m, VoteReply):
            if m.pre == (self.role == PRE_CANDIDATE):
                self.votes.setdefault(m.src, m.granted)
                self._poll()
        elif isinstance(m, (Append, Heartbeat, InstallSnapshot)):
            self.become_follower(m.term, m.src)
            self._step_follower(m)

    def _step_follower(self, m: Message) -> None:
        if isinstance(m, Append):
            self.election_elapsed = 0
            self.leader = m.src
            self._on_append(m)
        elif isinstance(m, Heartbeat):
            self.election_elapsed = 0
            self.leader = m.src
            self.commit = max(self.commit, min(m.commit, self.log.last_index))
            if m.quiesce and self.cfg.quiesce and m.commit == self.log.last_index and self.host.alive(m.src):
                if not self.quiescent:
                    self.quiescent = True
                    self.host.quiesced(self)
            self.host.send(HeartbeatReply(self.id, self.term, self.me, m.src, m.ctx))
        elif isinstance(m, InstallSnapshot):
            self.election_elapsed = 0
            self.leader = m.src
            self._on_snapshot(m)
        elif isinstance(m, TimeoutNow):
            if self.me in self.conf.voters:
                self.campaign(pre=False, transfer=True)

    def _on_append(self, m: Append) -> None:
        log = self.log
        if m.prev_index < self.commit:
            self.host.send(AppendReply(self.id, self.term, self.me, m.src, self.commit))
            return
        if log.term_at(m.prev_index) == m.prev_term:
            new_last = m.prev_index + len(m.entries)
            conf_touched = False
            for i, e in enumerate(m.entries):
                if log.term_at(e.index) != e.term:
                    if e.index <= log.last_index:
                        assert e.index > self.commit, "a committed entry conflicts"
                        conf_touched = log.last_conf_index >= e.index
                        log.truncate_from(e.index)
                    for e2 in m.entries[i:]:
                        log.append(e2)
                        conf_touched = conf_touched or e2.data[0] == 1
                    if self.unstable_from is None or e.index < self.unstable_from:
                        self.unstable_from = e.index
                    if self.stable >= e.index:
                        self.stable = e.index - 1
                    break
            if conf_touched:
                self._conf_applied()
            self.commit = max(self.commit, min(m.commit, new_last))
            self.host.send(AppendReply(self.id, self.term, self.me, m.src, new_last))
        else:
            hint = log.find_conflict_by_term(min(m.prev_index, log.last_index), m.prev_term)
            self.host.send(AppendReply(
                self.id, self.term, self.me, m.src, m.prev_index, True, hint, log.term_at(hint) or 0,
            ))

    def _on_snapshot(self, m: InstallSnapshot) -> None:
        s = m.snapshot
        if s.index <= self.commit:
            self.host.send(AppendReply(self.id, self.term, self.me, m.src, self.commit))
            return
        if self.log.term_at(s.index) == s.term:
            # We already hold the entry: the snapshot only tells us it is committed.
            self.commit = s.index
        else:
            self.log.reset(s)
            self.commit = s.index
            self.stable = s.index
            self.unstable_from = None
            self.snap_to_persist = s
            self.snap_replaces_log = True
            self.snap_to_install = s
            self.applied = s.index
            self._conf_applied()
        self.host.send(AppendReply(self.id, self.term, self.me, m.src, self.log.last_index))

    def _step_leader(self, m: Message) -> None:
        pr = self.progress.get(m.src)
        if pr is None:
            return
        if isinstance(m, AppendReply):
            pr.recent_active = True
            if m.reject:
                self._on_reject(m, pr)
            else:
                self._on_accept(m, pr)
        elif isinstance(m, HeartbeatReply):
            pr.recent_active = True
            pr.probe_sent = False
            if m.ctx > pr.read_ack:
                pr.read_ack = m.ctx
                self._release_reads()
            if pr.match < self.log.last_index:
                pr.stall += 1
                if pr.state == REPLICATE and pr.stall >= 2:
                    # Appends (or their replies) were lost: resend from what is known.
                    pr.become_probe()
                if pr.state != SNAPSHOT:
                    self._send_append(m.src)

    def _on_reject(self, m: AppendReply, pr: Progress) -> None:
        if pr.state == REPLICATE:
            if m.index <= pr.match:
                return  # stale
            pr.become_probe()
        elif pr.state == PROBE:
            if pr.next - 1 != m.index:
                return  # stale
            probe = self.log.find_conflict_by_term(m.hint_index, m.hint_term) if m.hint_term else m.hint_index
            pr.next = max(min(m.index, probe + 1), pr.match + 1)
            pr.probe_sent = False
        else:
            return
        self._send_append(m.src)

    def _on_accept(self, m: AppendReply, pr: Progress) -> None:
        if m.index > pr.match:
            pr.match = m.index
            pr.stall = 0
            self.idle_ticks = 0
            if pr.state == PROBE:
                pr.become_replicate()
            elif pr.state == SNAPSHOT:
                if pr.match >= pr.pending_snapshot:
                    pr.become_replicate()
            else:
                infl = pr.inflight
                while infl and infl[0] <= m.index:
                    infl.popleft()
            if pr.next <= pr.match:
                pr.next = pr.match + 1
            if self._maybe_commit():
                self._broadcast_append()
            else:
                while self._send_append(m.src, empty=False):
                    pass
            if m.src == self.transfer_target and pr.match == self.log.last_index:
                self.host.send(TimeoutNow(self.id, self.term, self.me, m.src))
        else:
            pr.probe_sent = False
            if pr.next <= pr.match:
                pr.next = pr.match + 1
            if pr.state == PROBE:
                self._send_append(m.src)

    def _maybe_commit(self) -> bool:
        voters = self.conf.voters
        matches = sorted(
            (self.stable if v == self.me else (self.progress[v].match if v in self.progress else 0)
             for v in voters),
            reverse=True,
        )
        if not matches:
            return False
        idx = matches[self._quorum() - 1]
        if idx > self.commit and self.log.term_at(idx) == self.term:
            self.commit = idx
            self._after_commit()
            return True
        return False

    def _after_commit(self) -> None:
        if self.reads_waiting and self._committed_in_term():
            waiting, self.reads_waiting = self.reads_waiting, []
            for ctx in waiting:
                self._queue_read(ctx)
        if self.me not in self.conf.voters and self.commit >= self.log.last_conf_index:
            # Our own removal is committed: hand over to the most caught-up voter and step down.
            # Sorted first: among equally caught-up voters a frozenset's order would pick by
            # PYTHONHASHSEED, and a seeded simulation must replay the same hand-over.
            best = max(sorted(self.conf.voters),
                       key=lambda v: self.progress[v].match if v in self.progress else -1)
            self._broadcast_append()
            self.host.send(TimeoutNow(self.id, self.term, self.me, best))
            self.become_follower(self.term, None)

    # ------------------------------------------------------------------ sending

    def _send_append(self, to: str, empty: bool = True) -> bool:
        """Send what `to` needs next if flow control allows; True if entries went out."""
        pr = self.progress[to]
        if pr.state == SNAPSHOT:
            return False
        if pr.state == PROBE and pr.probe_sent:
            return False
        if pr.state == REPLICATE and len(pr.inflight) >= self.cfg.max_inflight:
            return False
        log = self.log
        prev = pr.next - 1
        prev_term = log.term_at(prev)
        if prev_term is None:
            if prev > log.last_index:
                pr.next = log.last_index + 1
                return False
            # Compacted away: the follower needs the snapshot.
            pr.become_snapshot(log.snap_index)
            self.host.send(InstallSnapshot(self.id, self.term, self.me, to, log.snapshot))
            return False
        hi = min(log.last_index + 1, pr.next + self.cfg.max_append_entries)
        entries = log.slice(pr.next, hi) if hi > pr.next else []
        if not entries and not empty:
            return False
        self.host.send(Append(self.id, self.term, self.me, to, prev, prev_term, tuple(entries), self.commit))
        if pr.state == REPLICATE:
            if entries:
                pr.next = entries[-1].index + 1
                pr.inflight.append(entries[-1].index)
        else:
            pr.probe_sent = True
        return bool(entries)

    def _broadcast_append(self, empty: bool = True) -> None:
        for peer in self.progress:
            if self._send_append(peer, empty):
                while self._send_append(peer, empty=False):
                    pass

    def _broadcast_heartbeat(self, quiesce: bool = False) -> None:
        ctx = self.read_seq
        for peer, pr in self.progress.items():
            self.host.send(Heartbeat(self.id, self.term, self.me, peer, min(pr.match, self.commit), ctx, quiesce))
        if not self.progress:
            self._release_reads()

    # ------------------------------------------------------------------ ready / advance

    def persisted(self, stable: int, hs: HardState) -> None:
        """The driver made the log through `stable` and `hs` durable."""
        self.persisted_hs = hs
        if stable > self.stable:
            self.stable = stable
            if self.role == LEADER and self._maybe_commit():
                self._broadcast_append()
