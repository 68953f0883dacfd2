"""`Node`: composes one Leveret node — store, metadata log, queues, listeners.

Start-up, in order:

1. open the data directory (refusing one held by a running node, a corrupt one,
   or another node's) and start the group-commit writer;
2. start the Raft driver hosting the metadata group. A single node is a
   cluster of one: the metadata group has one voter, elects itself, and every
   change still goes through the log (append, fsync, commit, apply), so
   clustering adds voters rather than a second code path. Committed entries
   are replayed into `MetadataState`, which drives the router and the queue
   leaders through its change records;
3. commit `DropTransient` (transient queues and exchanges did not survive the
   restart); once it is applied, everything before it has been too;
4. on first start, create the default vhost, user and permissions;
5. recover the persisted messages of durable queues;
6. listen for AMQP clients.

Time is read here (the shell), never in the pure cores: `now_ms` is passed in.
"""

from __future__ import annotations

import gc
import logging
import os
import random
from collections import Counter
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import psutil
import trio

from broker import __version__, auth
from broker.alarms import DISK, ResourceLimits, block_reason
from broker.amqp import codec
from broker.amqp.connection import default_server_properties
from broker.arguments import QueueSettings, parse_expiration
from broker.clustering import Clustering
from broker.config import DiskFreeLimit, MemoryWatermark, Settings
from broker.deadletter import dead_letter, without_cycles
from broker.message import Message
from broker.paging import PAGED_TABLE, delete_leftover_pages
from broker.queue import DeadLetter
from broker.local_queue import LocalQueue
from broker.mirroring import Mirroring
from broker.paging import encode_persisted, persisted_key
from broker.replicated_queue import ReplicatedQueue
from broker.queue_client import QueueClient, QueueUnavailable
from broker.queue_leader import MESSAGES_TABLE, QueueLeader, decode_persisted, queue_key_prefix
from broker.remote_queue import QueuePeers, serve_queue_peers
from broker.cluster_view import serve_node_status
from broker.replica_control import serve_replica_control
from broker.replica_status import serve_replica_status
from broker.queue_rates import QueueRates
from broker.routing import Router
from cluster import metadata as md
from cluster.control import serve_control
from cluster.cookie import load_cookie
from cluster.group_client import Unavailable
from cluster.logtext import RefusalLog
from cluster.membership import METADATA_GROUP
from cluster.placement import choose_home
from cluster.portmapper import Registration
from cluster.raft.driver import Applied, RaftDriver
from cluster.raft.group import RaftConfig
from cluster.raft.node import RaftNode
from cluster.transport import PeerTransport
from storage.datadir import open_data_dir, wipe_store_files
from storage.interface import Delete, Put, Store, StoreError, WriteBatch
from storage.staging import StagedWrites
from storage.writer import GroupCommitWriter

if TYPE_CHECKING:
    from broker.session import Session

log = logging.getLogger("leveret.node")

# Allocations between collections of the youngest generation (CPython's default: 700).
GC_YOUNG_THRESHOLD = 20_000
# A metadata change the cluster could not commit (no majority reachable): a channel error.
UNAVAILABLE_CODE = 541
# How long a client's call on a replicated queue that is failing over waits for its new
# leader (seconds), asking again this often.
FAILOVER_WAIT = 10.0
FAILOVER_RETRY = 0.1
# How long a starting node waits for a majority of its cluster before giving up.
CATCH_UP_TIMEOUT = 300.0
SHUTDOWN_TEXT = "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
# Store operations waiting for the writer beyond which publishers are not read from.
WRITER_BACKLOG_OPS = 50_000
# ... and octets of values (message pages, persisted messages) not yet written.
WRITER_BACKLOG_BYTES = 8 << 20
# While the store refuses writes: how often a refused metadata write is tried again, and
# how long after the last refusal a successful write clears the failure (seconds; a failing
# store is also probed once per resource sample, every second); and at most one log line
# per this many seconds about it.
STORE_RETRY_SECONDS = 1.0
STORE_ERROR_LOG_INTERVAL = 10.0
# A row written and deleted in one batch: a write that changes nothing, to probe the store.
STORE_PROBE_TABLE = "store_probe"


class _MetadataMachine:
    """The metadata group's state machine: applies commands and fans out their changes."""

    def __init__(self, node: "Node") -> None:
        self.node = node

    def apply(self, index: int, data: bytes) -> md.Applied:
        applied = self.node.metadata.apply(md.decode_command(data))
        if applied.changes:
            self.node.on_metadata_changes(applied.changes)
        return applied

    def snapshot(self) -> bytes:
        return self.node.metadata.snapshot()

    def restore(self, data: bytes) -> None:
        self.node.restore_metadata(md.MetadataState.restore(data))


class Node:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.name = settings.node_name
        self._fresh_core_state()
        self.sessions: dict[str, Session] = {}  # open connections, by id
        self.all_sessions: set[Session] = set()  # including those still in the handshake
        self.alarms: frozenset[str] = frozenset()
        # Current limits: from the settings, changed at run time by leveretctl.
        self.memory_watermark: MemoryWatermark = settings.vm_memory_high_watermark
        self.disk_free_limit: DiskFreeLimit = settings.disk_free_limit
        self._limits_changed = trio.Event()
        self.alarms_cleared = trio.Event()
        self.server_properties = default_server_properties(version=__version__)
        self.server_properties["cluster_name"] = self.name
        self.store: Store | None = None
        self._placement_random = random.Random()
        # The running core's queue traffic with other nodes (None while no core runs).
        self.queue_peers: QueuePeers | None = None
        self.writer: GroupCommitWriter | None = None
        self.driver: RaftDriver | None = None
        self.started = trio.Event()
        self.listeners: list[tuple[str, str, int]] = []
        # Why the store refused the last write, while it refuses them (see `_store_failed`),
        # and when (trio time) it last refused one.
        self.store_failure: str | None = None
        self._store_refused_at = 0.0
        self._store_log = RefusalLog(log, interval=STORE_ERROR_LOG_INTERVAL)
        self._connections = 0
        self._outer: trio.Nursery | None = None  # the process's: the core and the peer port
        self._nursery: trio.Nursery | None = None  # the core's
        self._core_scope: trio.CancelScope | None = None
        self._app_scope: trio.CancelScope | None = None  # the AMQP listener, while the app runs
        self._app_wanted = True  # stop_app / start_app; a reset keeps the app as it was
        self._core_stopped = trio.Event()
        # The message rates of the queues led here (sampled while the process runs).
        self.queue_rates = QueueRates()

    # ------------------------------------------------------------------ clocks and ids

    @staticmethod
    def now_ms() -> int:
        return int(time.time() * 1000)

    def next_message_id(self) -> int:
        self._message_ids += 1
        return self._message_ids

    def next_connection_id(self, peer: tuple[str, int]) -> str:
        self._connections += 1
        return f"<{self.name}.{self._connections}> {peer[0]}:{peer[1]}"

    # ------------------------------------------------------------------ running

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The node: the data directory and the peer port live as long as the process; the
        core inside them (writer, Raft, metadata, queues, the AMQP application) is started
        again, from an empty store, when the node is reset (`reset`, `join_cluster`)."""
        settings = self.settings
        # Refuse a bad cookie (say, a world-readable cookie file) before touching anything.
        cookie = settings.cookie or load_cookie(os.environ, Path.home())
        self.store = open_data_dir(settings.data_dir, self.name)
        try:
            async with trio.open_nursery() as nursery:
                self._outer = nursery
                # Dials leave from the node's own address, so a firewall rule between two
                # nodes' addresses separates exactly those two.
                transport = PeerTransport(self.name, cookie, local_address=settings.node_ip_address or None)
                self.clustering = Clustering(self, transport)
                serve_queue_peers(self, transport)
                serve_replica_status(self, transport)
                serve_replica_control(self, transport)
                serve_node_status(self, transport)
                await nursery.start(transport.run)
                # The peer port first: a restarted member needs its peers to elect a leader.
                host = settings.node_ip_address
                dist_port = await nursery.start(self._serve_control, host, cookie)
                self.listeners.append(("clustering", host or "::", dist_port))
                await nursery.start(Registration(self.name, dist_port, mapper_port=settings.port_mapper_port,
                                                 start_mapper=settings.port_mapper_autostart).run)
                nursery.start_soon(self.clustering.follow_members_forever)
                await nursery.start(self._run_core, None)
                nursery.start_soon(self.queue_rates.run, self)
                # The HTTP listeners live as long as the process, as the peer port does (a
                # reset restarts the core under them), from once the core has started.
                for protocol, http_port in (("http", settings.management_port),
                                            ("http/prometheus", settings.prometheus_port)):
                    if http_port:  # 0 turns the listener off
                        bound = await nursery.start(self._serve_http, protocol, host, http_port)
                        self.listeners.append((protocol, host or "::", bound))
                # Everything made at start-up (modules, metadata, recovered queues) lives as
                # long as the node: keep it out of the collector's generations, and collect the
                # young generation less often — the per-message path allocates short-lived
                # records by the thousand, and each collection pass is a latency spike.
                gc.collect()
                gc.freeze()
                gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
                self.started.set()
                task_status.started()
        finally:
            self._outer = None
            self.store.close()

    async def _run_core(self, join: str | None,
                        *, task_status: trio.TaskStatus[str | None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the core and run it until the node stops or is reset; started once the
        metadata is replayed, messages are recovered and (unless stopped) the app listens.
        With `join`, the fresh core asks that node to add it to its cluster, and is started
        with None once it is a member, or with the reason it is not (then it idles, to be
        reset again)."""
        settings = self.settings
        store = self.store
        assert store is not None
        self._fresh_core_state()
        self.queue_peers = QueuePeers(self, self.clustering.transport)
        with trio.CancelScope() as scope:
            self._core_scope = scope
            self._core_stopped = trio.Event()
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    self.writer = GroupCommitWriter(store)
                    self.writer.attach(self.staged)
                    self.staged.on_staged = self.writer.poke
                    await nursery.start(self.writer.run)
                    raft = RaftNode(self.name, RaftConfig(), incarnation=int(time.time()))
                    self.driver = RaftDriver(raft, store, self.clustering.transport, write=self.write_until_taken)
                    self.clustering.attach_core()
                    machine = _MetadataMachine(self)
                    if METADATA_GROUP in store.groups():
                        self.driver.add_group(METADATA_GROUP, machine)
                    else:
                        seeds = tuple(n for n in settings.cluster_nodes if n != self.name)
                        if join is None and seeds:
                            join = await self.clustering.formation((self.name, *seeds))
                        # A node joining waits, group empty, for the leader to add it.
                        self.driver.add_group(METADATA_GROUP, machine, voters=() if join else (self.name,))
                    await nursery.start(self.driver.run)
                    nursery.start_soon(self.queue_peers.run)
                    nursery.start_soon(self.mirroring.run)
                    if join is not None:
                        refused = await self.clustering.ask_to_join(join)
                        if refused is not None:
                            task_status.started(refused)
                            await trio.sleep_forever()
                    await self._catch_up()
                    await self._propose_defaults()
                    self._recover_messages()
                    await self.mirroring.after_recovery()
                    self.replaying = False
                    if self._app_wanted:
                        await self._start_listener(settings.node_port)
                    nursery.start_soon(self._tick_connections)
                    nursery.start_soon(self._watch_resources)
                    nursery.start_soon(self._expire_messages)
                    task_status.started(None)
            finally:
                self._nursery = None
                self._core_scope = None
                self._core_stopped.set()

    def _fresh_core_state(self) -> None:
        """What the core holds, empty: filled by replaying the store's metadata and messages."""
        self.metadata = md.MetadataState()
        self.router = Router()
        self.leaders: dict[tuple[str, str], QueueLeader] = {}
        # The clients of the queues this node leads, by (vhost, name): what `queue` returns.
        self.local_queues: dict[tuple[str, str], LocalQueue] = {}
        # The replicated queues this node hosts a replica of (and serves, while it leads one).
        self.mirroring = Mirroring(self)
        # Until the log is replayed and messages are recovered: history, not news.
        self.replaying = True
        # While one publish is handed to its queues: the dead letters they produce, routed
        # after it (see `hold_dead_letters`).
        self._held_dead_letters: list[tuple[str, str, DeadLetter, int]] | None = None
        # direct reply-to token -> (session, channel, consumer tag)
        self.reply_consumers: dict[str, tuple[Session, int, str]] = {}
        self._message_ids = 0
        self._expiring: set[QueueLeader] = set()
        # Store operations waiting for the writer's next cycle (see `stage`).
        self.staged = StagedWrites(on_written=self._staged_written)
        # Keys of persisted messages whose deletion the store refused: deleted again once
        # it takes writes, so acknowledged messages do not come back after a restart.
        self._refused_deletes: list[bytes] = []
        self.stage_message = self.staged.add_row
        self.forget_message = self.staged.delete

    # ------------------------------------------------------------------ the cluster

    @property
    def cluster_name(self) -> str:
        return self.name

    def cluster_members(self) -> frozenset[str]:
        """The members of the cluster: those of the metadata group (none while joining)."""
        status = self.driver.status(METADATA_GROUP) if self.driver is not None else None
        return status.voters | status.learners if status is not None else frozenset()

    def home_for(self, vhost: str, name: str, arguments: Any, exclusive: bool) -> str:
        """The node a new queue is homed on: per its x-queue-master-locator argument, else its
        policy's queue-master-locator, else the node's setting, among the running members.
        An exclusive queue lives and dies with its connection: always here (RabbitMQ too)."""
        if exclusive:
            return self.name
        locator = arguments.get("x-queue-master-locator")
        if not isinstance(locator, str):
            policy = self.metadata.effective_policy(vhost, name, "queue")
            locator = policy.definition.get("queue-master-locator") if policy is not None else None
        if not isinstance(locator, str):
            locator = self.settings.queue_master_locator
        if locator == "client-local":
            return self.name
        running = (self.clustering.transport.reachable() & self.cluster_members()) | {self.name}
        leaders = Counter(q.node for v in self.metadata.vhosts() for q in self.metadata.queues(v.name))
        return choose_home(locator, self.name, running, leaders, self._placement_random)

    def metadata_leader(self) -> frozenset[str]:
        """The metadata group's leader as this node knows it (none, or one node)."""
        status = self.driver.status(METADATA_GROUP) if self.driver is not None else None
        return frozenset({status.leader}) if status is not None and status.leader else frozenset()

    def reachable_nodes(self) -> frozenset[str]:
        """Other nodes this node has a working peer link to."""
        return self.clustering.transport.reachable()

    async def peer_summaries(self, nodes: tuple[str, ...]) -> dict[str, Any]:
        """cluster_status's summary of each of `nodes` other than this one that answers."""
        from broker.clustering import SUMMARY
        from cluster.transport import Replied

        found: dict[str, Any] = {}

        async def ask(name: str) -> None:
            outcome = await self.clustering.transport.call(name, SUMMARY, {}, timeout=2.0)
            if isinstance(outcome, Replied) and isinstance(outcome.value, dict):
                found[name] = outcome.value

        async with trio.open_nursery() as nursery:
            for name in nodes:
                if name != self.name:
                    nursery.start_soon(ask, name)
        return found

    async def join_cluster(self, target: str) -> str | None:
        """rabbitmqctl join_cluster (the app is stopped): leave the current cluster, reset,
        and become a member of `target`'s; None when done, else the reason it failed (the
        node is then reset, a cluster of one)."""
        refused = await self._restart_core(join=target)
        if refused is not None:
            await self._restart_core()
        return refused

    async def reset(self) -> None:
        """rabbitmqctl reset (the caller checked that the app is stopped and, for a member of
        a cluster, left it): the core stops, the store is deleted, and a fresh core starts
        as a new cluster of one, with the first start's defaults."""
        await self._restart_core()

    async def _restart_core(self, join: str | None = None) -> str | None:
        assert self._outer is not None and self._core_scope is not None and self.store is not None
        await self.wait_for_writes()
        self._core_scope.cancel()
        await self._core_stopped.wait()
        store, self.store = self.store, None
        store.close()
        wipe_store_files(self.settings.data_dir)
        self.store = open_data_dir(self.settings.data_dir, self.name)
        return await self._outer.start(self._run_core, join)

    async def _serve_app(self, host: str, port: int, *, task_status: trio.TaskStatus[int]) -> None:
        from broker.server import serve_amqp

        with trio.CancelScope() as scope:
            self._app_scope = scope
            await serve_amqp(self, host, port, task_status=task_status)

    async def _serve_control(self, host: str, cookie: str, *, task_status: trio.TaskStatus[int]) -> None:
        from broker.control_handlers import ControlHandlers

        await serve_control(ControlHandlers(self).handle, cookie=cookie, node_name=self.name, host=host,
                            port=self.settings.dist_port, peer_links=self.clustering.transport.serve_inbound,
                            task_status=task_status)

    async def _serve_http(self, protocol: str, host: str, port: int, *, task_status: trio.TaskStatus[int]) -> None:
        from broker.management.server import serve_http

        await serve_http(self, protocol, host, port, task_status=task_status)

    @property
    def app_running(self) -> bool:
        return self._app_scope is not None

    async def stop_app(self) -> None:
        """rabbitmqctl stop_app: clients are disconnected and the AMQP listener closed;
        the process, the metadata, the queues and the control endpoint stay."""
        self._app_wanted = False
        if self._app_scope is None:
            return
        scope, self._app_scope = self._app_scope, None
        await self.stop_clients()
        scope.cancel()

    async def stop_clients(self, text: str = SHUTDOWN_TEXT) -> None:
        """Close every client connection with 320 `text` and wait (3 s at most) for them to go."""
        self.close_all_connections(text)
        with trio.move_on_after(3):
            while self.all_sessions:
                await trio.sleep(0.02)

    async def wait_for_writes(self) -> None:
        """Until the writer has taken everything staged or submitted so far. A write it has
        taken finishes even if the node is cancelled next, so a clean stop keeps what was
        settled last (an auto-ack basic.get just before SIGTERM is not redelivered)."""
        if self.writer is not None:
            await self.writer.wait_for_room(0)

    async def start_app(self) -> None:
        """rabbitmqctl start_app: listen for AMQP clients again, on the port used before."""
        self._app_wanted = True
        if self._app_scope is not None or self._nursery is None:
            return
        port = next((p for proto, _h, p in self.listeners if proto == "amqp"), self.settings.node_port)
        await self._start_listener(port)

    async def _start_listener(self, port: int) -> None:
        assert self._nursery is not None
        host = self.settings.node_ip_address
        port = await self._nursery.start(self._serve_app, host, port)
        if not any(proto == "amqp" for proto, _h, _p in self.listeners):
            self.listeners.insert(0, ("amqp", host or "::", port))

    async def _catch_up(self) -> None:
        """Until this node has applied everything committed before it started: a sole voter
        elects itself, a member of a cluster waits for a leader with a majority. The barrier
        is `DropTransient` (this node's transient queues did not survive its restart; a
        cluster of one loses its transient exchanges too, as a whole RabbitMQ cluster does):
        once it is applied here, every earlier entry is."""
        assert self.driver is not None
        members = self.cluster_members()
        if members == {self.name}:
            await self.driver.campaign(METADATA_GROUP)
        barrier = md.DropTransient(self.name, exchanges=members == {self.name})
        with trio.fail_after(CATCH_UP_TIMEOUT):
            while True:
                result = await self.propose_metadata(barrier)
                if not (isinstance(result, md.Refusal) and result.code == UNAVAILABLE_CODE):
                    return
                log.info("waiting for a majority of the cluster (%s): %s",
                         ", ".join(sorted(self.cluster_members())), result.text)

    async def _propose_defaults(self) -> None:
        """The default vhost, user and permissions, on every start. Whether they are made is
        the metadata's decision (`CreateDefaults`): the first one the cluster applies makes
        them, into empty metadata only, and no later one does, so neither a restart (however
        far its replay has got) nor a node joining a cluster makes defaults of its own."""
        s = self.settings
        made = await self.propose_metadata(md.CreateDefaults(
            s.default_vhost, s.default_user, auth.hash_password(s.default_pass), auth.DEFAULT_HASHING,
            ("administrator",)))
        if made is True:
            log.info("creating user '%s', vhost '%s' and granting full permissions", s.default_user, s.default_vhost)

    def _recover_messages(self) -> None:
        assert self.store is not None
        now = self.now_ms()
        recovered = 0
        # Paged-out messages of the previous run: the persistent ones are recovered
        # below from their own records, the transient ones did not survive. Deleted
        # first: recovery pages out again under the same keys.
        leftover = delete_leftover_pages(self.store)
        if leftover.ops:
            self.submit_write(leftover)
        stale = WriteBatch()
        by_prefix = self._leaders_by_prefix()
        for key, value in self.store.items(MESSAGES_TABLE):
            leader = by_prefix.get(key[:-8])
            if leader is None or not leader.durable:
                stale.delete(MESSAGES_TABLE, key)
                continue
            exchange, routing_key, raw, body = decode_persisted(value)
            props = codec.decode_properties(raw)
            # The key names the message id: keep it, and hand out new ids above it.
            message_id = int.from_bytes(key[-8:], "big")
            self._message_ids = max(self._message_ids, message_id)
            # A per-message TTL counts again from recovery (it was valid at publish).
            expiration = parse_expiration(props.expiration) if props.expiration is not None else None
            message = Message(exchange, routing_key, props, body, persistent=True,
                              priority=props.priority or 0,
                              expiration_ms=expiration if isinstance(expiration, int) else None,
                              raw_properties=raw, id=message_id)
            if message.expiration_ms is not None:
                self.watch_expiry(leader)
            leader.recover(message, now, key)
            recovered += 1
        if stale.ops:
            self.submit_write(stale)
        if recovered:
            log.info("recovered %d persistent messages", recovered)

    # ------------------------------------------------------------------ metadata

    async def propose_metadata(self, cmd: md.Command) -> Any:
        """Commit a metadata command; its result (a value or a `Refusal`)."""
        groups = self.clustering.groups
        assert groups is not None
        outcome = await groups.propose(METADATA_GROUP, md.encode_command(cmd))
        if isinstance(outcome, Applied):
            return outcome.result.result
        if isinstance(outcome, Unavailable):
            return md.Refusal(UNAVAILABLE_CODE, f"INTERNAL_ERROR - metadata change not committed on node "
                                                f"{self.name}: {outcome.reason}")
        return md.Refusal(UNAVAILABLE_CODE, f"INTERNAL_ERROR - metadata change refused: {outcome.reason}")

    def on_metadata_changes(self, changes: tuple[md.Change, ...]) -> None:
        self.router.apply(changes)
        now = self.now_ms()
        for c in changes:
            t = type(c)
            if t is md.QueueAdded:
                self._queue_added(c.record, now, declared=True)
            elif t is md.QueueRemoved:
                self._queue_removed(c.record)
            elif t is md.QueueReplicasChanged:
                self.mirroring.replicas_changed(c.record, c.previous, now)
            elif t is md.PolicyChanged:
                self.mirroring.want_plan()
            elif t is md.PolicyApplied and c.kind == "queue":
                self.mirroring.want_plan()
                leader = self.leaders.get((c.vhost, c.name))
                q = self.metadata.queue(c.vhost, c.name)
                if leader is not None and q is not None:
                    leader.reconfigure(self._settings_for(q, c.policy), now)
                    self._track_expiry(leader)
            elif t is md.VhostRemoved:
                for session in list(self.sessions.values()):
                    if session.vhost == c.name:
                        session.force_close(320, "CONNECTION_FORCED - vhost '%s' is deleted" % c.name)

    def restore_metadata(self, state: md.MetadataState) -> None:
        self.metadata = state
        self.router = Router.from_metadata(state)
        now = self.now_ms()
        self.mirroring.restored()
        for vhost in state.vhosts():
            for q in state.queues(vhost.name):
                if (q.vhost, q.name) in self.leaders:
                    continue
                if self.mirroring.awaiting_conversion(q):
                    self._add_plain(q, now)
                elif not q.replicated:
                    self._queue_added(q, now, declared=False)

    def _settings_for(self, q: md.QueueRecord, policy: md.PolicyRecord | None = None) -> QueueSettings:
        if policy is None:
            policy = self.metadata.effective_policy(q.vhost, q.name, "queue")
        return QueueSettings.effective(q.arguments, policy.definition if policy else None)

    settings_for = _settings_for

    def _queue_added(self, q: md.QueueRecord, now: int, *, declared: bool) -> None:
        if q.replicated:
            self.mirroring.queue_added(q, now, declared=declared)
            return
        if q.node == self.name:
            self._add_plain(q, now)

    def _add_plain(self, q: md.QueueRecord, now: int) -> None:
        leader = QueueLeader(self, q.vhost, q.name, q.durable, self._settings_for(q), now)
        self.leaders[(q.vhost, q.name)] = leader
        self.local_queues[(q.vhost, q.name)] = LocalQueue(leader)
        self._track_expiry(leader)

    def _queue_removed(self, q: md.QueueRecord) -> None:
        if q.replicated:
            self.mirroring.queue_removed(q)
        leader = self.leaders.pop((q.vhost, q.name), None)
        if leader is None:
            if self.queue_peers is not None:
                self.queue_peers.queue_removed(q.vhost, q.name)
            return
        del self.local_queues[(q.vhost, q.name)]
        self._expiring.discard(leader)
        # RabbitMQ's channel cancels its consumers of a deleted queue from a gb_set of their
        # tags (rabbit_channel:handle_consuming_queue_down_or_eol): in tag order.
        for ref in sorted(leader.delete(), key=lambda r: r.tag):
            ref.session.cancel_consumer(ref.channel, ref.tag)

    def _track_expiry(self, leader: QueueLeader) -> None:
        """Watch a queue whose settings can expire messages or the queue itself; a queue
        is also watched from its first message with a per-message expiration
        (`watch_expiry`), so idle cost does not grow with queues that never expire."""
        s = leader.settings
        if s.message_ttl_ms is not None or s.expires_ms is not None:
            self._expiring.add(leader)

    def watch_expiry(self, leader: QueueLeader) -> None:
        self._expiring.add(leader)

    def serve_local(self, leader: QueueLeader) -> None:
        """This node serves the queue through `leader` now (it leads the queue's group)."""
        key = (leader.vhost, leader.name)
        self.leaders[key] = leader
        self.local_queues[key] = LocalQueue(leader)
        self._track_expiry(leader)

    def retire_local(self, shell: ReplicatedQueue) -> None:
        """This node no longer leads a replicated queue: its consumers here are cancelled
        (basic.cancel; their clients consume again, from the new leader)."""
        key = (shell.vhost, shell.name)
        if self.leaders.get(key) is shell:
            del self.leaders[key]
            self.local_queues.pop(key, None)
        self._expiring.discard(shell)
        for ref in sorted(shell.follow(), key=lambda r: r.tag):
            ref.session.cancel_consumer(ref.channel, ref.tag)

    def replace_local(self, old: QueueLeader, new: QueueLeader) -> None:
        """The queue is served by `new` from now on (it became, or stopped being, replicated)."""
        key = (new.vhost, new.name)
        self.leaders[key] = new
        self.local_queues[key] = LocalQueue(new)
        if old in self._expiring:
            self._expiring.discard(old)
            self._expiring.add(new)
        self._track_expiry(new)

    def discard_local(self, plain: QueueLeader) -> None:
        """A plain queue found converted already (its group holds it): its rows go."""
        key = (plain.vhost, plain.name)
        if self.leaders.get(key) is plain:
            del self.leaders[key]
            self.local_queues.pop(key, None)
        self._expiring.discard(plain)
        state = plain.state
        plain._forget([*state.ready_in_memory(), *state.unacked_messages(state.unacked_seqs())])
        if plain.pages is not None:
            plain.pages.drop_all()

    async def ask_queue(self, vhost: str, name: str,
                        op: Callable[[QueueClient], Awaitable[Any]]) -> tuple[QueueClient | None, Any]:
        """`op(client)` on queue (vhost, name), and the client it ran on. A replicated queue
        whose leader cannot be reached (it is failing over) is asked again, at its new leader
        once known, for up to FAILOVER_WAIT, instead of answering 404 at once."""
        deadline = trio.current_time() + FAILOVER_WAIT
        while True:
            await self.mirroring.until_served(vhost, name)
            queue = self.queue(vhost, name)
            if queue is None:
                return None, None
            result = await op(queue)
            q = self.metadata.queue(vhost, name)
            if not isinstance(result, QueueUnavailable) or q is None or not q.replicated \
                    or trio.current_time() >= deadline:
                return queue, result
            await trio.sleep(FAILOVER_RETRY)

    def start_soon(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Run `fn(*args)` as a task of the core (False, not started, if the core is not running)."""
        if self._nursery is None:
            return False
        self._nursery.start_soon(fn, *args)
        return True

    def leader(self, vhost: str, name: str) -> QueueLeader | None:
        return self.leaders.get((vhost, name))

    def queue(self, vhost: str, name: str) -> QueueClient | None:
        """The client through which sessions use queue (vhost, name), led here or on its
        home node, or None when there is no such queue."""
        local = self.local_queues.get((vhost, name))
        if local is not None:
            return local
        q = self.metadata.queue(vhost, name)
        if q is None or self.queue_peers is None:
            return None
        home = q.node
        if q.replicated:
            # The group's leader as this replica knows it may be newer than the metadata's.
            leader = self.driver.leader(q.group) if self.driver is not None else None
            if leader == self.name:
                # Elected here a moment ago: serve it now rather than at the next watch.
                self.mirroring.watch_now(q.group)
                local = self.local_queues.get((vhost, name))
                if local is not None:
                    return local
            elif leader is not None:
                home = leader
        elif home == self.name:
            return None
        return self.queue_peers.client(vhost, name, home, q.durable)

    def maybe_auto_delete(self, leader: QueueLeader) -> None:
        """An auto-delete queue goes when its last consumer does (RabbitMQ's rule)."""
        q = self.metadata.queue(leader.vhost, leader.name)
        if q is None or not q.auto_delete or not leader.had_consumers or leader.consumer_count():
            return
        if self._nursery is not None:
            self._nursery.start_soon(self.propose_metadata, md.DeleteQueue(leader.vhost, leader.name, None))

    # ------------------------------------------------------------------ messages

    def submit_write(self, batch: WriteBatch, on_done: Callable[[BaseException | None], None] | None = None) -> None:
        self.stage(batch.ops, on_done)

    def stage(self, ops: list[Any], on_done: Callable[[BaseException | None], None] | None = None) -> None:
        """Queue store operations for the writer's next cycle. Everything staged while a
        write is under way (every socket read's publishes and acks, from every queue)
        goes to the group-commit writer as one batch with one completion when the next
        cycle starts, instead of a batch and a callback per message.

        A persisted message's row goes through `stage_message` (its value, or a function
        encoding it when written) and leaves through `forget_message`, which withdraws it
        if no write has taken it yet (see storage.staging); both are the staging's own
        methods, bound once, as they run once per message."""
        self.staged.add(ops, on_done)

    def _leaders_by_prefix(self) -> dict[bytes, QueueLeader]:
        """Queue leaders by the key prefix of their rows (persisted messages and pages)."""
        return {queue_key_prefix(v, n): leader for (v, n), leader in self.leaders.items()
                if not isinstance(leader, ReplicatedQueue)}

    # ------------------------------------------------------------------ store failures
    #
    # A write the store refuses (a full disk, an I/O error) never ends the node. Nothing
    # of a refused batch is in the store, and each part is answered for: a persisted
    # message's publisher is nacked and the message stays in its queue, in memory (pages
    # naming it by id read it from there); a page stays in memory; a refused deletion is
    # made again once the store takes writes; a metadata write is tried again until it
    # is taken. Until a write succeeds the disk alarm is raised (publishers are blocked,
    # and the log says why), the queues concerned show the state `store_error`, and the
    # store is probed with a write that changes nothing once a second.

    def _staged_written(self, batch: WriteBatch, exc: BaseException | None) -> None:
        """A write cycle of staged operations finished (see `storage.staging`)."""
        if exc is None:
            self._store_outcome(None)
            return
        by_prefix = self._leaders_by_prefix()
        for op in batch.ops:
            if not isinstance(op, (Put, Delete)) or op.table not in (MESSAGES_TABLE, PAGED_TABLE):
                continue
            # Both tables key a queue's rows by its prefix and an 8-octet id (message, page).
            leader = by_prefix.get(op.key[:-8])
            if leader is not None:
                leader.store_error = str(exc)
            if op.table == MESSAGES_TABLE:
                if isinstance(op, Delete):
                    self._refused_deletes.append(op.key)
                elif leader is not None:
                    leader.not_stored(int.from_bytes(op.key[-8:], "big"), op.value)
        self._store_failed(exc)

    def _store_outcome(self, exc: BaseException | None) -> None:
        if exc is not None:
            self._store_failed(exc)
        elif self.store_failure is not None and trio.current_time() - self._store_refused_at >= STORE_RETRY_SECONDS:
            # A nearly full disk takes small writes and refuses large ones: a success right
            # after a refusal proves little, and lifting the alarm at once would let
            # publishers in to be refused again, flapping the alarm with every write.
            self._store_recovered()

    def _store_failed(self, exc: BaseException) -> None:
        raised = self.store_failure is None
        self.store_failure = str(exc)
        self._store_refused_at = trio.current_time()
        self._store_log.log(logging.ERROR, "store", "the store refused a write (%s): what it held stays in "
                            "memory, and publishers are blocked by the disk alarm until the store takes "
                            "writes again", exc)
        if raised:
            self.set_alarms(self.alarms | {DISK})

    def _store_recovered(self) -> None:
        self.store_failure = None
        log.warning("the store takes writes again")
        for leader in self.leaders.values():
            leader.store_error = None
        deletes, self._refused_deletes = self._refused_deletes, []
        if deletes:
            self.stage([Delete(MESSAGES_TABLE, key) for key in deletes])
        self._limits_changed.set()  # the disk alarm is decided afresh

    def _probe_store(self) -> None:
        """Ask a failing store whether it takes writes again."""
        if self.writer is None:
            return
        probe = WriteBatch()
        probe.put(STORE_PROBE_TABLE, b"probe", b"probe")
        probe.delete(STORE_PROBE_TABLE, b"probe")
        try:
            self.writer.submit(probe, self._store_outcome)
        except trio.ClosedResourceError:
            pass  # stopping

    async def write_until_taken(self, batch: WriteBatch) -> None:
        """Write `batch` durably, trying again every STORE_RETRY_SECONDS while the store
        refuses it: the metadata log's writes, which Raft cannot take back once handed
        over, so a full disk stalls metadata changes instead of ending the node."""
        assert self.writer is not None
        while True:
            try:
                await self.writer.write(batch)
            except (StoreError, OSError) as exc:
                self._store_failed(exc)
                await trio.sleep(STORE_RETRY_SECONDS)
                continue
            self._store_outcome(None)
            return

    def hold_dead_letters(self) -> None:
        """Until `release_dead_letters`, keep the dead letters queues produce. A publish
        routed to several queues reaches all of them before any dead letter one of them
        produces (overflow, TTL 0) reaches another: in RabbitMQ the channel sends to every
        queue process at once, and a dead letter travels later, from the queue's process.
        Never nested: `dead_letter` routes held ones and only holds when nothing is."""
        assert self._held_dead_letters is None
        self._held_dead_letters = []

    def release_dead_letters(self) -> None:
        held, self._held_dead_letters = self._held_dead_letters, None
        for vhost, queue, e, now_ms in held or ():
            self.dead_letter(vhost, queue, e, now_ms)

    def dead_letter(self, vhost: str, queue: str, e: DeadLetter, now_ms: int) -> None:
        held = self._held_dead_letters
        if held is not None:
            held.append((vhost, queue, e, now_ms))
            return
        copy = dead_letter(e.message, e.reason, queue, e.exchange, e.routing_key, now_ms,
                           message_id=self.next_message_id())
        routed: set[str] = set()
        for key in copy.routing_keys:
            routed |= self.router.route(vhost, e.exchange, key, copy.message.properties.headers).queues
        targets = without_cycles(e.reason, copy.message, sorted(routed))
        if len(targets) > 1:
            self.hold_dead_letters()
        try:
            for name in targets:
                queue = self.queue(vhost, name)
                if queue is not None:
                    queue.publish(copy.message, now_ms, None)
        finally:
            if len(targets) > 1:
                self.release_dead_letters()

    async def _expire_messages(self) -> None:
        """Applies TTL expiry and x-expires deletion; both are commands with `now_ms`."""
        while True:
            await trio.sleep(0.05)
            now = self.now_ms()
            for leader in list(self._expiring):
                if leader.deleted:
                    self._expiring.discard(leader)
                    continue
                due = leader.state.next_expiry(now)
                if due is not None and due <= now:
                    leader.expire(now)
                    leader.dispatch(now)
                expires_at = leader.state.expires_at
                if expires_at is not None and expires_at <= now and not leader.consumer_count():
                    self._expiring.discard(leader)
                    await self.propose_metadata(md.DeleteQueue(leader.vhost, leader.name, None))

    # ------------------------------------------------------------------ connections

    def register(self, session: Session) -> None:
        self.sessions[session.id] = session

    def unregister(self, session: Session, *, release_exclusive: bool = True) -> None:
        """A connection is gone. Its exclusive queues go too: in the background, unless the
        session awaits `delete_exclusive_queues` itself (a client's connection.close, whose
        close-ok waits for it)."""
        self.sessions.pop(session.id, None)
        if release_exclusive and self._nursery is not None and self._owns_exclusive(session.id):
            self._nursery.start_soon(self.delete_exclusive_queues, session.id)

    def _owns_exclusive(self, owner: str) -> bool:
        return any(q.exclusive_owner == owner for v in self.metadata.vhosts() for q in self.metadata.queues(v.name))

    async def delete_exclusive_queues(self, owner: str) -> None:
        if self._owns_exclusive(owner):
            await self.propose_metadata(md.DeleteQueuesOwnedBy(owner))

    async def _watch_resources(self) -> None:
        """Samples memory and free disk once a second (or at once when a limit changes)
        and raises or clears alarms."""
        total_ram = psutil.virtual_memory().total
        logged = None
        while True:
            limits = ResourceLimits.from_settings(self.memory_watermark, self.disk_free_limit, total_ram)
            if limits != logged:
                log.info("memory high watermark set to %d MiB, free disk space limit %d MB",
                         limits.memory_bytes >> 20, limits.disk_free_bytes // 1_000_000)
                logged = limits
            try:
                disk_free = shutil.disk_usage(self.settings.data_dir).free
            except OSError:
                disk_free = limits.disk_free_bytes  # unknown: do not alarm on a failed probe
            alarms = limits.alarms(self.memory_bytes(), disk_free)
            if self.store_failure is not None:
                # The store refuses writes, whatever the free space says (see `_store_failed`).
                alarms |= {DISK}
                self._probe_store()
            self.set_alarms(alarms)
            with trio.move_on_after(1.0):
                await self._limits_changed.wait()
                self._limits_changed = trio.Event()

    def set_resource_limits(self, *, memory: MemoryWatermark | None = None,
                            disk: DiskFreeLimit | None = None) -> None:
        """leveretctl set_vm_memory_high_watermark / set_disk_free_limit: applies at once."""
        if memory is not None:
            self.memory_watermark = memory
        if disk is not None:
            self.disk_free_limit = disk
        self._limits_changed.set()

    def set_alarms(self, alarms: frozenset[str]) -> None:
        if alarms == self.alarms:
            return
        for alarm in alarms - self.alarms:
            log.warning("%s resource limit alarm set on node %s; publishers will be blocked", alarm, self.name)
        for alarm in self.alarms - alarms:
            log.warning("%s resource limit alarm cleared on node %s", alarm, self.name)
        self.alarms = alarms
        if alarms:
            reason = block_reason(alarms)
            for session in list(self.sessions.values()):
                if session.publishing:  # the others are told when they publish
                    session.conn.block(reason)
                    session.on_output()
        else:
            cleared, self.alarms_cleared = self.alarms_cleared, trio.Event()
            for session in list(self.sessions.values()):
                session.conn.unblock()
                session.on_output()
            cleared.set()

    async def _tick_connections(self) -> None:
        while True:
            await trio.sleep(1.0)
            now = trio.current_time()
            for session in list(self.all_sessions):
                session.tick(now)

    def close_all_connections(self, text: str) -> None:
        for session in list(self.all_sessions):
            session.force_close(320, text)

    def memory_bytes(self) -> int:
        """Memory the node itself holds: resident memory less file-backed pages (LMDB's
        map), which the kernel reclaims on demand and which must not raise the alarm."""
        info = psutil.Process().memory_info()
        return info.rss - getattr(info, "shared", 0)

    def writer_lagging(self) -> bool:
        w = self.writer
        return w is not None and (w.pending_ops > WRITER_BACKLOG_OPS or w.held_bytes > WRITER_BACKLOG_BYTES)

    async def wait_for_writer(self) -> None:
        assert self.writer is not None
        await self.writer.wait_for_room(WRITER_BACKLOG_OPS // 2, WRITER_BACKLOG_BYTES // 2)
