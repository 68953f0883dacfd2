"""The messages Raft groups exchange, and the per-peer envelope that carries them.

Every group message names its group, the sender's term, the sender and the
receiver. All messages one node sends to another during one driver cycle
travel in a single `PeerBatch`, so a node hosting thousands of groups sends
one frame per peer per cycle, not one per group.

`to_wire()` / `from_wire()` turn a batch into plain lists of ints, strings and
bytes that msgpack encodes as is (`cluster/peer.py` ships them); the first
element of each message list is its kind tag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from storage.interface import LogEntry, Snapshot


@dataclass(frozen=True, slots=True)
class Append:
    """Leader → follower: entries after (prev_index, prev_term), and the leader's commit."""

    group: str
    term: int
    src: str
    dst: str
    prev_index: int
    prev_term: int
    entries: tuple[LogEntry, ...]
    commit: int


@dataclass(frozen=True, slots=True)
class AppendReply:
    """Follower → leader.

    Accepted: `index` is the last index the follower now holds in agreement
    with the leader. Rejected: `index` is the rejected `prev_index`, and
    (`hint_index`, `hint_term`) let the leader skip a whole conflicting term
    at once (fast backtracking).
    """

    group: str
    term: int
    src: str
    dst: str
    index: int
    reject: bool = False
    hint_index: int = 0
    hint_term: int = 0


@dataclass(frozen=True, slots=True)
class Vote:
    """(Pre-)candidate → voter. A pre-vote carries the term the candidate would campaign at."""

    group: str
    term: int
    src: str
    dst: str
    last_index: int
    last_term: int
    pre: bool = False
    transfer: bool = False  # campaign ordered by TimeoutNow: ignores leader leases


@dataclass(frozen=True, slots=True)
class VoteReply:
    group: str
    term: int
    src: str
    dst: str
    granted: bool
    pre: bool = False


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Leader → follower. `ctx` is the leader's latest ReadIndex sequence; `quiesce` asks an
    idle, fully replicated follower to stop its election timer."""

    group: str
    term: int
    src: str
    dst: str
    commit: int
    ctx: int = 0
    quiesce: bool = False


@dataclass(frozen=True, slots=True)
class HeartbeatReply:
    group: str
    term: int
    src: str
    dst: str
    ctx: int = 0


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """Leader → follower whose next entry is compacted away. `snapshot.data` carries the configuration."""

    group: str
    term: int
    src: str
    dst: str
    snapshot: Snapshot


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Leader → chosen successor: campaign now (leadership transfer)."""

    group: str
    term: int
    src: str
    dst: str


Message = Append | AppendReply | Vote | VoteReply | Heartbeat | HeartbeatReply | InstallSnapshot | TimeoutNow


@dataclass(frozen=True, slots=True)
class PeerBatch:
    """Everything one node sends another in one cycle.

    `incarnation` changes each time the sender restarts; any batch, even an empty
    one, proves the sender alive (this is the node-level heartbeat that lets idle
    groups stay silent).
    """

    src: str
    dst: str
    incarnation: int
    messages: tuple[Message, ...] = ()

    def to_wire(self) -> list[Any]:
        return [self.src, self.dst, self.incarnation, [message_to_wire(m) for m in self.messages]]

    @staticmethod
    def from_wire(wire: list[Any] | tuple[Any, ...]) -> "PeerBatch":
        src, dst, incarnation, messages = wire
        return PeerBatch(src, dst, incarnation, tuple(message_from_wire(m) for m in messages))


_TAGS: dict[type, int] = {
    Append: 0,
    AppendReply: 1,
    Vote: 2,
    VoteReply: 3,
    Heartbeat: 4,
    HeartbeatReply: 5,
    InstallSnapshot: 6,
    TimeoutNow: 7,
}


def message_to_wire(m: Message) -> list[Any]:
    head = [_TAGS[type(m)], m.group, m.term, m.src, m.dst]
    if isinstance(m, Append):
        return head + [m.prev_index, m.prev_term, [[e.index, e.term, e.data] for e in m.entries], m.commit]
    if isinstance(m, AppendReply):
        return head + [m.index, m.reject, m.hint_index, m.hint_term]
    if isinstance(m, Vote):
        return head + [m.last_index, m.last_term, m.pre, m.transfer]
    if isinstance(m, VoteReply):
        return head + [m.granted, m.pre]
    if isinstance(m, Heartbeat):
        return head + [m.commit, m.ctx, m.quiesce]
    if isinstance(m, HeartbeatReply):
        return head + [m.ctx]
    if isinstance(m, InstallSnapshot):
        s = m.snapshot
        return head + [s.index, s.term, s.data]
    if isinstance(m, TimeoutNow):
        return head
    raise TypeError(f"not a raft message: {m!r}")


def message_from_wire(w: list[Any] | tuple[Any, ...]) -> Message:
    tag, group, term, src, dst, *rest = w
    if tag == 0:
        prev_index, prev_term, entries, commit = rest
        return Append(group, term, src, dst, prev_index, prev_term,
                      tuple(LogEntry(i, t, bytes(d)) for i, t, d in entries), commit)
    if tag == 1:
        return AppendReply(group, term, src, dst, *rest)
    if tag == 2:
        return Vote(group, term, src, dst, *rest)
    if tag == 3:
        return VoteReply(group, term, src, dst, *rest)
    if tag == 4:
        return Heartbeat(group, term, src, dst, *rest)
    if tag == 5:
        return HeartbeatReply(group, term, src, dst, *rest)
    if tag == 6:
        index, sterm, data = rest
        return InstallSnapshot(group, term, src, dst, Snapshot(index, sterm, bytes(data)))
    if tag == 7:
        return TimeoutNow(group, term, src, dst)
    raise ValueError(f"unknown raft message tag {tag}")
