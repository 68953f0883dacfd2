"""`Mirroring`: a node's replicated queues — hosting their groups, taking over as master,
following the metadata's replica sets, and converting queues as policies change.

Who decides what (see docs/mirroring.md):

- **Replica sets** are metadata (`QueueRecord.group` and `.replicas`). The node
  declaring a queue plans its replicas (`cluster.mirrors.plan_replicas`); afterwards
  the metadata leader re-plans every queue when policies, queues or cluster members
  change, and commits `SetQueueReplicas` where the plan differs.
- **Hosting.** Every node named in a queue's replicas hosts its group with a
  `QueueMachine` and a `ReplicatedQueue` shell. Replicas named at declaration create
  the group with those voters; a node added later hosts it empty and waits for the
  leader to add it (learner, caught up from a snapshot and the log, then voter).
- **Masters.** A watch (as the Raft driver reports changes, and every `SWEEP_INTERVAL`)
  compares each group's Raft role with its shell: the node that leads a group serves the
  queue (its shell becomes active and the node's local queue), records itself as the queue's node in the metadata (so every
  node routes there), and moves the group's membership to the metadata's replica set,
  one node at a time. A node that stops leading cancels its consumers.
- **Conversion.** A plain queue becoming mirrored (a policy set) starts its group on
  its home node with its current state as the log's first entry, keeping its
  consumers and delivery handles; its rows are deleted once that entry is committed.
  A node that stops half-way finishes on restart (`after_recovery`). A replicated
  queue whose policy is cleared stays a group, with one replica: going back to rows
  would need the rows written and the log dropped in one step on every replica.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import trio

from broker.local_queue import LocalQueue
from broker.queue_machine import QueueMachine
from broker.queue_snapshot import state_from_bytes, state_to_bytes
from broker.replicated_queue import CONVERTED_TERM, ReplicatedQueue, replica_proposer
from cluster import metadata as md
from cluster.logtext import peer_text
from cluster.membership import METADATA_GROUP, add_member, remove_member
from cluster.mirrors import is_replicated, plan_replicas, queue_type_of, sync_mode_of
from cluster.raft.driver import Applied
from cluster.raft.group import LEADER

if TYPE_CHECKING:
    from broker.node import Node

log = logging.getLogger("leveret.mirroring")

# How often every hosted group is compared with its shell and the metadata (seconds);
# groups whose Raft role, leader or members change are looked at at once.
SWEEP_INTERVAL = 0.5
# How long a node named out of a queue's replicas keeps hosting the group, so the leader
# can still commit the membership change that removes it (seconds).
LEAVE_GRACE = 10.0
# How long a declare (or a call from another node) waits for a new or failing-over
# replicated queue to have a leader, and how often it looks (seconds).
SERVE_TIMEOUT = 10.0
SERVE_POLL = 0.005
# The metadata leader re-plans replica sets at most this often (seconds).
PLAN_INTERVAL = 0.2


# Groups made for a plain queue becoming replicated (their first voter is the queue's home).
CONVERTED_PREFIX = "q.c."


def new_group_id(converted: bool = False) -> str:
    return f"{CONVERTED_PREFIX if converted else 'q.'}{random.getrandbits(64):016x}"


class Mirroring:
    def __init__(self, node: "Node") -> None:
        self.node = node
        self.proposer = replica_proposer(node.name)
        # group -> this node's shell of it
        self.shells: dict[str, ReplicatedQueue] = {}
        # groups whose membership is being changed by a task here
        self._reconciling: set[str] = set()
        # groups this node was named out of -> when it may stop hosting them
        self._leaving: dict[str, float] = {}
        # (group, term) for which this node recorded itself as the queue's node
        self._recorded: set[tuple[str, int]] = set()
        self._plan_wanted = trio.Event()
        self._nursery: trio.Nursery | None = None
        # Members seen down, since when (trio time): lost once down mirror_replacement_delay.
        self._down_since: dict[str, float] = {}
        self._last_seen: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        # Manual-sync groups whose missing replicas `sync_queue` asked to add.
        self.sync_requested: set[str] = set()

    # ------------------------------------------------------------------ placement of new queues

    def plan_new(self, vhost: str, name: str, arguments: Any, home: str,
                 exclusive: bool) -> tuple[str, tuple[str, ...]]:
        """(group, replicas) for a queue about to be declared: ("", ()) for a plain queue
        (decided first: a plain declare costs no plan)."""
        if exclusive:
            return "", ()
        node = self.node
        policy = node.metadata.effective_policy(vhost, name, "queue")
        definition = policy.definition if policy is not None else None
        queue_type = queue_type_of(arguments)
        if not is_replicated(queue_type, definition):
            return "", ()
        plan = plan_replicas(
            queue_type=queue_type, arguments=arguments, policy=definition,
            members=self._members(), running=self._running(), current=(), leader=None, home=home,
            replica_counts=self._replica_counts())
        return new_group_id(), plan.members

    def _members(self) -> tuple[str, ...]:
        return tuple(sorted(self.node.cluster_members() | {self.node.name}))

    def _running(self) -> tuple[str, ...]:
        node = self.node
        return tuple(sorted((node.reachable_nodes() & node.cluster_members()) | {node.name}))

    def _replica_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        metadata = self.node.metadata
        for v in metadata.vhosts():
            for q in metadata.queues(v.name):
                for n in (q.replicas or (q.node,)):
                    counts[n] = counts.get(n, 0) + 1
        return counts

    # ------------------------------------------------------------------ metadata changes

    def queue_added(self, q: md.QueueRecord, now: int, *, declared: bool) -> None:
        if self.node.replaying:
            return  # hosted from the metadata the replay ends with (`sweep`)
        if self.node.name in q.replicas:
            existed = self._stored(q.group)
            self._host(q, now, voters=q.replicas if declared else ())
            if declared and not existed and q.node == self.node.name:
                # The declaring node's choice of leader: elected at once instead of after a timeout.
                self.node.driver.campaign_soon(q.group)
        self.want_plan()

    def queue_removed(self, q: md.QueueRecord) -> None:
        shell = self.shells.pop(q.group, None)
        if shell is None:
            if self._stored(q.group):
                # Replayed: the group was left in the store; host it to drop it.
                self._host(q, self.node.now_ms(), voters=())
                self.shells.pop(q.group, None)
                self.node.driver.remove_group(q.group)
            return
        self._leaving.pop(q.group, None)
        if shell.active:
            self.node.retire_local(shell)
        self.node.driver.remove_group(q.group)

    def replicas_changed(self, q: md.QueueRecord, previous: md.QueueRecord, now: int) -> None:
        if self.node.replaying:
            return  # hosted and converted from the metadata the replay ends with
        if not previous.replicated and q.replicated:
            self._become_replicated(q, now)
        elif q.replicated:
            self._follow_replica_set(q, now)
        self.watch_now(q.group)  # a leader here moves its membership now

    def _follow_replica_set(self, q: md.QueueRecord, now: int) -> None:
        """Host `q`'s group if this node is named, leave it (after the grace) if not."""
        me = self.node.name
        if me in q.replicas:
            self._leaving.pop(q.group, None)
            if q.group not in self.shells:
                self._host(q, now, voters=())
        elif q.group in self.shells and q.group not in self._leaving:
            self._leaving[q.group] = trio.current_time() + LEAVE_GRACE

    def restored(self) -> None:
        """The metadata was replaced by a snapshot (a lagging replica caught up from one)."""
        if not self.node.replaying:
            self.sweep()

    def sweep(self) -> None:
        """Host every group the metadata names this node in, leave every other one."""
        node = self.node
        now = node.now_ms()
        named: set[str] = set()
        for v in node.metadata.vhosts():
            for q in node.metadata.queues(v.name):
                if q.replicated and node.name in q.replicas and not self.awaiting_conversion(q):
                    named.add(q.group)
                    self._follow_replica_set(q, now)
        for group in [g for g in self.shells if g not in named]:
            shell = self.shells[group]
            if shell.active:
                continue  # still leading: it moves its membership first (the watch)
            if group not in self._leaving:
                self._leaving[group] = trio.current_time() + LEAVE_GRACE

    def awaiting_conversion(self, q: md.QueueRecord) -> bool:
        """A queue this node was converting to a replicated one when it stopped, before its
        group was created: it is still the plain queue its rows hold."""
        return (q.replicated and q.group.startswith(CONVERTED_PREFIX) and q.node == self.node.name
                and not self._stored(q.group))

    def _stored(self, group: str) -> bool:
        store = self.node.store
        return store is not None and group in store.groups()

    async def after_recovery(self) -> None:
        """After replay and message recovery: finish conversions to replicated queues that
        the replay found started. A plain queue here whose metadata says replicated is either
        converted already (its group applied the load entry: the group has the queue and the
        recovered rows are stale) or not (its state, with the recovered rows, starts the log)."""
        node = self.node
        self.sweep()
        now = node.now_ms()
        for v in node.metadata.vhosts():
            for q in node.metadata.queues(v.name):
                plain = node.leaders.get((q.vhost, q.name))
                if not q.replicated or plain is None or isinstance(plain, ReplicatedQueue):
                    continue
                shell = self.shells.get(q.group)
                if shell is not None:
                    status = node.driver.status(q.group)
                    with trio.move_on_after(SERVE_TIMEOUT):
                        if status is not None:
                            await node.driver.wait_applied(q.group, status.commit)
                    if shell.machine.loaded:
                        node.discard_local(plain)
                        continue
                self._become_replicated(q, now)

    def _host(self, q: md.QueueRecord, now: int, voters: tuple[str, ...]) -> ReplicatedQueue:
        node = self.node
        settings = node.settings_for(q)
        machine = QueueMachine(q.name, settings, now)
        shell = ReplicatedQueue(node, q.vhost, q.name, q.durable, settings, now, q.group, machine, self.proposer)
        self.shells[q.group] = shell
        node.driver.add_group(q.group, machine, voters=voters)
        shell.state = machine.state  # restored from the store, if it had the group
        return shell

    def _become_replicated(self, q: md.QueueRecord, now: int) -> None:
        """A plain queue is mirrored from now on. Its home node starts the group alone, with
        the queue's state as the first entry, and hands it its consumers; the other replicas
        wait to be added."""
        node = self.node
        plain = node.leaders.get((q.vhost, q.name))
        if plain is None or isinstance(plain, ReplicatedQueue):
            self._follow_replica_set(q, now)
            return
        plain.state.page_in_all()
        state_bytes = state_to_bytes(plain.state)
        shell = self.shells.get(q.group) or self._host(q, now, voters=(node.name,))
        shell.machine.state = shell.state = state_from_bytes(state_bytes)
        shell.take_over(plain)
        node.replace_local(plain, shell)
        node.driver.campaign_soon(q.group)
        rows = [*plain.state.ready_in_memory(), *plain.state.unacked_messages(plain.state.unacked_seqs())]

        def loaded(committed: bool) -> None:
            if committed:
                plain._forget(rows)
                if plain.pages is not None:
                    plain.pages.drop_all()
            else:
                log.error("queue '%s' in vhost '%s' could not start its replicated log; its rows are kept",
                          peer_text(q.name), peer_text(q.vhost))

        shell.convert_from(state_bytes, loaded)

    # ------------------------------------------------------------------ the watch

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._plan_forever)
            next_sweep = trio.current_time()
            while True:
                # Groups that changed role, leader or members are looked at as soon as the
                # Raft driver applies the change; all of them once per SWEEP_INTERVAL (a
                # retry of a membership move, a leader deposed without any traffic).
                changed = await self.node.driver.wait_changes(max(0.0, next_sweep - trio.current_time()))
                if trio.current_time() >= next_sweep:
                    self._watch(nursery)
                    next_sweep = trio.current_time() + SWEEP_INTERVAL
                elif changed:
                    self._watch(nursery, changed)

    def watch_now(self, group: str | None = None) -> None:
        if self._nursery is not None:
            self._watch(self._nursery, None if group is None else (group,))

    async def until_served(self, vhost: str, name: str, timeout: float = SERVE_TIMEOUT) -> None:
        """Until a replicated queue has a leader this node can reach (a queue just declared,
        or failing over: RabbitMQ's channel likewise waits for a mirror's promotion),
        `timeout` at most; at once for anything else. A node hosting a replica knows the
        leader from its group, any other node from the metadata."""
        node = self.node
        with trio.move_on_after(timeout):
            while True:
                q = node.metadata.queue(vhost, name)
                if q is None or not q.replicated:
                    return
                shell = self.shells.get(q.group)
                if shell is None:
                    if q.node == node.name or q.node in node.reachable_nodes():
                        return
                else:
                    self.watch_now(q.group)
                    if shell.active:
                        return
                    status = node.driver.status(shell.group)
                    if status is not None and status.leader is not None and status.leader != node.name \
                            and status.leader in node.reachable_nodes():
                        return
                await trio.sleep(SERVE_POLL)

    def _lost(self, now: float) -> frozenset[str]:
        """Members down longer than the replacement delay (re-planned when that happens)."""
        running = self._running()
        members = self._members()
        if (members, running) != self._last_seen:
            # A node joined, left, was forgotten, went down or came back: plans may change.
            self._last_seen = (members, running)
            self.want_plan()
        down = set(members) - set(running)
        for n in [n for n in self._down_since if n not in down]:
            del self._down_since[n]
        delay = self.node.settings.mirror_replacement_delay
        lost = set()
        for n in down:
            since = self._down_since.setdefault(n, now)
            if now - since >= delay:
                lost.add(n)
                if now - since < delay + SWEEP_INTERVAL * 2:
                    self.want_plan()
        return frozenset(lost)

    def _watch(self, nursery: trio.Nursery, groups: Iterable[str] | None = None) -> None:
        """Bring the shells of `groups` (every hosted group if None) in line with their Raft
        role, and have the groups this node leads follow the metadata."""
        node = self.node
        driver = node.driver
        now = trio.current_time()
        if groups is None:
            self._lost(now)
            watched = list(self.shells.items())
        else:
            watched = [(g, self.shells[g]) for g in groups if g in self.shells]
        for group, shell in watched:
            status = driver.status(group)
            if status is None:
                continue
            leads = status.role == LEADER
            if leads and (not shell.active or shell.term != status.term):
                if shell.active and shell.term == CONVERTED_TERM:
                    shell.adopt_term(status.term)  # a converted queue's first election: nothing to take over
                else:
                    if shell.active:
                        node.retire_local(shell)
                    q = node.metadata.queue(shell.vhost, shell.name)
                    shell.lead(status.term, node.settings_for(q) if q is not None else shell.settings)
                    node.serve_local(shell)
                    log.info("queue '%s' in vhost '%s' led here from term %d: %d ready, %d delivered "
                             "and unsettled (returned to ready)", peer_text(shell.name),
                             peer_text(shell.vhost), status.term, shell.state.messages_ready,
                             shell.state.messages_unacknowledged)
            elif not leads and shell.active and shell.term != CONVERTED_TERM:
                log.info("queue '%s' in vhost '%s' no longer led here (term %d, leader %s)",
                         peer_text(shell.name), peer_text(shell.vhost), status.term, status.leader)
                node.retire_local(shell)
            if leads:
                self._record_leader(shell, status.term, nursery)
                self._reconcile(shell, status.voters | status.learners, nursery)
            leave_at = self._leaving.get(group)
            if leave_at is not None and not shell.active and (
                    now >= leave_at or node.name not in (status.voters | status.learners)):
                del self._leaving[group]
                self.shells.pop(group, None)
                if shell.active:
                    node.retire_local(shell)
                driver.remove_group(group)

    def _record_leader(self, shell: ReplicatedQueue, term: int, nursery: trio.Nursery) -> None:
        node = self.node
        q = node.metadata.queue(shell.vhost, shell.name)
        if q is None or q.node == node.name or (shell.group, term) in self._recorded:
            return
        self._recorded.add((shell.group, term))
        nursery.start_soon(node.propose_metadata, md.SetQueueNode(shell.vhost, shell.name, node.name))

    def _reconcile(self, shell: ReplicatedQueue, members: frozenset[str], nursery: trio.Nursery) -> None:
        q = self.node.metadata.queue(shell.vhost, shell.name)
        if q is None or q.group != shell.group or shell.group in self._reconciling:
            return
        wanted = frozenset(q.replicas)
        if not wanted or wanted == members:
            self.sync_requested.discard(shell.group)
            return
        if not (wanted - members) <= self.node.reachable_nodes():
            # A replica to add is down: add it once it is back (removals first meanwhile).
            wanted = wanted & (members | self.node.reachable_nodes())
        if wanted - members and self.sync_mode(q) == "manual" and shell.group not in self.sync_requested \
                and shell.state.messages:
            # ha-sync-mode manual: a new mirror gets nothing until `sync_queue` (an empty
            # queue has nothing to copy: its new mirrors are synchronised at once).
            wanted = wanted & members
        if wanted != members and wanted:
            self._reconciling.add(shell.group)
            nursery.start_soon(self._change_members, shell.group, frozenset(wanted), members)

    def sync_mode(self, q: md.QueueRecord) -> str:
        policy = self.node.metadata.effective_policy(q.vhost, q.name, "queue")
        definition = policy.definition if policy is not None else None
        return sync_mode_of(queue_type_of(q.arguments), definition)

    def request_sync(self, group: str) -> bool:
        """`sync_queue`: add the replicas a manual-sync queue still lacks (the leader's side);
        False if this node does not lead the group."""
        shell = self.shells.get(group)
        if shell is None or not shell.active:
            return False
        self.sync_requested.add(group)
        self.watch_now(group)
        return True

    def cancel_sync(self, group: str) -> bool:
        """`cancel_sync_queue`: stop adding replicas; a learner still catching up is removed."""
        shell = self.shells.get(group)
        if shell is None or not shell.active:
            return False
        self.sync_requested.discard(group)
        status = self.node.driver.status(group)
        client = self.node.clustering.groups
        if status is not None and client is not None and self._nursery is not None:
            for learner in sorted(status.learners):
                self._nursery.start_soon(remove_member, client, group, learner)
        return True

    async def _change_members(self, group: str, wanted: frozenset[str], members: frozenset[str]) -> None:
        """One step towards `wanted`: add a missing replica (learner, then voter once caught
        up), or remove one too many."""
        client = self.node.clustering.groups
        try:
            if client is None:
                return
            missing = sorted(wanted - members)
            extra = sorted(members - wanted)
            if missing:
                outcome: Any = await add_member(client, group, missing[0])
            elif extra:
                outcome = await remove_member(client, group, extra[0])
            else:
                return
            if not isinstance(outcome, Applied):
                log.info("replica change of group %s: %s", group, outcome.reason)
                await trio.sleep(1.0)
        finally:
            self._reconciling.discard(group)

    # ------------------------------------------------------------------ planning (metadata leader)

    def want_plan(self) -> None:
        self._plan_wanted.set()

    async def _plan_forever(self) -> None:
        while True:
            await self._plan_wanted.wait()
            self._plan_wanted = trio.Event()
            await trio.sleep(PLAN_INTERVAL)
            if self.node.metadata_leader() == frozenset({self.node.name}):
                await self._plan_all()

    async def _plan_all(self) -> None:
        node = self.node
        members, running = self._members(), self._running()
        counts = self._replica_counts()
        for v in node.metadata.vhosts():
            for q in node.metadata.queues(v.name):
                if q.exclusive_owner is not None:
                    continue
                policy = node.metadata.effective_policy(q.vhost, q.name, "queue")
                definition = policy.definition if policy is not None else None
                if not q.replicated and not is_replicated(queue_type_of(q.arguments), definition):
                    continue
                # (A replicated queue whose policy went keeps its group, with one replica.)
                plan = plan_replicas(
                    queue_type=queue_type_of(q.arguments), arguments=q.arguments, policy=definition,
                    members=members, running=running, current=q.replicas or (q.node,),
                    leader=q.node, home=q.node, replica_counts=counts,
                    lost=self._lost(trio.current_time()))
                if not plan.members or q.replicated and tuple(plan.members) == q.replicas:
                    continue  # (no members: every replica was on a forgotten node)
                group = q.group or new_group_id(converted=True)
                await node.propose_metadata(md.SetQueueReplicas(q.vhost, q.name, group, tuple(plan.members)))


__all__ = ["Mirroring", "METADATA_GROUP"]
