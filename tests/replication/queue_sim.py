"""Replicated queue groups under the deterministic Raft simulation (docs/raft.md, "Queue groups").

`cluster.raft.sim.Sim` runs Raft nodes under its whole fault model (crashes inside and
between driver cycles, partitions, pauses, loss, duplication, membership changes,
transfers, contested elections). Here every simulated node hosts, per queue group, the
real `broker.queue_machine.QueueMachine` as that group's state machine, fed with the real
entry encoding (`encode_entry`, `enqueue_wire`, the commands' wire forms), and a `Shell`:
a small pure model of what `broker/replicated_queue.py` does on the node that leads —

* commands gathered while clients act and proposed as one entry per step (per task there);
* a publish confirmed only when its entry is applied on the proposing node (an entry of
  ours applied after we stopped leading still confirms: it is committed); a proposal that
  is refused, or whose index another entry won, nacks;
* deliveries chosen by the leader: a consumer with credit gets a proposed `Deliver` (or an
  `Enqueue` addressed to it when nothing is ready), handed out when that entry is applied;
  credit is reserved for deliveries in flight;
* `RequeueAll` first thing on becoming leader, with a new delivery incarnation, so
  settlements of an older leadership's deliveries are ignored; consumers cancelled when the
  node stops leading.

Clients are driven by the same seed: publishers (every body a unique message id) talk to
whichever node believes it leads, consumers with a prefetch ack, reject, requeue, close
their channel, and re-send settlements of deliveries an earlier leadership made.

Checked after every step, besides the Raft invariants the simulation already holds:

1. a confirmed message is in the committed state (the state at the highest committed
   index, kept by `Oracle` from the entries as they are first applied anywhere) until it
   leaves it from the unacknowledged set, that is after a delivery; no message ever leaves
   the state without one;
2. a settled message (its Settle committed) never reappears as ready or unacknowledged in
   the committed state, and no consumer is handed it by an entry after that Settle;
3. no consumer holds more unsettled deliveries than its prefetch;
4. every replica's `state_to_bytes(machine.state)` equals the committed state's at the
   replica's applied index (so any two replicas at equal applied index are equal);
5. a committed Settle or Reject that removes a message comes from the consumer that holds
   its latest delivery.

After the steps the faults heal, Raft's liveness is checked, and the queues are drained:
consumers ack everything, and within `drain_ticks` every queue must be empty on every
member with every confirmed message delivered at least once.

A failure raises `SimFailure` whose message ends with the one-line reproduce command:
    python -m tests.replication.queue_sim --mix NAME --seed N [--mutant NAME]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import msgpack

from broker.amqp import codec
from broker.amqp.spec import BasicProperties
from broker.arguments import QueueSettings
from broker.message import Message
from broker.queue import Delivered, Enqueued, PublisherRejected, QueueState
from broker.queue_machine import QueueMachine, encode_entry, enqueue_wire
from broker.queue_snapshot import state_to_bytes
from cluster.raft.group import LEADER, Proposed, Refused
from cluster.raft.log import entry_payload
from cluster.raft.sim import Sim, SimConfig, SimFailure, SimNode
from storage.interface import LogEntry

RAW_PROPERTIES = codec.encode_properties(BasicProperties())
MS_PER_STEP = 10
# Commands a leader re-proposes after a refusal instead of dropping (acks, rejects, requeues).
KEPT_ON_REFUSAL = frozenset({"ack", "rej", "req", "reqall"})


@dataclass(frozen=True)
class Load:
    """What the clients do, per group and step (probabilities) and who they are."""

    publish: float = 0.5  # a publisher sends 1..3 messages
    consumers: int = 3  # consumer clients per group, each with a prefetch of 1..3
    subscribe: float = 0.3  # a consumer without a subscription consumes again
    ack: float = 0.3  # per held delivery
    requeue: float = 0.04
    reject: float = 0.03
    close: float = 0.01  # a consumer closes its channel: its deliveries are requeued
    stale: float = 0.2  # a consumer re-sends the ack of a delivery an earlier leadership made
    drain_ticks: int = 800


@dataclass(frozen=True)
class QueueMix:
    sim: SimConfig
    load: Load = Load()


def _cfg(**kw: Any) -> SimConfig:
    # The simulation's own random proposals are off: only the queue's entries are proposed.
    return SimConfig(propose=0.0, read=0.0, **kw)


QUEUE_MIXES: dict[str, QueueMix] = {
    "default": QueueMix(_cfg(steps=250)),
    "crashes": QueueMix(_cfg(nodes=3, groups=1, crash=0.05, steps=250)),
    "lossy": QueueMix(_cfg(drop=0.2, duplicate=0.1, max_delay=5, steps=250)),
    "churn": QueueMix(_cfg(membership=0.06, transfer=0.05, partition=0.05, partial=0.02, steps=250)),
    "stale-leaders": QueueMix(_cfg(pause=0.04, steps=250)),
    # Leadership handed on often: proposals refused while a transfer is in progress.
    "transfers": QueueMix(_cfg(transfer=0.2, drop=0.15, max_delay=5, steps=200)),
    "amnesia": QueueMix(_cfg(group_size=5, contest=0.1, amnesia=1.0, crash=0.03, steps=200)),
}


def _bodies(state: QueueState) -> tuple[set[bytes], dict[int, bytes]]:
    """(bodies of the ready messages, seq → body of the unacknowledged ones)."""
    ready = {m.body for _, m, _ in state.ready()}
    seqs = state.unacked_seqs()
    return ready, dict(zip(seqs, (m.body for m in state.unacked_messages(seqs))))


def _digest(state: QueueState) -> bytes:
    return hashlib.blake2b(state_to_bytes(state), digest_size=16).digest()


# ---------------------------------------------------------------------- clients


class Subscription:
    """One basic.consume of one consumer client on one shell, until cancelled or closed."""

    def __init__(self, name: str, client: "ConsumerClient", shell: "Shell") -> None:
        self.name = name
        self.client = client
        self.shell = shell
        self.prefetch = client.prefetch
        # seq → the incarnation of the shell's leadership that delivered it: delivered, not
        # yet settled by the client (the delivery tag names that incarnation, as QueueRef does).
        self.held: dict[int, int] = {}
        self.open = True

    def receive(self, seq: int, body: bytes, incarnation: int) -> None:
        qs = self.shell.qs
        self.held[seq] = incarnation
        qs.delivered.add(body)
        qs.deliveries += 1
        if len(self.held) > self.prefetch:
            qs.fail(f"prefetch: consumer {self.name} holds {len(self.held)} unsettled deliveries, "
                    f"its prefetch is {self.prefetch}")

    def cancelled(self) -> None:
        """The server cancelled the consumer (its shell stopped leading or its node died): the
        client keeps the tags of what it held and may still settle them (they are ignored)."""
        self.open = False
        if self.client.sub is self:
            self.client.sub = None
        self.client.stale.extend((seq, inc, self.name) for seq, inc in sorted(self.held.items()))
        del self.client.stale[:-8]
        self.held.clear()


class ConsumerClient:
    def __init__(self, qs: "QueueSim", gid: str, name: str, prefetch: int) -> None:
        self.qs, self.gid, self.name, self.prefetch = qs, gid, name, prefetch
        self.sub: Subscription | None = None
        self.subs = 0
        self.stale: list[tuple[int, int, str]] = []  # (seq, incarnation, subscription) cancelled

    def act(self, rng: random.Random, load: Load, draining: bool) -> None:
        qs = self.qs
        if self.sub is None:
            if draining or rng.random() < load.subscribe:
                shell = qs.client_shell(self.gid)
                if shell is not None:
                    self.subs += 1
                    self.sub = Subscription(f"{self.name}#{self.subs}", self, shell)
                    shell.subscribe(self.sub)
            return
        sub = self.sub
        if not qs.reachable(sub.shell):
            return  # its node is paused: the client waits
        if not draining and rng.random() < load.close:
            sub.shell.close(sub)
            return
        for seq, incarnation in sorted(sub.held.items()):
            r = rng.random()
            if draining:
                how = "ack" if r < 0.5 else None
            elif r < load.ack:
                how = "ack"
            elif r < load.ack + load.requeue:
                how = "req"
            elif r < load.ack + load.requeue + load.reject:
                how = "rej"
            else:
                how = None
            if how is not None:
                del sub.held[seq]
                sub.shell.settle(sub.name, seq, incarnation, how)
        if self.stale and rng.random() < load.stale:
            seq, incarnation, name = self.stale.pop(rng.randrange(len(self.stale)))
            shell = qs.client_shell(self.gid)
            if shell is not None:
                shell.settle(name, seq, incarnation, "ack")


# ---------------------------------------------------------------------- the leader's shell


class Pending:
    """What to do with the outcome of one command of a proposal."""

    __slots__ = ("kind", "term", "confirm", "consumer", "settler")

    def __init__(self, kind: str, term: int, confirm: Callable[[bool], None] | None = None,
                 consumer: str | None = None, settler: str | None = None) -> None:
        self.kind = kind
        self.term = term
        self.confirm = confirm
        self.consumer = consumer
        self.settler = settler


class Shell:
    """A pure model of `broker.replicated_queue.ReplicatedQueue` on one node, for one boot:
    the machine's listener, acting only while its node leads the group."""

    def __init__(self, qs: "QueueSim", node: str, gid: str, machine: QueueMachine, boot: int) -> None:
        self.qs, self.node, self.gid, self.machine = qs, node, gid, machine
        machine.listener = self
        self.proposer = f"{node}/{boot}"
        self.active = False
        self.term = -1
        self.incarnation = 0
        self.outbox: list[list[Any]] = []
        self.pendings: list[Pending | None] = []
        self.proposals = 0
        self.waiting: dict[int, tuple[int, list[Pending | None]]] = {}  # proposal → (index, pendings)
        self.at_index: dict[int, int] = {}  # index → proposal
        self.in_flight = 0  # this leadership's Delivers proposed, not yet applied
        self.reserved: Counter[str] = Counter()  # per consumer: deliveries in flight to it
        self.subs: dict[str, Subscription] = {}
        self.rotation = 0
        self.pushed: list[bytes] = []  # bodies handed to consumers by the entry being applied

    @property
    def state(self) -> QueueState:
        return self.machine.state

    def now_ms(self) -> int:
        return self.qs.now * MS_PER_STEP

    # -------------------------------------------------------------- leadership

    def lead(self, term: int) -> None:
        self.active = True
        self.term = term
        self.incarnation = self.qs.next_incarnation()
        self.in_flight = 0
        self.reserved.clear()
        self._append(["reqall", self.now_ms()], None)

    def follow(self) -> None:
        self.active = False
        self._cancel_all()

    def die(self) -> None:
        """The node crashed: this boot's shell, its consumers and its waiting proposals are gone."""
        self.active = False
        self._cancel_all()
        self.outbox, self.pendings, self.waiting, self.at_index = [], [], {}, {}

    def _cancel_all(self) -> None:
        subs, self.subs = list(self.subs.values()), {}
        for sub in subs:
            sub.cancelled()

    # -------------------------------------------------------------- what clients ask

    def publish(self, body: bytes, confirm: Callable[[bool], None]) -> None:
        if not self.active:
            confirm(False)
            return
        deliver_to = None
        if self.state.messages_ready <= self.in_flight and self.subs:
            chosen = self._next_consumer()
            if chosen is not None:
                deliver_to = chosen.name
                self.reserved[deliver_to] += 1
        message = Message("", self.gid, None, body, raw_properties=RAW_PROPERTIES)
        self._append(enqueue_wire(message, self.now_ms(), deliver_to, True),
                     Pending("enq", self.term, confirm, deliver_to))

    def subscribe(self, sub: Subscription) -> None:
        self.subs[sub.name] = sub
        self.dispatch()

    def settle(self, sub: str, seq: int, incarnation: int, how: str) -> None:
        """basic.ack / reject / nack-requeue by the consumer `sub` of the delivery `seq` that
        the leadership `incarnation` made to it."""
        if not self.active or incarnation != self.incarnation:
            return  # a delivery of an earlier leadership: settles nothing here
        now = self.now_ms()
        wire = {"ack": ["ack", [seq]], "rej": ["rej", [seq]], "req": ["req", [seq], now]}[how]
        self._append(wire, Pending(how, self.term, settler=sub))
        self.dispatch()

    def close(self, sub: Subscription) -> None:
        """The consumer's channel closed: it is gone, its unsettled deliveries are requeued."""
        self.subs.pop(sub.name, None)
        sub.open = False
        sub.client.sub = None
        seqs = sorted(seq for seq, inc in sub.held.items() if inc == self.incarnation)
        sub.held = {}
        if seqs and self.active:
            self._append(["req", seqs, self.now_ms()], Pending("req", self.term, settler=sub.name))
        self.dispatch()

    # -------------------------------------------------------------- choosing deliveries

    def _has_credit(self, sub: Subscription) -> bool:
        return sub.prefetch - len(sub.held) > self.reserved.get(sub.name, 0)

    def _next_consumer(self) -> Subscription | None:
        subs = list(self.subs.values())
        for i in range(len(subs)):
            sub = subs[(self.rotation + i) % len(subs)]
            if self._has_credit(sub):
                self.rotation = (self.rotation + i + 1) % len(subs)
                return sub
        return None

    def dispatch(self) -> None:
        if not self.active:
            return
        available = self.state.messages_ready - self.in_flight
        while available > 0 and self.subs:
            sub = self._next_consumer()
            if sub is None:
                break
            self.reserved[sub.name] += 1
            self.in_flight += 1
            available -= 1
            self._append(["dlv", self.now_ms(), sub.name, True], Pending("dlv", self.term, consumer=sub.name))

    # -------------------------------------------------------------- proposing

    def _append(self, wire: list[Any], pending: Pending | None) -> None:
        self.outbox.append(wire)
        self.pendings.append(pending)

    def flush(self) -> None:
        """Propose what was gathered this step as one entry (one per task in the broker)."""
        if not self.outbox:
            return
        commands, pendings = self.outbox, self.pendings
        self.outbox, self.pendings = [], []
        self.proposals += 1
        proposal = self.proposals
        self.qs.settlers[(self.gid, self.proposer, proposal)] = [p.settler if p is not None else None for p in pendings]
        r = self.qs.propose(self.gid, encode_entry(self.proposer, proposal, commands), to=self.qs.nodes[self.node])
        if isinstance(r, Proposed):
            self.waiting[proposal] = (r.index, pendings)
            self.at_index[r.index] = proposal
            return
        if isinstance(r, Refused) and self.active:
            # Still leading (a transfer is in progress): what returns or settles deliveries
            # must not be dropped, or the messages stay unacknowledged for good if the
            # transfer fails; it goes out with the next proposal.
            kept = [i for i, c in enumerate(commands) if c[0] in KEPT_ON_REFUSAL]
            self.outbox[:0] = [commands[i] for i in kept]
            self.pendings[:0] = [pendings[i] for i in kept]
            pendings = [p for i, p in enumerate(pendings) if i not in kept]
        self._fail(pendings)

    def lost(self, index: int) -> None:
        """Our entry at `index` will never be applied (another won the index, or a snapshot
        covered it before we saw it applied)."""
        proposal = self.at_index.pop(index)
        _, pendings = self.waiting.pop(proposal)
        self._fail(pendings)

    def _fail(self, pendings: list[Pending | None]) -> None:
        for p in pendings:
            if p is None:
                continue
            self._release(p)
            if p.confirm is not None:
                p.confirm(False)
        self.dispatch()

    def _release(self, p: Pending) -> None:
        if p.term != self.term or p.consumer is None:
            return
        self.reserved[p.consumer] -= 1
        if self.reserved[p.consumer] <= 0:
            del self.reserved[p.consumer]
        if p.kind == "dlv":
            self.in_flight -= 1

    # -------------------------------------------------------------- applied entries

    def applied(self, proposer: str, proposal: int, commands: list[Any], results: list[list[Any]]) -> None:
        self.pushed = []
        pendings = None
        if proposer == self.proposer:
            found = self.waiting.pop(proposal, None)
            if found is not None:
                self.at_index.pop(found[0], None)
                pendings = found[1]
        for i, effects in enumerate(results):
            p = pendings[i] if pendings is not None else None
            if p is not None:
                self._release(p)
            if self.active:
                # Deliveries count only where this leadership chose them: one an earlier
                # leadership chose precedes our RequeueAll in the log, which returns it.
                self._carry_out(effects, p.confirm if p is not None else None,
                                p is not None and p.term == self.term)
            elif p is not None and p.confirm is not None:
                # Committed after we stopped leading: the outcome stands.
                p.confirm(not any(type(e) is PublisherRejected for e in effects)
                          and any(type(e) is Enqueued for e in effects))
        if self.active:
            self.dispatch()

    def _carry_out(self, effects: list[Any], confirm: Callable[[bool], None] | None, chosen_here: bool) -> None:
        for e in effects:
            t = type(e)
            if t is Delivered and chosen_here:
                self._deliver(e)
            elif t is Enqueued:
                if confirm is not None:
                    confirm(True)
                    confirm = None
            elif t is PublisherRejected:
                if confirm is not None:
                    confirm(False)
                    confirm = None
        if confirm is not None:
            confirm(True)

    def _deliver(self, d: Delivered) -> None:
        sub = self.subs.get(d.consumer) if d.consumer is not None else None
        if sub is None:
            if d.ack_required:  # the consumer went away between choice and delivery
                self._append(["req", [d.seq], self.now_ms()], Pending("req", self.term, settler=d.consumer))
            return
        self.pushed.append(d.message.body)
        sub.receive(d.seq, d.message.body, self.incarnation)

    def restored(self) -> None:
        pass  # the state is read from the machine


# ---------------------------------------------------------------------- the committed state


class _Results:
    """The oracle machine's listener: keeps the effects of the entry just applied."""

    def __init__(self) -> None:
        self.results: list[list[Any]] = []

    def applied(self, proposer: str, proposal: int, commands: list[Any], results: list[list[Any]]) -> None:
        self.results = results

    def restored(self) -> None:
        pass


class Oracle:
    """The committed state of one group: a `QueueMachine` fed each entry the first time any
    node applies it (every node applies in index order, and a snapshot was made by a node
    that applied what it covers, so first applications come in index order)."""

    def __init__(self, gid: str) -> None:
        self.gid = gid
        self.machine = QueueMachine(gid, QueueSettings())
        self.listener = _Results()
        self.machine.listener = self.listener
        self.index = 0
        self.digests: dict[int, bytes] = {0: _digest(self.machine.state)}
        self.ready: set[bytes] = set()
        self.unacked: dict[int, bytes] = {}
        self.settled: dict[bytes, int] = {}  # body → index of the entry that took it out after delivery
        self.holder: dict[int, str] = {}  # seq → the consumer its latest delivery went to

    def present(self, body: bytes) -> bool:
        return body in self.ready or body in self.unacked.values()

    def apply(self, qs: "QueueSim", e: LogEntry) -> None:
        index = e.index
        if index != self.index + 1:
            qs.fail(f"oracle: {self.gid}[{index}] first applied while the committed state is at {self.index}")
        payload = entry_payload(e)
        self.index = index
        if payload is None:  # a configuration entry
            self.digests[index] = self.digests[index - 1]
            return
        proposer, proposal, commands = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        settlers = qs.settlers.get((self.gid, proposer, proposal))
        before_ready, before_unacked = self.ready, self.unacked
        self.listener.results = []
        self.machine.apply(index, payload)
        state = self.machine.state
        self.ready, self.unacked = _bodies(state)
        self.digests[index] = _digest(state)
        after = self.ready | set(self.unacked.values())
        for pos, effects in enumerate(self.listener.results):
            tag = commands[pos][0]
            if tag in ("ack", "rej", "req") and settlers is not None and settlers[pos] is not None:
                # Whoever settles (or returns) a delivery must hold it: its latest delivery went there.
                for seq in commands[pos][1]:
                    body = before_unacked.get(seq)
                    if body is not None and self.holder.get(seq) != settlers[pos]:
                        qs.fail(f"stale settlement: {self.gid}[{index}] {tag} of {body.decode()} (seq {seq}) on "
                                f"behalf of {settlers[pos]}, but its latest delivery went to {self.holder.get(seq)}")
            for eff in effects:
                if type(eff) is Delivered and eff.consumer is not None:
                    self.holder[eff.seq] = eff.consumer
        for body in before_ready - after:
            qs.fail(f"lost: {body.decode()} left the committed state of {self.gid} at {index} without "
                    f"being delivered")
        for seq, body in before_unacked.items():
            if body not in after:
                self.settled[body] = index
                self.holder.pop(seq, None)
        for body in after:
            if body in self.settled:
                qs.fail(f"settled message back: {body.decode()}, settled at {self.gid}[{self.settled[body]}], "
                        f"is in the committed state again at {index}")


# ---------------------------------------------------------------------- the simulation


class QueueSim(Sim):
    def __init__(self, seed: int, mix: QueueMix, name: str = "default", mutant: str | None = None) -> None:
        self.mix_name, self.mutant, self.load = name, mutant, mix.load
        self.shells: dict[tuple[str, str], Shell] = {}
        self.oracles = {f"g{i + 1}": Oracle(f"g{i + 1}") for i in range(mix.sim.groups)}
        self.settlers: dict[tuple[str, str, int], list[str | None]] = {}
        self.incarnations = 0
        self.publishing = True
        self.draining = False
        self.published = 0
        self.outcomes: dict[bytes, bool] = {}
        self.confirmed_now: list[tuple[str, bytes]] = []
        self.delivered: set[bytes] = set()
        self.deliveries = 0
        self.leads = 0
        self.checked: dict[tuple[str, str], tuple[int, int]] = {}
        super().__init__(seed, mix.sim)
        self.client_rng = random.Random(self.rng.getrandbits(32))
        self.consumers = {gid: [ConsumerClient(self, gid, f"{gid}c{i + 1}", self.client_rng.randint(1, 3))
                                for i in range(self.load.consumers)] for gid in self.group_ids}
        self.step_hooks.append(self._clients_act)
        self.apply_hooks.append(self._applied)

    # -------------------------------------------------------------- hooks into the simulation

    def make_machine(self, n: SimNode, gid: str) -> QueueMachine:
        old = self.shells.get((n.id, gid))
        if old is not None:
            old.die()
        machine = QueueMachine(gid, QueueSettings())
        self.shells[(n.id, gid)] = Shell(self, n.id, gid, machine, n.incarnation)
        return machine

    def probe_payload(self, gid: str) -> bytes:
        # A command every replica applies the same way and no invariant looks at.
        return encode_entry("probe", 0, [["touch", 0]])

    def crash(self, n: SimNode, keep_unsynced: int = 0) -> None:
        super().crash(n, keep_unsynced)
        for (nid, _), shell in self.shells.items():
            if nid == n.id:
                shell.die()

    def fail(self, what: str) -> None:
        line = f"python -m tests.replication.queue_sim --mix {self.mix_name} --seed {self.seed}"
        if self.mutant:
            line += f" --mutant {self.mutant}"
        raise SimFailure(f"{what} (seed {self.seed}, step {self.now})\nreproduce: {line}")

    def next_incarnation(self) -> int:
        self.incarnations += 1
        return self.incarnations

    def reachable(self, shell: Shell) -> bool:
        n = self.nodes[shell.node]
        return n.up and n.id not in self.paused and self.shells.get((shell.node, shell.gid)) is shell

    def client_shell(self, gid: str) -> Shell | None:
        """The shell a client reaches: on a node that believes it leads (deposed ones
        included), unless that node is paused (the client's request waits)."""
        n = self.client_leader(gid, self.client_rng)
        if n is None or n.id in self.paused:
            return None
        shell = self.shells[(n.id, gid)]
        return shell if shell.active else None

    # -------------------------------------------------------------- every step

    def _clients_act(self) -> None:
        rng, load = self.client_rng, self.load
        live = [s for s in self.shells.values() if self.reachable(s)]
        for shell in live:  # the watch loop: activate or retire shells by Raft role
            g = self.nodes[shell.node].raft.groups.get(shell.gid)
            if g is not None and g.role == LEADER:
                if not shell.active or shell.term != g.term:
                    self.leads += 1
                    shell.lead(g.term)
            elif shell.active:
                shell.follow()
        for gid in self.group_ids:
            if self.publishing and rng.random() < load.publish:
                shell = self.client_shell(gid)
                if shell is not None:
                    for _ in range(rng.randint(1, 3)):
                        self.published += 1
                        body = f"{gid}-m{self.published}".encode()
                        shell.publish(body, self._confirmer(gid, body))
            for c in self.consumers[gid]:
                c.act(rng, load, self.draining)
        for shell in live:
            shell.flush()

    def _confirmer(self, gid: str, body: bytes) -> Callable[[bool], None]:
        def confirm(ok: bool) -> None:
            if body in self.outcomes:
                return
            self.outcomes[body] = ok
            if ok:
                self.confirmed_now.append((gid, body))
        return confirm

    def _applied(self, node: str, gid: str, e: LogEntry, result: Any) -> None:
        oracle = self.oracles[gid]
        if e.index > oracle.index:
            oracle.apply(self, e)
        shell = self.shells[(node, gid)]
        if e.index in shell.at_index:
            shell.lost(e.index)
        if shell.pushed:
            for body in shell.pushed:
                settled = oracle.settled.get(body)
                if settled is not None and settled < e.index:
                    self.fail(f"settled message delivered: {body.decode()} settled at {gid}[{settled}], handed "
                              f"to a consumer by {node} applying {gid}[{e.index}]")
            shell.pushed = []

    def step(self) -> None:
        super().step()
        self.check_queues()

    def check_queues(self) -> None:
        for gid, body in self.confirmed_now:
            oracle = self.oracles[gid]
            if not oracle.present(body) and body not in oracle.settled:
                self.fail(f"confirmed message not committed: {body.decode()} was confirmed while the committed "
                          f"state of {gid} (at {oracle.index}) does not hold it")
        self.confirmed_now.clear()
        for n in self.up_nodes():
            for gid, machine in n.machines.items():
                shell = self.shells[(n.id, gid)]
                applied = n.applied[gid]
                for index in [i for i in shell.at_index if i <= applied]:
                    shell.lost(index)  # covered by a snapshot before it was seen applied
                key = (n.id, gid)
                if self.checked.get(key) == (n.incarnation, applied):
                    continue
                self.checked[key] = (n.incarnation, applied)
                assert isinstance(machine, QueueMachine)
                if _digest(machine.state) != self.oracles[gid].digests[applied]:
                    self.fail(f"replicas differ: {n.id}'s state of {gid} at applied index {applied} is not the "
                              f"committed state at that index")

    # -------------------------------------------------------------- run

    def run(self) -> None:
        try:
            for _ in range(self.cfg.steps):
                self.step()
            self.heal()
            self.publishing = False
            self.check_liveness()
            self.inv.check_logs(self.up_nodes(), self.group_ids)
            self.drain()
        except SimFailure:
            raise
        except Exception as e:  # the machine, the core or the shell model raising: a failed seed
            self.fail(f"{type(e).__name__} raised: {e}")

    def drain(self) -> None:
        """Consumers ack everything: every queue must empty on every member, every confirmed
        message having been delivered at least once."""
        self.draining = True
        deadline = self.now + self.load.drain_ticks
        while True:
            left = self._undrained()
            if not left:
                return
            if self.now >= deadline:
                self.fail(f"drain: after {self.load.drain_ticks} ticks of healed network, {left}")
            self.step()

    def _undrained(self) -> str:
        confirmed = [b for b, ok in self.outcomes.items() if ok]
        undelivered = sorted(b.decode() for b in confirmed if b not in self.delivered)
        for gid in self.group_ids:
            oracle = self.oracles[gid]
            if oracle.ready or oracle.unacked:
                return (f"{gid} still holds {len(oracle.ready)} ready and {len(oracle.unacked)} unacknowledged "
                        f"messages (confirmed, never delivered: {undelivered[:5]})")
            leader = self.leader_of(gid)
            members = leader.raft.groups[gid].conf.members if leader else frozenset()
            lagging = sorted(m for m in members if self.nodes[m].applied.get(gid, 0) < oracle.index)
            if lagging:
                return f"{gid} members {lagging} have not applied {gid}[{oracle.index}]"
        if undelivered:
            return f"confirmed messages never delivered: {undelivered[:5]}"
        return ""


def run_seed(seed: int, mix: str = "default", module_mix: dict[str, QueueMix] | None = None) -> QueueSim:
    sim = QueueSim(seed, (module_mix or QUEUE_MIXES)[mix], mix)
    sim.run()
    return sim


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.replication.queue_sim",
                                description="Replicated queue groups under the Raft simulation.")
    p.add_argument("--mix", default="default", choices=sorted(QUEUE_MIXES))
    p.add_argument("--seed", type=int, default=None, help="run this one seed")
    p.add_argument("--seeds", type=int, default=50, help="run seeds START..START+N-1 (without --seed)")
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--mutant", default=None, help="run a broken shell (tests/replication/queue_mutants.py)")
    a = p.parse_args(argv)
    cls: type[QueueSim] = QueueSim
    if a.mutant:
        from tests.replication.queue_mutants import mutant_module

        cls = mutant_module(a.mutant).QueueSim
    seeds = [a.seed] if a.seed is not None else list(range(a.start, a.start + a.seeds))
    failed = 0
    for s in seeds:
        sim = cls(s, QUEUE_MIXES[a.mix], a.mix, a.mutant)
        try:
            sim.run()
        except SimFailure as e:
            failed += 1
            print(e, file=sys.stderr)
    print(f"{len(seeds) - failed}/{len(seeds)} seeds passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
