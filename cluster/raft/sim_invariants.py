"""The safety properties the simulation holds every run to, checked after every step.

Raft's safety argument (Ongaro's thesis §3.6) rests on five properties; each
is checked here as soon as the step that could break it has happened, and
each check costs only what changed in that step, so checking every step stays
cheap:

* Election safety: at most one leader per term. Every up node's role is
  looked at after every step (one dict lookup per leader).
* Log matching: two logs holding an entry with the same index and term agree
  on every entry up to it. Checked inductively: every entry a node wrote in
  the step (its Ready's appended entries, which is every change a core makes
  to its log) must have the same payload and the same predecessor term as any
  entry with that (index, term) ever seen on any node. If all (index, term)
  pairs agree on payload and predecessor, any two logs agree on their common
  prefix.
* Leader completeness: a leader holds every entry committed in earlier terms.
  Checked when a node is first seen leading a term (against everything
  committed so far) and when an entry is first seen committed (against every
  leader of a later term). "Committed in term U" is the term of the node the
  commit is first seen on: a node learns of a commit only from a leader of
  the committing term or a later one, so that term is never below U, and a
  deposed leader of a term between the entry's own and U (say paused since
  before U began) is rightly not held to it.
* No acknowledged proposal lost: an entry whose proposer was told it
  committed is in the log of every leader elected after that; the same check,
  on the acknowledged entries, with its own message.
* State machine safety: no two nodes commit or apply different entries at one
  index. A node's commit index is read after every step and the entries it
  newly covers are compared with what any node committed there; applied
  entries and restored snapshots are compared too.

Plus ReadIndex freshness: a read is served at an index at least as high as
every entry acknowledged before the read was asked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from .group import LEADER

if TYPE_CHECKING:
    from .group import ReadState
    from .log import RaftLog
    from .sim import SimNode


class Invariants:
    """What the checks know about a run: every entry seen, committed and acknowledged."""

    def __init__(self, fail: Callable[[str], None], group_ids: list[str]) -> None:
        self.fail = fail
        self.leaders: dict[tuple[str, int], str] = {}
        self.leader_seen: dict[tuple[str, str], int] = {}
        # (index, term) → (payload, term of the entry before it, or None if unknown).
        self.entries: dict[str, dict[tuple[int, int], tuple[bytes, int | None]]] = {g: {} for g in group_ids}
        self.committed: dict[str, dict[int, tuple[int, bytes]]] = {g: {} for g in group_ids}
        # index → the term of the node the commit was first seen on (at least the committing term).
        self.committed_in: dict[str, dict[int, int]] = {g: {} for g in group_ids}
        self.commit_seen: dict[tuple[str, str], int] = {}
        self.acked: dict[str, dict[int, tuple[int, bytes]]] = {g: {} for g in group_ids}
        self.acked_max: dict[str, int] = {g: 0 for g in group_ids}
        self.reads: dict[object, tuple[str, str, int]] = {}

    # ------------------------------------------------------------------ events

    def restarted(self, node: str) -> None:
        """A restarted node's commit index is read again from zero: its recovered log is checked."""
        for key in [k for k in self.commit_seen if k[0] == node]:
            del self.commit_seen[key]

    def wrote(self, node: str, gid: str, log: "RaftLog", first: int) -> None:
        """`node` wrote entries of `gid` from `first` on: they must agree with every log seen."""
        known = self.entries[gid]
        lo = max(first, log.snap_index + 1)
        for index in range(lo, log.last_index + 1):
            e = log.entry(index)
            prev = log.term_at(index - 1)
            seen = known.get((index, e.term))
            if seen is None:
                known[(index, e.term)] = (e.data, prev)
                continue
            data, seen_prev = seen
            if data != e.data:
                self.fail(f"log matching: {node} holds {gid}[{index}] term {e.term} = {e.data!r}, "
                          f"another log holds {data!r} there in the same term")
            if prev is not None and seen_prev is not None and prev != seen_prev:
                self.fail(f"log matching: {node} holds {gid}[{index}] term {e.term} after an entry of term "
                          f"{prev}, another log holds it after one of term {seen_prev}")
            if seen_prev is None and prev is not None:
                known[(index, e.term)] = (data, prev)

    def acknowledged(self, gid: str, index: int, term: int, data: bytes) -> None:
        self.acked[gid][index] = (term, data)
        if index > self.acked_max[gid]:
            self.acked_max[gid] = index

    def read_asked(self, ctx: object, node: str, gid: str) -> None:
        self.reads[ctx] = (node, gid, self.acked_max[gid])

    def read_served(self, node: str, rs: "ReadState") -> None:
        r = self.reads.pop(rs.ctx, None)
        if r is None or not rs.ok:
            return
        if rs.index < r[2]:
            self.fail(f"read index: {node} served a read of {rs.group} at {rs.index}, but {r[2]} was "
                      f"acknowledged before the read was asked")

    def applied(self, node: "SimNode", gid: str, index: int, term: int, data: bytes, up: list["SimNode"]) -> None:
        self._committed(node, gid, index, term, data, "applies", up)

    # ------------------------------------------------------------------ after every step

    def check_step(self, up: list["SimNode"]) -> None:
        for n in up:
            for gid, g in n.raft.groups.items():
                self._observe_commit(n, gid, up)
                if g.role == LEADER:
                    holder = self.leaders.setdefault((gid, g.term), n.id)
                    if holder != n.id:
                        self.fail(f"election safety: {holder} and {n.id} both lead {gid} in term {g.term}")
                    if self.leader_seen.get((n.id, gid)) != g.term:
                        self.leader_seen[(n.id, gid)] = g.term
                        self._check_new_leader(n, gid)

    def _observe_commit(self, n: "SimNode", gid: str, up: list["SimNode"]) -> None:
        g = n.raft.groups[gid]
        key = (n.id, gid)
        seen = self.commit_seen.get(key, 0)
        if g.commit <= seen:
            return
        log = g.log
        for index in range(max(seen, log.snap_index) + 1, g.commit + 1):
            e = log.entry(index)
            self._committed(n, gid, index, e.term, e.data, "commits", up)
        self.commit_seen[key] = g.commit

    def _committed(self, node: "SimNode", gid: str, index: int, term: int, data: bytes, verb: str,
                   up: list["SimNode"]) -> None:
        known = self.committed[gid].get(index)
        if known is None:
            self.committed[gid][index] = (term, data)
            committed_in = self.committed_in[gid][index] = node.raft.groups[gid].term
            # Leaders of later terms, elected before this commit became visible, must hold it too.
            for m in up:
                g = m.raft.groups.get(gid)
                if g is not None and g.role == LEADER and g.term > committed_in:
                    self._check_holds(m, gid, index, term, data, "leader completeness")
        elif known != (term, data):
            self.fail(f"state machine safety: {node.id} {verb} {gid}[{index}] = {term}/{data!r}, "
                      f"another node committed {known[0]}/{known[1]!r}")

    def _check_new_leader(self, n: "SimNode", gid: str) -> None:
        term = n.raft.groups[gid].term
        committed_in = self.committed_in[gid]
        for index, (t, data) in self.acked[gid].items():
            if committed_in[index] < term:
                self._check_holds(n, gid, index, t, data, "acknowledged proposal lost")
        for index, (t, data) in self.committed[gid].items():
            if committed_in[index] < term:
                self._check_holds(n, gid, index, t, data, "leader completeness")

    def _check_holds(self, m: "SimNode", gid: str, index: int, term: int, data: bytes, what: str) -> None:
        g = m.raft.groups[gid]
        log = g.log
        if index <= log.snap_index:
            return  # compacted: the snapshot's state machine check covers it
        t = log.term_at(index)
        if t != term or log.entry(index).data != data:
            self.fail(f"{what}: leader {m.id} of {gid} term {g.term} lacks committed entry {index} "
                      f"(term {term}), has term {t}")

    # ------------------------------------------------------------------ a full pass

    def check_logs(self, up: list["SimNode"], group_ids: list[str]) -> None:
        """Every log of every up node against everything seen (the incremental check's backstop)."""
        for n in up:
            for gid in group_ids:
                g = n.raft.groups.get(gid)
                if g is not None:
                    self.wrote(n.id, gid, g.log, g.log.snap_index + 1)
