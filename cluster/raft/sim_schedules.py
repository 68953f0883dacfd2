"""Scripted fault schedules: the shapes random faults reach too rarely to be a proof.

`Figure8Schedule` plays Figure 8 of the Raft paper (§5.4.2) on one group of
five voters, over and over, with partitions alone:

1. split:     the leader S1 and one follower S2 are cut off from the other
              three; a client's entry E reaches S1 and S2 only. The three
              elect X, which is isolated the moment it leads, so its own
              first entry (at E's index, in a later term) stays on X alone.
2. return:    S1, S2 and the two others (Y, Z) are joined, X stays out. S1 or
              S2 is elected (their logs are the more up to date) and
              replicates E, an entry of an earlier term, to Y or Z. The moment
              E sits on a quorum while the new leader's own first entry does
              not, the new leader is cut off: E is on a quorum but not
              committed (§5.4.2 forbids counting replicas of an earlier term).
3. overwrite: X, Y and Z are joined; X's log ends in a later term than E, so
              X is elected and overwrites E on Y and Z. Correct, since E was
              never committed; a core that committed E has lost a committed
              entry, and the invariants report it when X is elected.

Then everything heals and the next round starts. A phase that does not
progress in `PHASE_LIMIT_ELECTIONS` election timeouts (a crash, a message
lost) heals and starts over. The schedule reads roles, logs and progress; it
never reads the commit index of the leader it is testing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .group import LEADER, Proposed

if TYPE_CHECKING:
    from .sim import Sim, SimNode

PHASE_LIMIT_ELECTIONS = 10


class Figure8Schedule:
    def __init__(self, sim: "Sim", gid: str) -> None:
        self.sim = sim
        self.gid = gid
        self.phase = "settle"
        self.since = sim.now
        self.s1 = self.s2 = self.x = self.new_leader = ""
        self.others: list[str] = []
        self.index = 0
        self.rounds = 0  # rounds played to the end (tests assert the schedule really happens)
        self.shapes = 0  # times an earlier term's entry was caught on a quorum without the leader's own

    def step(self) -> None:
        sim = self.sim
        if sim.now - self.since > PHASE_LIMIT_ELECTIONS * sim.cfg.election_ticks:
            self._start_over()
            return
        getattr(self, "_" + self.phase)()

    # ------------------------------------------------------------------ phases

    def _settle(self) -> None:
        sim = self.sim
        leader = sim.leader_of(self.gid)
        if leader is None:
            return
        g = leader.raft.groups[self.gid]
        voters = sorted(g.conf.voters)
        if len(voters) != 5 or g.conf.learners or not all(sim.nodes[v].up for v in voters):
            return
        if g.log.term_at(g.log.last_index) != g.term or sim.quorum_match(g) < g.log.last_index:
            return  # still settling its own term
        self.s1 = leader.id
        rest = [v for v in voters if v != self.s1]
        self.s2 = sim.rng.choice(rest)
        self.others = [v for v in rest if v != self.s2]
        self._cut({self.s1, self.s2}, set(self.others))
        r = sim.propose(self.gid, to=leader)
        if not isinstance(r, Proposed):
            self._start_over()
            return
        self.index = r.index
        self.x = ""
        self._go("split")

    def _split(self) -> None:
        sim = self.sim
        if not self.x:
            for nid in self.others:
                n = sim.nodes[nid]
                if n.up and n.raft.groups[self.gid].role == LEADER:
                    self.x = nid
                    self._cut({self.s1, self.s2}, {self.x}, set(self.others) - {self.x})
                    sim.propose(self.gid, to=n)
        s1 = self._node(self.s1)
        if s1 is None or not self.x:
            return
        g = s1.raft.groups[self.gid]
        pr = g.progress.get(self.s2)
        if g.role != LEADER or (pr is not None and pr.match >= self.index):
            held = self._node(self.s2)
            if held is not None and held.raft.groups[self.gid].log.term_at(self.index) == g.log.term_at(self.index):
                self._cut({self.s1, self.s2} | (set(self.others) - {self.x}), {self.x})
                self._go("return")

    def _return(self) -> None:
        sim = self.sim
        x = self._node(self.x)
        if x is None:
            return
        x_term = x.raft.groups[self.gid].term
        for nid in (self.s1, self.s2):
            n = self._node(nid)
            if n is None:
                continue
            g = n.raft.groups[self.gid]
            if g.role != LEADER or g.term <= x_term:
                continue
            on_quorum = sim.quorum_match(g)
            if on_quorum >= self.index and g.log.term_at(on_quorum) != g.term:
                # The Figure 8 moment: an earlier term's entry on a quorum, the leader's own not.
                self.shapes += 1
                self.new_leader = nid
                other = self.s2 if nid == self.s1 else self.s1
                self._cut({self.x} | (set(self.others) - {self.x}), {nid}, {other})
                self._go("overwrite")
                return

    def _overwrite(self) -> None:
        sim = self.sim
        for nid in [self.x] + self.others:
            n = self._node(nid)
            if n is not None and n.raft.groups[self.gid].role == LEADER \
                    and n.raft.groups[self.gid].term > self._term_of(self.new_leader):
                self.rounds += 1
                self._start_over()
                return

    # ------------------------------------------------------------------ helpers

    def _node(self, nid: str) -> "SimNode | None":
        n = self.sim.nodes[nid]
        return n if n.up and self.gid in n.raft.groups else None

    def _term_of(self, nid: str) -> int:
        n = self._node(nid)
        return n.raft.groups[self.gid].term if n is not None else 0

    def _cut(self, *sides: set[str]) -> None:
        """Partition the nodes into `sides`; a node in none of them is alone."""
        side_of = {nid: i for i, side in enumerate(sides) for nid in side}
        blocked = self.sim.blocked
        blocked.clear()
        for a in self.sim.nodes:
            for b in self.sim.nodes:
                if a != b and side_of.get(a, a) != side_of.get(b, b):
                    blocked.add((a, b))

    def _go(self, phase: str) -> None:
        self.phase = phase
        self.since = self.sim.now

    def _start_over(self) -> None:
        self.sim.blocked.clear()
        self._go("settle")
