"""One group's Raft log in memory: a snapshot point followed by entries, and the entry encoding.

Entries after the snapshot are kept in a list; everything up to the snapshot
is gone (compacted). The log also tracks the configurations its entries
carry, because a configuration takes effect as soon as it is appended
(single-server change, Raft thesis §4.1) and must be undone when a conflicting
suffix is truncated.

Entry payloads start with one kind byte so the core can tell application
entries from the leader's no-op and from configuration changes; the driver
receives the payload without it (`entry_payload`).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from storage.interface import LogEntry, Snapshot

NORMAL = 0
CONF = 1
NOOP = 2

_NORMAL_PREFIX = bytes([NORMAL])
NOOP_DATA = bytes([NOOP])


@dataclass(frozen=True, slots=True)
class Conf:
    """Voting members and learners (non-voting members that receive the log)."""

    voters: frozenset[str] = frozenset()
    learners: frozenset[str] = frozenset()

    @property
    def members(self) -> frozenset[str]:
        return self.voters | self.learners

    def encode(self) -> list[list[str]]:
        return [sorted(self.voters), sorted(self.learners)]

    @staticmethod
    def decode(raw: list[list[str]] | tuple) -> "Conf":
        voters, learners = raw
        return Conf(frozenset(voters), frozenset(learners))


def normal_data(payload: bytes) -> bytes:
    return _NORMAL_PREFIX + payload


def conf_data(conf: Conf) -> bytes:
    return bytes([CONF]) + msgpack.packb(conf.encode())


def entry_payload(e: LogEntry) -> bytes | None:
    """The application payload of a committed entry, or None for the core's own entries."""
    return e.data[1:] if e.data[0] == NORMAL else None


def entry_conf(e: LogEntry) -> Conf:
    assert e.data[0] == CONF
    return Conf.decode(msgpack.unpackb(e.data[1:]))


def snapshot_data(conf: Conf, app_data: bytes) -> bytes:
    """A Raft snapshot's bytes: the configuration at its index and the state machine's snapshot."""
    return msgpack.packb([conf.encode(), app_data])


def split_snapshot(data: bytes) -> tuple[Conf, bytes]:
    conf, app = msgpack.unpackb(data)
    return Conf.decode(conf), app


class RaftLog:
    """Entries (snap_index, last_index], the snapshot point, and configuration history."""

    __slots__ = ("snapshot", "snap_index", "snap_term", "snap_conf", "entries", "confs")

    def __init__(self, snapshot: Snapshot, entries: list[LogEntry]) -> None:
        self.snapshot = snapshot
        self.snap_index = snapshot.index
        self.snap_term = snapshot.term
        self.snap_conf, _ = split_snapshot(snapshot.data)
        self.entries: list[LogEntry] = []
        self.confs: list[tuple[int, Conf]] = []  # configuration entries after the snapshot
        for e in entries:
            if e.index > self.snap_index:
                self.append(e)

    @property
    def last_index(self) -> int:
        return self.entries[-1].index if self.entries else self.snap_index

    @property
    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snap_term

    @property
    def conf(self) -> Conf:
        return self.confs[-1][1] if self.confs else self.snap_conf

    @property
    def last_conf_index(self) -> int:
        return self.confs[-1][0] if self.confs else self.snap_index

    def term_at(self, index: int) -> int | None:
        """The term of the entry at `index`, or None if compacted away or beyond the end."""
        off = index - self.snap_index
        if off == 0:
            return self.snap_term
        if off < 0 or off > len(self.entries):
            return None
        return self.entries[off - 1].term

    def entry(self, index: int) -> LogEntry:
        return self.entries[index - self.snap_index - 1]

    def slice(self, lo: int, hi: int) -> list[LogEntry]:
        """Entries lo <= index < hi; lo must be after the snapshot."""
        base = self.snap_index + 1
        assert lo >= base, (lo, base)
        return self.entries[lo - base : hi - base]

    def append(self, e: LogEntry) -> None:
        assert e.index == self.last_index + 1, (e.index, self.last_index)
        self.entries.append(e)
        if e.data[0] == CONF:
            self.confs.append((e.index, entry_conf(e)))

    def truncate_from(self, index: int) -> None:
        """Drop entries with index >= `index` (a conflicting suffix)."""
        assert index > self.snap_index
        del self.entries[index - self.snap_index - 1 :]
        while self.confs and self.confs[-1][0] >= index:
            self.confs.pop()

    def conf_at(self, index: int) -> Conf:
        conf = self.snap_conf
        for i, c in self.confs:
            if i > index:
                break
            conf = c
        return conf

    def compact(self, snapshot: Snapshot) -> None:
        """Replace the prefix through `snapshot.index` (which must be in this log) by the snapshot."""
        index = snapshot.index
        assert self.snap_index < index <= self.last_index
        self.snap_conf, _ = split_snapshot(snapshot.data)
        del self.entries[: index - self.snap_index]
        self.confs = [(i, c) for i, c in self.confs if i > index]
        self.snapshot = snapshot
        self.snap_index = index
        self.snap_term = snapshot.term

    def reset(self, snapshot: Snapshot) -> None:
        """Replace the whole log by `snapshot` (a follower installing a leader's snapshot)."""
        self.snapshot = snapshot
        self.snap_index = snapshot.index
        self.snap_term = snapshot.term
        self.snap_conf, _ = split_snapshot(snapshot.data)
        self.entries = []
        self.confs = []

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """The largest index <= `index` whose term is <= `term` (or the snapshot point)."""
        while index > self.snap_index:
            t = self.term_at(index)
            if t is not None and t <= term:
                break
            index -= 1
        return index

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft §5.4.1: is a candidate's log at least as up to date as ours?"""
        return last_term > self.last_term or (last_term == self.last_term and last_index >= self.last_index)
