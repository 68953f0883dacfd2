"""`ReplicatedQueue`: the shell of a mirrored or quorum queue on one of its replicas.

A replicated queue is a Raft group (`cluster/raft`) whose state machine is
`broker.queue_machine.QueueMachine`; its leader is the master, its followers the
mirrors. Every replica hosts one `ReplicatedQueue`; it acts only while its node
leads the group (`active`). It is a `QueueLeader` — consumers, credit, counters,
publisher flow and effects are carried out by the same code — with one difference:
nothing changes the state directly. Every change is a command appended to the
group's log, and its effects (confirms, deliveries, dead letters) are carried out
when the entry is applied, that is, once a majority of the replicas have it on disk.

- **Batching.** Commands made while one task runs (every publish, ack and delivery
  of one socket read) are gathered and proposed as one entry when the task yields,
  so a burst of publishes is one proposal, one append and one fsync per replica.
- **Publishes** are confirmed when their entry is applied here: committed on a
  majority, fsynced there. An entry that is lost (a new leader overwrote it) nacks
  its publishes; one that is committed after this node stopped leading still
  confirms them (it is committed).
- **Deliveries come from committed state.** The leader chooses a consumer with
  credit and proposes `Deliver` (or an `Enqueue` addressed to it when nothing is
  ready); the message is handed out when that entry is applied. Credit is reserved
  for deliveries in flight, so a consumer's prefetch is never exceeded.
- **Failover.** A node that becomes leader proposes `RequeueAll` first: every
  message delivered and not settled under the previous leader is ready again,
  flagged redelivered. Its delivery handles name a new `QueueRef` incarnation, so an
  ack of a delivery made by the previous leader settles nothing here. A node that
  stops leading cancels its consumers (basic.cancel) — their clients consume again
  from the new leader.
- **Durability** is the log (and its snapshots): no message rows are written.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from typing import TYPE_CHECKING, Any

import trio

from broker.arguments import QueueSettings
from broker.queue import Delivered, Purged, PublisherRejected, Enqueued
from broker.queue_client import Confirm, ConsumerRef, QueueRef
from broker.queue_leader import QueueLeader
from broker.queue_machine import QueueMachine, encode_entry, enqueue_wire, load_wire
from cluster.raft.driver import Applied

if TYPE_CHECKING:
    from broker.dispatch import Consumer
    from broker.message import Message
    from broker.node import Node

log = logging.getLogger("leveret.replicated_queue")

# Deliveries in flight (proposed, not yet applied) to one consumer without a prefetch limit.
UNLIMITED_IN_FLIGHT = 256
# The term of a shell that took over a plain queue before its group's first election.
CONVERTED_TERM = -2
# Settlements refused while a leadership goes on are proposed again after this long (s).
RETRY_DELAY = 0.05
SETTLEMENTS = frozenset({"ack", "rej", "req"})


class _Pending:
    """What to do with the outcome of one command of a proposal."""

    __slots__ = ("kind", "term", "confirm", "consumer", "event", "value")

    def __init__(self, kind: str, term: int, confirm: Confirm | None = None, consumer: str | None = None,
                 event: trio.Event | None = None) -> None:
        self.kind = kind
        self.term = term
        self.confirm = confirm
        self.consumer = consumer
        self.event = event
        self.value: Any = None

    def resolve(self, value: Any) -> None:
        self.value = value
        if self.event is not None:
            self.event.set()


class _Proposal:
    __slots__ = ("term", "commands", "pendings", "data")

    def __init__(self, term: int, commands: list[Any], pendings: list[_Pending | None], data: bytes = b"") -> None:
        self.term = term
        self.commands = commands
        self.pendings = pendings
        self.data = data


class ReplicatedQueue(QueueLeader):
    def __init__(self, node: "Node", vhost: str, name: str, durable: bool, settings: QueueSettings,
                 now_ms: int, group: str, machine: QueueMachine, proposer: str) -> None:
        super().__init__(node, vhost, name, durable, settings, now_ms)
        # The log and its snapshots are the durable form: no rows, no pages.
        self.pages = None
        self.machine = machine
        machine.listener = self
        self.state = machine.state
        self.group = group
        self.active = False
        self.term = -1
        self._proposer = proposer
        self._outbox: list[Any] = []
        self._pendings: list[_Pending | None] = []
        # The message each outbox command enqueues (None for other commands): the machine
        # applies this node's own entries from them instead of decoding (`QueueMachine.proposed`).
        self._messages: list["Message | None"] = []
        self._flush_scheduled = False
        self._proposals = 0
        # proposal number -> what it proposed, until applied here or lost
        self._waiting: dict[int, _Proposal] = {}
        # This term's deliveries in flight: in all, and reserved per consumer.
        self._in_flight = 0
        self._reserved: Counter[str] = Counter()

    # ------------------------------------------------------------------ leadership

    def lead(self, term: int, settings: QueueSettings) -> None:
        """This node now leads the group (in `term`): take over as master."""
        self.active = True
        self.deleted = False
        self.term = term
        self.ref = QueueRef(self.vhost, self.name, random.getrandbits(62))
        self._in_flight = 0
        self._reserved.clear()
        now = self.node.now_ms()
        self._append(["reqall", now], None)
        if settings != self.state.settings:
            self.consumers.single_active = settings.single_active_consumer
            self._append(["cfg", settings.to_wire(), now], None)

    def follow(self) -> list[ConsumerRef]:
        """Another node leads now (or none): stop acting; returns the consumers to cancel."""
        self.active = False
        # What waits on entries not yet applied: nacked and answered empty now (an entry may
        # still commit under the new leader; a nack allows that, and the publisher retries).
        waiting, self._waiting = self._waiting, {}
        self.machine.forget()
        for proposal in waiting.values():
            self._fail(proposal.pendings)
        refs = list(self.refs.values())
        self.refs.clear()
        for c in list(self.consumers):
            self.consumers.remove(c.channel, c.tag)
        self._release_publishers()
        return refs

    def take_over(self, other: QueueLeader) -> None:
        super().take_over(other)
        self.active = True
        self.term = CONVERTED_TERM

    def convert_from(self, state_bytes: bytes, loaded: Confirm) -> None:
        """Start the log with the state a queue had before it became replicated; `loaded`
        says whether that entry was committed."""
        self._append(["load", state_bytes], _Pending("load", self.term, loaded))

    # ------------------------------------------------------------------ proposing

    def _append(self, wire: list[Any], pending: _Pending | None, message: "Message | None" = None) -> None:
        self._outbox.append(wire)
        self._pendings.append(pending)
        self._messages.append(message)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            trio.lowlevel.current_trio_token().run_sync_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        commands, pendings, messages = self._outbox, self._pendings, self._messages
        if not commands:
            return
        self._outbox, self._pendings, self._messages = [], [], []
        try:
            self._proposals += 1
            proposal = self._proposals
            data = encode_entry(self._proposer, proposal, commands)
            self._waiting[proposal] = _Proposal(self.term, commands, pendings, data)
            self.machine.proposed(data, self._proposer, proposal, commands, messages)
            self.node.driver.propose_soon(self.group, data, lambda outcome: self._outcome(proposal, outcome))
        except Exception:
            # Run by the trio loop itself (run_sync_soon): an exception here would end the node.
            log.exception("proposing to queue '%s' failed", self.name)
            self._waiting.pop(self._proposals, None)
            self.machine.forget()
            self._fail(pendings)

    def _outcome(self, proposal: int, outcome: Any) -> None:
        if isinstance(outcome, Applied):
            return  # `applied` has handled it
        waiting = self._waiting.pop(proposal, None)
        if waiting is None:
            return
        self.machine.forget(waiting.data)
        try:
            if self.active and waiting.term == self.term:
                # Refused while this leadership goes on (a leadership transfer under way):
                # settlements are proposed again shortly, or their messages would stay
                # unacknowledged until the next failover. Publishes are nacked (the publisher
                # retries), deliveries chosen again.
                retry = [cmd for cmd, p in zip(waiting.commands, waiting.pendings)
                         if p is None and cmd[0] in SETTLEMENTS]
                if retry:
                    self.node.start_soon(self._propose_again, waiting.term, retry)
            self._fail(waiting.pendings)
        except Exception:
            # Called from the Raft driver's loop, which must go on.
            log.exception("answering lost commands of queue '%s' failed", self.name)

    async def _propose_again(self, term: int, commands: list[Any]) -> None:
        await trio.sleep(RETRY_DELAY)
        if self.active and self.term == term:
            for cmd in commands:
                self._append(cmd, None)

    def adopt_term(self, term: int) -> None:
        """A converted queue's group held its first election: what it proposed before is
        this leadership's."""
        for waiting in self._waiting.values():
            if waiting.term == self.term:
                waiting.term = term
                for p in waiting.pendings:
                    if p is not None:
                        p.term = term
        self.term = term

    def _fail(self, pendings: list[_Pending | None]) -> None:
        """The commands will never be applied (or not knowingly): nack, release, answer empty."""
        for p in pendings:
            if p is None:
                continue
            self._release(p)
            if p.confirm is not None:
                p.confirm(False)
            p.resolve(None)
        if self.active:
            self.dispatch(self.node.now_ms())

    def _release(self, p: _Pending) -> None:
        if p.term != self.term or p.consumer is None:
            return
        self._reserved[p.consumer] -= 1
        if self._reserved[p.consumer] <= 0:
            del self._reserved[p.consumer]
        if p.kind == "dlv":
            self._in_flight -= 1

    # ------------------------------------------------------------------ applied entries

    def applied(self, proposer: str, proposal: int, commands: list[Any], results: list[list[Any]]) -> None:
        """An entry of the group was applied on this node (every replica does this). Its
        effects are carried out only if this leadership proposed it: an entry of an earlier
        leadership names consumers and publishers of that one (its deliveries are returned
        by this leadership's `RequeueAll`, which the log orders after them)."""
        self.state = self.machine.state
        waiting = self._waiting.pop(proposal, None) if proposer == self._proposer else None
        pendings = waiting.pendings if waiting is not None else None
        now = self.node.now_ms()
        active = self.active
        ours = active and waiting is not None and waiting.term == self.term
        for i, effects in enumerate(results):
            p = pendings[i] if pendings is not None else None
            if p is not None:
                self._release(p)
            if p is not None and p.kind in ("get", "purge"):
                self._answer(p, effects, now, ours)
            elif ours:
                self._carry_out(effects, now, p.confirm if p is not None else None)
            elif p is not None and p.confirm is not None:
                # Committed after this node stopped leading: the outcome stands.
                p.confirm(not any(type(e) is PublisherRejected for e in effects)
                          and any(type(e) is Enqueued for e in effects))
        if active and not self.deleted:
            self.dispatch(now)

    def _answer(self, p: _Pending, effects: list[Any], now: int, active: bool) -> None:
        if p.kind == "purge":
            p.resolve(next((e.count for e in effects if type(e) is Purged), 0))
            return
        got = next((e for e in effects if type(e) is Delivered and e.consumer is None), None)
        rest = [e for e in effects if e is not got]
        if active:
            self._carry_out(rest, now, None)
        p.resolve(self._got(got, p.value) if active else None)

    def restored(self) -> None:
        """The machine was replaced by a snapshot (this replica caught up from one)."""
        self.state = self.machine.state

    # ------------------------------------------------------------------ what channels ask

    def publish(self, message: "Message", now_ms: int, confirm: Confirm | None) -> None:
        self.counters.publish += 1
        if not self.active:
            if confirm is not None:
                confirm(False)
            return
        if message.expiration_ms is not None:
            self.node.watch_expiry(self)
        deliver_to = None
        ack_required = True
        if self.state.messages_ready <= self._in_flight and len(self.consumers):
            chosen = self.consumers.next_consumer(self._has_credit)
            if chosen is not None:
                deliver_to = chosen.name
                ack_required = chosen.ack_required
                self._reserved[deliver_to] += 1
        self._append(enqueue_wire(message, now_ms, deliver_to, ack_required),
                     _Pending("enq", self.term, confirm, deliver_to), message)

    def _has_credit(self, consumer: "Consumer") -> bool:
        ref = self.refs[consumer.name]
        room = ref.session.room(ref.channel, ref.tag)
        reserved = self._reserved.get(consumer.name, 0)
        if room is None:
            return reserved < UNLIMITED_IN_FLIGHT
        return room > reserved

    def dispatch(self, now_ms: int) -> None:
        if not self.active or self._dispatching or self.deleted:
            return
        self._dispatching = True
        try:
            self.consumers.unblock(self._has_credit)
            available = self.state.messages_ready - self._in_flight
            while available > 0 and len(self.consumers):
                consumer = self.consumers.next_consumer(self._has_credit)
                if consumer is None:
                    break
                self._reserved[consumer.name] += 1
                self._in_flight += 1
                available -= 1
                self._append(["dlv", now_ms, consumer.name, consumer.ack_required],
                             _Pending("dlv", self.term, consumer=consumer.name))
        finally:
            self._dispatching = False
        if self._uncongested is not None:
            self._release_publishers()

    async def fetch(self, now_ms: int, no_ack: bool) -> Delivered | None:
        if not self.active:
            return None
        p = _Pending("get", self.term, event=trio.Event())
        p.value = no_ack
        self._append(["dlv", now_ms, None, not no_ack], p)
        await p.event.wait()  # type: ignore[union-attr]
        return p.value  # type: ignore[no-any-return]

    def get(self, now_ms: int, no_ack: bool) -> Delivered | None:
        raise AssertionError("a replicated queue answers basic.get through fetch()")

    async def purge_now(self, now_ms: int) -> int:
        if not self.active:
            return 0
        p = _Pending("purge", self.term, event=trio.Event())
        self._append(["purge"], p)
        await p.event.wait()  # type: ignore[union-attr]
        return int(p.value or 0)

    def purge(self, now_ms: int) -> int:
        """Without waiting (the management API): what is ready now, purged once committed."""
        count = self.state.messages_ready
        if self.active:
            self._append(["purge"], None)
        return count

    def _take_back(self, seq: int, now_ms: int) -> None:
        self._append(["req", [seq], now_ms], None)

    def settle(self, seqs: tuple[int, ...], now_ms: int) -> None:
        self.counters.ack += len(seqs)
        if self.active:
            self._append(["ack", list(seqs)], None)
            self.dispatch(now_ms)

    def requeue(self, seqs: tuple[int, ...], now_ms: int) -> None:
        if self.active:
            self._append(["req", list(seqs), now_ms], None)

    def reject(self, seqs: tuple[int, ...], now_ms: int) -> None:
        if self.active:
            self._append(["rej", list(seqs)], None)

    def expire(self, now_ms: int) -> None:
        if self.active:
            self._append(["exp", now_ms], None)

    def touch(self, now_ms: int) -> None:
        if self.active:
            self._append(["touch", now_ms], None)

    def reconfigure(self, settings: QueueSettings, now_ms: int) -> None:
        self.consumers.single_active = settings.single_active_consumer
        if self.active:
            self._append(["cfg", settings.to_wire(), now_ms], None)

    def recover(self, message: "Message", now_ms: int, key: bytes) -> None:
        raise AssertionError("a replicated queue recovers from its log, not from rows")

    # ------------------------------------------------------------------ effects

    def _accepted(self, seq: int, m: "Message", confirm: Confirm | None) -> None:
        # Applied means committed: on a majority of the replicas' disks already.
        if confirm is not None:
            confirm(True)

    def _forget(self, messages: Any) -> None:
        pass  # no rows: the log is the durable form


def replica_proposer(node_name: str) -> str:
    """Names this boot of this node in the entries its shells propose."""
    return f"{node_name}/{random.getrandbits(48):x}"


__all__: list[str] = ["ReplicatedQueue", "replica_proposer"]
