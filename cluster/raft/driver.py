"""The trio shell around a `RaftNode`: clock, storage, transport and state machines.

One task (`run`) owns the node. Each cycle it takes the requests queued by
other tasks (proposals, reads, membership changes), ticks when a tick is due,
steps the peer batches received, then carries out one `Ready` in the order
Raft requires:

1. write `ready.batch` through the store — one write and one fsync for every
   group of the node (pass a `storage.writer.GroupCommitWriter.write` as
   `write` to merge it with other writers' batches); a leader's appends of a
   term already durable here leave before the write, so the followers write
   while the leader does (Raft thesis §10.2.1: the leader counts its own log
   towards a commit only once `advance` says it is durable, so this is safe);
2. only then send the rest of `ready.messages`, one `PeerBatch` per peer node,
   through the `Transport` (votes and acknowledgements must never leave before
   the state they promise is durable);
3. restore snapshots and apply committed entries to each group's
   `StateMachine`, resolving the proposals and reads waiting on them;
4. `advance`.

Proposals return awaitables resolved when the entry is applied (with the
state machine's result) or with an error value: `NotLeader` (with the leader
hint), `Refused`, or `Lost` (another entry won that index).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol

import trio

from storage.interface import Store, WriteBatch

from .group import ConfChange, NotLeader, Proposed, Refused
from .log import entry_payload
from .messages import Append, PeerBatch
from .node import GroupStatus, RaftNode


class Transport(Protocol):
    """Carries peer batches; delivery may fail silently (Raft retries)."""

    def send(self, batch: PeerBatch) -> None:
        """Queue `batch` for its destination node without blocking."""

    @property
    def received(self) -> trio.abc.ReceiveChannel[PeerBatch]:
        """Batches other nodes sent to this one."""


class StateMachine(Protocol):
    def apply(self, index: int, data: bytes) -> Any: ...
    def snapshot(self) -> bytes: ...
    def restore(self, data: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class Applied:
    group: str
    index: int
    result: Any


@dataclass(frozen=True, slots=True)
class Lost:
    """The proposal will never be applied (or its outcome cannot be known here)."""

    group: str
    index: int
    reason: str


class _Waiter:
    __slots__ = ("event", "value")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.value: Any = None

    def resolve(self, value: Any) -> None:
        if not self.event.is_set():
            self.value = value
            self.event.set()

    async def wait(self) -> Any:
        await self.event.wait()
        return self.value


class _Callback:
    """A `_Waiter` for `propose_soon`: calls its function with the outcome instead of waking a task."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Any], None] | None) -> None:
        self.fn = fn

    def resolve(self, value: Any) -> None:
        fn, self.fn = self.fn, None
        if fn is not None:
            fn(value)


class RaftDriver:
    def __init__(
        self,
        node: RaftNode,
        store: Store,
        transport: Transport,
        *,
        tick_interval: float = 0.05,
        snapshot_every: int = 10_000,
        write: Callable[[WriteBatch], Awaitable[None]] | None = None,
    ) -> None:
        self.node = node
        self.store = store
        self.transport = transport
        self.tick_interval = tick_interval
        self.snapshot_every = snapshot_every
        self._write = write or self._write_in_thread
        self.machines: dict[str, StateMachine] = {}
        self.applied: dict[str, int] = {}
        self._requests: list[tuple[Callable[[], Any], _Waiter]] = []
        self._proposals: dict[tuple[str, int], tuple[int, _Waiter]] = {}
        self._reads: dict[int, tuple[str, Callable[[StateMachine], Any], _Waiter]] = {}
        self._reads_ready: dict[str, list[tuple[int, Callable[[StateMachine], Any], _Waiter]]] = {}
        self._read_seq = 0
        self._kick = trio.Event()
        self._inbox: list[PeerBatch] = []
        # group -> open `AppliedResults` watches (see `watch_results`).
        self._watches: dict[str, list[AppliedResults]] = {}
        self._applied_changed = trio.Event()
        self.cycles = 0
        # Groups whose role, term, leader or members changed since `take_changes` (see there).
        self._seen: dict[str, tuple[Any, ...]] = {}
        self._changed: dict[str, None] = {}
        self._changes = trio.Event()

    async def _write_in_thread(self, batch: WriteBatch) -> None:
        await trio.to_thread.run_sync(lambda: self.store.write(batch, sync=True))

    # ------------------------------------------------------------------ groups

    def add_group(self, group: str, machine: StateMachine, voters: tuple[str, ...] = (),
                  learners: tuple[str, ...] = ()) -> None:
        """Host `group` here: restored from the store if it has it, else created with these members."""
        self.machines[group] = machine
        st = self.store
        if group in st.groups():
            entries = st.entries(group, st.first_index(group), st.last_index(group) + 1)
            snap = self.node.restore_group(group, st.hard_state(group), st.snapshot(group), entries)
            if snap is not None:
                machine.restore(snap.data)
            self.applied[group] = snap.index if snap is not None else 0
        else:
            self.node.create_group(group, voters, learners)
            self.applied[group] = 0
        self._kick.set()

    def remove_group(self, group: str) -> None:
        """Stop hosting `group` here and delete its log and state from the store (this node
        left the group, or the group's queue is gone). Proposals waiting on it are lost."""
        def op() -> None:
            if group in self.node.groups:
                self.node.drop_group(group)
            self.machines.pop(group, None)
            self.applied.pop(group, None)
            for key in [k for k in self._proposals if k[0] == group]:
                _, w = self._proposals.pop(key)
                w.resolve(Lost(group, key[1], "the group is no longer hosted here"))

        self._requests.append((op, _Callback(None)))  # type: ignore[arg-type]
        self._kick.set()

    # ------------------------------------------------------------------ requests from other tasks

    async def _request(self, op: Callable[[], Any]) -> Any:
        w = _Waiter()
        self._requests.append((op, w))
        self._kick.set()
        return await w.wait()

    async def _until_applied(
        self, group: str, append: Callable[[], Proposed | NotLeader | Refused]
    ) -> Applied | NotLeader | Refused | Lost:
        """Run `append` (a proposal to `group`) in the loop; resolve once its entry is applied or lost."""
        w = _Waiter()

        def op() -> None:
            r = append()
            if isinstance(r, Proposed):
                self._proposals[(group, r.index)] = (r.term, w)
            else:
                w.resolve(r)

        self._requests.append((op, _Waiter()))
        self._kick.set()
        return await w.wait()

    async def propose(self, group: str, data: bytes) -> Applied | NotLeader | Refused | Lost:
        """Replicate `data`; returns once it is applied here, with the state machine's result."""
        return await self._until_applied(group, lambda: self.node.propose(group, data))

    def propose_soon(self, group: str, data: bytes,
                     done: Callable[[Applied | NotLeader | Refused | Lost], None]) -> None:
        """`propose` without a task: `done` is called once with the outcome, from the driver's
        loop, right after the entry is applied here (or once it is known it never will be).
        For callers that propose many entries per second (replicated queues): no task and
        no await per proposal, and outcomes arrive in log order."""
        w = _Callback(done)

        def op() -> None:
            r = self.node.propose(group, data)
            if isinstance(r, Proposed):
                self._proposals[(group, r.index)] = (r.term, w)  # type: ignore[assignment]
            else:
                w.resolve(r)

        self._requests.append((op, _Callback(None)))  # type: ignore[arg-type]
        self._kick.set()

    async def read(self, group: str, query: Callable[[StateMachine], Any]) -> Any:
        """Run `query` on the group's state machine, linearizably (ReadIndex on the leader)."""
        w = _Waiter()

        def op() -> None:
            self._read_seq += 1
            r = self.node.read_index(group, self._read_seq)
            if r is None:
                self._reads[self._read_seq] = (group, query, w)
            else:
                w.resolve(r)

        self._requests.append((op, _Waiter()))
        self._kick.set()
        return await w.wait()

    async def change_membership(self, group: str, change: ConfChange) -> Applied | NotLeader | Refused | Lost:
        return await self._until_applied(group, lambda: self.node.change_membership(group, change))

    async def transfer_leadership(self, group: str, target: str) -> NotLeader | Refused | None:
        return await self._request(lambda: self.node.transfer_leadership(group, target))

    @property
    def node_id(self) -> str:
        return self.node.id

    def status(self, group: str) -> "GroupStatus | None":
        """A snapshot of `group`'s role, term, leader and members here (None if not hosted).
        A read between cycles: the core is never mid-change when another task runs."""
        return self.node.status(group) if group in self.node.groups else None

    def leader(self, group: str) -> str | None:
        """The leader of `group` as this node knows it (None: unknown, or not hosted here).
        Cheap, for per-message routing, where `status` would build a whole snapshot."""
        g = self.node.groups.get(group)
        return g.leader if g is not None else None

    async def campaign(self, group: str) -> None:
        """Start an election for `group` now (a single-voter group elects itself at once)."""
        await self._request(lambda: self.node.campaign(group))

    def campaign_soon(self, group: str) -> None:
        """`campaign` without waiting: the election starts at the driver's next cycle, before
        any proposal made after this call."""
        def op() -> None:
            if group in self.node.groups:  # (removed meanwhile: nothing to elect)
                self.node.campaign(group)

        self._requests.append((op, _Callback(None)))  # type: ignore[arg-type]
        self._kick.set()

    async def wait_applied(self, group: str, index: int) -> None:
        """Until this node has applied `group` through `index` (entries or a snapshot)."""
        while self.applied.get(group, 0) < index:
            await self._applied_changed.wait()

    def watch_results(self, group: str) -> "AppliedResults":
        """Keep the results of `group`'s entries applied here from now until the watch is
        closed: a change proposed through another node's leader is applied here too, and
        its result here is the one to answer with (apply is deterministic)."""
        watch = AppliedResults(self, group)
        self._watches.setdefault(group, []).append(watch)
        return watch

    def _unwatch(self, watch: "AppliedResults") -> None:
        watches = self._watches.get(watch.group)
        if watches is not None and watch in watches:
            watches.remove(watch)
            if not watches:
                del self._watches[watch.group]

    # ------------------------------------------------------------------ the loop

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receive)
            task_status.started()
            next_tick = trio.current_time() + self.tick_interval
            while True:
                with trio.move_on_at(next_tick):
                    await self._kick.wait()
                self._kick = trio.Event()
                now = trio.current_time()
                if now >= next_tick:
                    self.node.tick()
                    next_tick = max(next_tick + self.tick_interval, now)
                await self.cycle()

    async def _receive(self) -> None:
        # Only queued here: the node must not change between `ready()` and `advance()`,
        # and the loop awaits the write in between.
        async for batch in self.transport.received:
            self._inbox.append(batch)
            self._kick.set()

    async def cycle(self) -> None:
        inbox, self._inbox = self._inbox, []
        for batch in inbox:
            self.node.step(batch)
        requests, self._requests = self._requests, []
        for op, w in requests:
            w.resolve(op())
        touched = list(self.node.dirty)
        rd = self.node.ready()
        self._note_changes(touched)
        if rd is None:
            return
        self.cycles += 1
        if rd.batch.ops:
            early, late = self._split_early(rd.messages)
            for b in early:
                self.transport.send(b)
            await self._write(rd.batch)
        else:
            late = rd.messages
        for b in late:
            self.transport.send(b)
        for group, snap in rd.snapshots.items():
            self.machines[group].restore(snap.data)
            self.applied[group] = snap.index
            for key in [k for k in self._proposals if k[0] == group and k[1] <= snap.index]:
                _, w = self._proposals.pop(key)
                w.resolve(Lost(group, key[1], "outcome unknown here: superseded by a snapshot"))
        for group, entries in rd.committed.items():
            sm = self.machines[group]
            watches = self._watches.get(group, ())
            for e in entries:
                payload = entry_payload(e)
                result = sm.apply(e.index, payload) if payload is not None else None
                for watch in watches:
                    watch.results[e.index] = result
                waiting = self._proposals.pop((group, e.index), None)
                if waiting is not None:
                    term, w = waiting
                    w.resolve(Applied(group, e.index, result) if term == e.term
                              else Lost(group, e.index, "another leader's entry was committed at this index"))
            applied = entries[-1].index
            self.applied[group] = applied
            self._serve_reads(group)
            if applied - self.node.groups[group].log.snap_index >= self.snapshot_every:
                self.node.compact(group, applied, sm.snapshot())
        for rs in rd.read_states:
            waiting_read = self._reads.pop(rs.ctx, None)  # type: ignore[arg-type]
            if waiting_read is None:
                continue
            group, query, w = waiting_read
            if not rs.ok:
                w.resolve(NotLeader(group, None))
                continue
            self._reads_ready.setdefault(group, []).append((rs.index, query, w))
            self._serve_reads(group)
        if rd.committed or rd.snapshots:
            self._applied_changed.set()
            self._applied_changed = trio.Event()
        self.node.advance(rd)
        if self.node.has_ready():
            self._kick.set()

    def _note_changes(self, groups: list[str]) -> None:
        """Of the groups that did something this cycle, those whose role, term, leader or
        members changed (cheap: only groups with work are looked at; a change without work,
        a leader deposed by check-quorum say, is seen by the watcher's periodic sweep)."""
        core = self.node.groups
        for gid in groups:
            g = core.get(gid)
            if g is None:
                continue
            conf = g.conf
            seen = (g.role, g.term, g.leader, conf.voters, conf.learners)
            if self._seen.get(gid) != seen:
                self._seen[gid] = seen
                self._changed[gid] = None
        if self._changed:
            self._changes.set()

    async def wait_changes(self, timeout: float) -> list[str]:
        """Groups whose role, term, leader or members changed since the last call (waiting
        for one up to `timeout` seconds; [] if none)."""
        if not self._changed:
            with trio.move_on_after(timeout):
                await self._changes.wait()
        changed, self._changed = list(self._changed), {}
        self._changes = trio.Event()
        return changed

    def _split_early(self, batches: list[PeerBatch]) -> tuple[list[PeerBatch], list[PeerBatch]]:
        """(what may leave before this cycle's write, what must wait for it). Early: a
        leader's `Append` of a term this node's store already holds as its group's term.
        An append of a term not yet durable waits: after a crash the node could lead that
        term again with a different log (a single-voter group elects itself in one cycle)."""
        groups = self.node.groups
        early: list[PeerBatch] = []
        late: list[PeerBatch] = []
        for b in batches:
            now: list[Any] = []
            later: list[Any] = []
            for m in b.messages:
                if type(m) is Append:
                    g = groups.get(m.group)
                    if g is not None and g.persisted_hs.term == m.term:
                        now.append(m)
                        continue
                later.append(m)
            if not now:
                late.append(b)
            elif not later:
                early.append(b)
            else:
                early.append(PeerBatch(b.src, b.dst, b.incarnation, tuple(now)))
                late.append(PeerBatch(b.src, b.dst, b.incarnation, tuple(later)))
        return early, late

    def _serve_reads(self, group: str) -> None:
        pending = self._reads_ready.get(group)
        if not pending:
            return
        applied = self.applied[group]
        keep = []
        for index, query, w in pending:
            if index <= applied:
                w.resolve(query(self.machines[group]))
            else:
                keep.append((index, query, w))
        self._reads_ready[group] = keep


class AppliedResults:
    """Results of a group's entries as this node applies them, while the watch is open
    (a context manager: `with driver.watch_results(group) as watch: ...`)."""

    def __init__(self, driver: RaftDriver, group: str) -> None:
        self.driver = driver
        self.group = group
        self.results: dict[int, Any] = {}  # index -> the state machine's result

    def __enter__(self) -> "AppliedResults":
        return self

    def __exit__(self, *exc: object) -> None:
        self.driver._unwatch(self)

    async def result(self, index: int) -> Applied | Lost:
        """The result here of the entry committed at `index` (the leader said it applied
        ours there, and committed entries are the same on every node) once applied here;
        `Lost` if it arrived inside a snapshot (committed, but its result is unknown here)."""
        await self.driver.wait_applied(self.group, index)
        if index not in self.results:
            return Lost(self.group, index, "applied here from a snapshot: committed, result unknown")
        return Applied(self.group, index, self.results[index])


class MemoryNetwork:
    """An in-process `Transport` hub for tests and benchmarks: reliable, in order."""

    def __init__(self) -> None:
        self._senders: dict[str, trio.MemorySendChannel[PeerBatch]] = {}
        self.bytes_sent = 0
        self.batches_sent = 0
        self.measure_bytes = False
        self.down: set[str] = set()

    def transport(self, node_id: str) -> "MemoryTransport":
        send, receive = trio.open_memory_channel[PeerBatch](math.inf)
        self._senders[node_id] = send
        return MemoryTransport(self, receive)

    def deliver(self, batch: PeerBatch) -> None:
        if batch.src in self.down or batch.dst in self.down:
            return
        self.batches_sent += 1
        if self.measure_bytes:
            import msgpack

            self.bytes_sent += len(msgpack.packb(batch.to_wire()))
        ch = self._senders.get(batch.dst)
        if ch is not None:
            ch.send_nowait(batch)


class MemoryTransport:
    def __init__(self, net: MemoryNetwork, receive: trio.MemoryReceiveChannel[PeerBatch]) -> None:
        self._net = net
        self._receive = receive

    def send(self, batch: PeerBatch) -> None:
        self._net.deliver(batch)

    @property
    def received(self) -> trio.MemoryReceiveChannel[PeerBatch]:
        return self._receive
