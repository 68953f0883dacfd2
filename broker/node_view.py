"""`NodeView`: what this node knows about its queues, connections, channels and consumers,
read in one place for every reader (leveretctl's control handlers, the management HTTP
API, the Prometheus metrics), and the queue operations an operator's tool makes that are
not metadata changes (publish, get, purge).

Rows are plain dicts keyed by rabbitmqctl's info items (the management API and the
metrics reshape them); argument and client-property tables are left as mappings, for each
reader to render its own way (rabbitmqctl's typed triples, the HTTP API's JSON object).
A row may carry more than the info items (say `vhost` or `home_node`): readers pick.

Readers never reach into `QueueLeader` or `Session` objects themselves. Today the view
reads this node's leaders and sessions; a cluster-wide view answers the same calls with
rows gathered from every node (and sends the operations to the queue's leader over the
peer link), so the readers do not change when queues live elsewhere. Metadata changes
go through `propose`, the node's metadata log, like a client's.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import os
import platform
import resource
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from broker import __version__, auth
from broker.alarms import ResourceLimits
from broker.message import Message
from broker.remote_queue import ConsumerProxy
from cluster import metadata as md
from cluster.mirrors import is_replicated
from cluster.nesting import ELIDED, MAX_TABLE_DEPTH, is_container
from cluster.raft.group import LEADER
from cluster.replica_listing import replica_items

if TYPE_CHECKING:
    from broker.management.rates import SampleRange
    from broker.node import Node
    from broker.queue import Delivered
    from broker.queue_leader import QueueLeader
    from broker.session import Session

# How messages taken by `get_messages` are settled (the management API's ackmode values).
SETTLE_MODES = ("ack_requeue_true", "ack_requeue_false", "reject_requeue_true", "reject_requeue_false")


_STARTED_AT = time.monotonic()

# What each listener is for, in rabbitmqctl status' words.
LISTENER_PURPOSES = {
    "amqp": "AMQP 0-9-1",
    "clustering": "inter-node and CLI tool communication",
    "http": "HTTP API",
    "http/prometheus": "Prometheus exporter API over HTTP",
}


def plain(value: Any, depth: int = 1) -> Any:
    """A field-table value made msgpack- and JSON-friendly (RabbitMQ's CLI shows the same).
    `depth` is the level a table or array `value` sits at; deeper than the bound it is
    shown as ELIDED (cluster/nesting.py), so no stored value outgrows the stack."""
    if is_container(value) and depth > MAX_TABLE_DEPTH:
        return ELIDED
    if isinstance(value, Mapping):
        return {str(k): plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, depth + 1) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, _dt.datetime):
        return int(value.timestamp())
    return value


def pid_of(connection_id: str) -> str:
    """A connection's pid ("<node.n>") from its id ("<node.n> peer-host:port")."""
    return connection_id.split(" ", 1)[0]


def connection_pid(session: "Session") -> str:
    return pid_of(session.id)


def connection_name(session: "Session") -> str:
    return f"{session.peer[0]}:{session.peer[1]} -> {session.local[0]}:{session.local[1]}"


def channel_pid(session: "Session", number: int) -> str:
    return f"{connection_pid(session)[:-1]}.{number}>"


class NodeView:
    def __init__(self, node: "Node") -> None:
        self.node = node

    @property
    def node_name(self) -> str:
        return self.node.name

    @property
    def metadata(self) -> md.MetadataState:
        return self.node.metadata

    def leader(self, vhost: str, name: str) -> "QueueLeader | None":
        return self.node.leaders.get((vhost, name))

    @property
    def cluster_name(self) -> str:
        return self.node.cluster_name

    @property
    def alarms(self) -> frozenset[str]:
        return self.node.alarms

    @property
    def listeners(self) -> list[tuple[str, str, int]]:
        """(protocol, interface, port) of every listener open now."""
        return list(self.node.listeners)

    @property
    def loopback_users(self) -> tuple[str, ...]:
        return self.node.settings.loopback_users

    async def propose(self, cmd: md.Command) -> Any:
        """Commit a metadata change through the metadata log; its result or a `md.Refusal`."""
        return await self.node.propose_metadata(cmd)

    # ------------------------------------------------------------------ queue operations

    def exchange_accepts_publish(self, vhost: str, exchange: str) -> md.Refusal | None:
        """Why a publish to `exchange` is refused (missing, internal), as a channel refuses it."""
        router = self.node.router
        if exchange and router.exchange_ref(vhost, exchange) is None:
            return md.Refusal(404, f"NOT_FOUND - no exchange '{exchange}' in vhost '{vhost}'")
        if router.is_internal(vhost, exchange):
            return md.Refusal(403, f"ACCESS_REFUSED - cannot publish to internal exchange '{exchange}' in vhost "
                                   f"'{vhost}'")
        return None

    def publish(self, vhost: str, exchange: str, routing_key: str, properties: Any, body: bytes,
                expiration_ms: int | None) -> bool:
        """Route a message and hand it to its queues, as a channel's unconfirmed publish does;
        whether it reached any queue."""
        node = self.node
        queues = sorted(node.router.route(vhost, exchange, routing_key, properties.headers).queues)
        message = Message(exchange, routing_key, properties, body, properties.delivery_mode == 2,
                          properties.priority or 0, expiration_ms, None, node.next_message_id())
        now = node.now_ms()
        # As a channel's publish: every target queue first, the dead letters they make after.
        if len(queues) > 1:
            node.hold_dead_letters()
        try:
            for queue in queues:
                leader = node.leader(vhost, queue)
                if leader is not None:
                    leader.publish(message, now, None)
        finally:
            if len(queues) > 1:
                node.release_dead_letters()
        return bool(queues)

    def queue_counters(self, vhost: str, name: str) -> Any:
        """A queue's running `QueueCounters` (what rates are made of), None if it has no leader."""
        leader = self.leader(vhost, name)
        return leader.counters if leader is not None else None

    def queue_rates(self, vhost: str, name: str) -> dict[str, float]:
        """A queue's message rates as this node sampled them (`broker.queue_rates`), by counter
        and length name; empty if it is not led here (another node's samples are its own)."""
        if self.leader(vhost, name) is None:
            return {}
        return self.node.queue_rates.rates(vhost, name)

    def queue_history(self, vhost: str, name: str, names: Sequence[str], at: "SampleRange") -> dict[str, list[int]]:
        """A queue's past values of `names` at `at`'s times, as this node sampled them; empty
        if it is not led here (its leader's node has its history)."""
        if self.leader(vhost, name) is None:
            return {}
        return self.node.queue_rates.values(vhost, name, names, at)

    def queue_lengths(self, vhost: str, name: str) -> tuple[int, int] | None:
        """(ready messages, consumers) of a queue, None if it has no leader."""
        leader = self.leader(vhost, name)
        return (leader.message_count(), leader.consumer_count()) if leader is not None else None

    def purge(self, vhost: str, name: str) -> int | None:
        """Purge a queue; how many messages went, None if it has no leader."""
        leader = self.leader(vhost, name)
        return leader.purge(self.node.now_ms()) if leader is not None else None

    def get_messages(self, vhost: str, name: str, count: int, settle: str) -> "list[Delivered] | None":
        """Take up to `count` messages as basic.get with acknowledgement does, then settle them
        all by `settle` (one of SETTLE_MODES), as RabbitMQ's management get does; None if the
        queue has no leader. A requeued message comes back redelivered."""
        assert settle in SETTLE_MODES
        leader = self.leader(vhost, name)
        if leader is None:
            return None
        now = self.node.now_ms()
        taken = []
        for _ in range(max(count, 0)):
            got = leader.get(now, False)
            if got is None:
                break
            taken.append(got)
        seqs = tuple(g.seq for g in taken)
        if seqs:
            if settle == "ack_requeue_false":
                leader.settle(seqs, now)
            elif settle == "reject_requeue_false":
                leader.reject(seqs, now)
            else:
                leader.requeue(seqs, now)
        return taken

    # ------------------------------------------------------------------ the node

    def status(self) -> dict[str, Any]:
        """rabbitmqctl status: the process, its limits and alarms, and its listeners."""
        node = self.node
        s = node.settings
        proc = psutil.Process()
        try:
            disk_free = psutil.disk_usage(str(Path(s.data_dir).resolve())).free
        except OSError:
            disk_free = None
        meta = node.metadata
        # The limits in force now (set_vm_memory_high_watermark and set_disk_free_limit change
        # them at run time), and the bytes they come to, which rabbitmqctl status shows.
        watermark, disk_limit = node.memory_watermark, node.disk_free_limit
        limits = ResourceLimits.from_settings(watermark, disk_limit, psutil.virtual_memory().total)
        try:
            fd_limit: int | None = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        except (OSError, ValueError):
            fd_limit = None
        return {
            "pid": os.getpid(),
            "os": platform.system(),
            "uptime": int(time.monotonic() - _STARTED_AT),
            "product_name": "Leveret",
            "product_version": __version__,
            "node_name": node.name,
            "runtime": f"Python {platform.python_version()} ({sys.implementation.name})",
            "python_version": platform.python_version(),
            "app_running": node.app_running,
            "data_directory": str(Path(s.data_dir).resolve()),
            "config_files": [s.config_file] if s.config_file else [],
            "alarms": sorted(node.alarms),
            "memory_used": proc.memory_info().rss,
            "memory_calculation_strategy": "rss",
            "vm_memory_high_watermark": (
                {"relative": watermark.relative} if watermark.relative is not None
                else {"absolute": watermark.absolute}),
            "vm_memory_limit": limits.memory_bytes,
            "disk_free_limit": limits.disk_free_bytes,
            "disk_free": disk_free,
            "file_descriptors": proc.num_fds() if hasattr(proc, "num_fds") else None,
            "file_descriptor_limit": fd_limit if fd_limit is not None and fd_limit >= 0 else None,
            "connection_count": len(node.sessions),
            "queue_count": sum(len(meta.queues(v.name)) for v in meta.vhosts()),
            "virtual_host_count": len(meta.vhosts()),
            "listeners": self.listener_rows(),
        }

    def other_members(self) -> list[tuple[str, bool]]:
        """(name, reachable) of the cluster's other members, as this node sees them now."""
        reachable = self.node.reachable_nodes()
        return [(name, name in reachable) for name in sorted(self.node.cluster_members() - {self.node.name})]

    def listener_rows(self) -> list[dict[str, Any]]:
        """The listeners as rabbitmqctl status lists them (AMQP's only while the app runs)."""
        node = self.node
        return [{"node": node.name, "protocol": proto, "interface": host, "port": port,
                 "purpose": LISTENER_PURPOSES.get(proto, proto)}
                for proto, host, port in node.listeners if proto != "amqp" or node.app_running]

    def raft_groups(self) -> list[Any]:
        """The `GroupStatus` of every Raft group this node hosts (today the metadata group)."""
        driver = self.node.driver
        if driver is None:
            return []
        raft = driver.node
        return [raft.status(group) for group in sorted(raft.groups)]

    def writer_statistics(self) -> Any:
        """The group-commit writer's `WriterStatistics`, None before it starts."""
        writer = self.node.writer
        return writer.statistics() if writer is not None else None

    # ------------------------------------------------------------------ queues

    def queue_rows(self, vhost: str | None = None) -> list[dict[str, Any]]:
        """Every queue of `vhost` (of every vhost for None), in the metadata's order."""
        meta = self.metadata
        vhosts = [vhost] if vhost is not None else [v.name for v in meta.vhosts()]
        return [self.queue_row(q) for v in vhosts for q in meta.queues(v)]

    def queue_activity(self) -> list[tuple[str, str, Any, dict[str, int]]]:
        """(vhost, name, `QueueCounters`, lengths) of every queue led here: what rates are
        sampled from, without the cost of a full row (which scans messages for some items)."""
        rows = []
        for (vhost, name), leader in self.node.leaders.items():
            stats = leader.state.statistics()
            ready, unacked = stats["messages_ready"], stats["messages_unacknowledged"]
            rows.append((vhost, name, leader.counters, {"messages": ready + unacked, "messages_ready": ready,
                                                        "messages_unacknowledged": unacked}))
        return rows

    def queue_row(self, q: md.QueueRecord) -> dict[str, Any]:
        leader = self.leader(q.vhost, q.name)
        policy = self.metadata.effective_policy(q.vhost, q.name, "queue")
        state = leader.state if leader is not None else None
        stats = state.statistics() if state is not None else {}
        ready = stats.get("messages_ready", 0)
        unacked = stats.get("messages_unacknowledged", 0)
        bytes_ready = stats.get("message_bytes_ready", 0)
        bytes_unacked = stats.get("message_bytes_unacknowledged", 0)
        paged = stats.get("messages_paged_out", 0)
        bytes_paged = stats.get("message_bytes_paged_out", 0)
        exclusive_consumer = None
        exclusive_channel = ""
        if leader is not None:
            exclusive_consumer = next((c for c in leader.consumers if c.exclusive), None)
            ref = leader.refs.get(exclusive_consumer.name) if exclusive_consumer is not None else None
            if ref is not None:
                exclusive_channel = channel_pid(ref.session, ref.channel)
        owner = None
        if q.exclusive_owner is not None:
            owner = q.exclusive_owner.split(" ", 1)[0]
        consumers = leader.consumer_count() if leader is not None else 0
        persistent = _persistent(q, state) if state is not None and not paged else None
        # A queue declared with x-queue-type quorum is served as Leveret's replicated queue
        # (broker.arguments); list it with the type it was declared with, as RabbitMQ does.
        queue_type = str((q.arguments or {}).get("x-queue-type") or q.type)
        # consumer_utilisation is a classic queue metric: RabbitMQ leaves it empty for quorum queues.
        utilisation: Any = (_utilisation(leader) if leader is not None else 0) \
            if queue_type == "classic" else ""
        replicas = self.replica_items(q, queue_type, policy.definition if policy else None)
        return {
            "name": q.name,
            "vhost": q.vhost,
            "durable": q.durable,
            "auto_delete": q.auto_delete,
            "exclusive": q.exclusive_owner is not None,
            "arguments": q.arguments or {},
            "policy": policy.name if policy else "",
            "effective_policy_definition": policy.definition if policy else {},
            "pid": replicas["pid"],
            "owner_pid": owner or "",
            "exclusive_consumer_pid": exclusive_channel,
            "exclusive_consumer_tag": exclusive_consumer.tag if exclusive_consumer else "",
            "messages": ready + unacked,
            "messages_ready": ready,
            "messages_unacknowledged": unacked,
            # Unacknowledged messages stay in memory; ready ones beyond the memory window are paged out.
            "messages_ready_ram": ready - paged,
            "messages_unacknowledged_ram": unacked,
            "messages_ram": ready - paged + unacked,
            "messages_paged_out": paged,
            # Exact while every ready message is in memory; unknown ("") once some are paged out,
            # since counting those would read every page.
            "messages_persistent": persistent[0] if persistent is not None else "",
            "message_bytes_persistent": persistent[1] if persistent is not None else "",
            "message_bytes": bytes_ready + bytes_unacked,
            "message_bytes_ready": bytes_ready,
            "message_bytes_unacknowledged": bytes_unacked,
            "message_bytes_ram": bytes_ready - bytes_paged + bytes_unacked,
            "message_bytes_paged_out": bytes_paged,
            "head_message_timestamp": _head_timestamp(state) if state is not None else "",
            "disk_reads": "",
            "disk_writes": "",
            "consumers": consumers,
            "consumer_utilisation": utilisation,
            "consumer_capacity": utilisation,
            # Payload plus a per-message bookkeeping estimate: Python has no per-queue heap.
            "memory": 2048 + bytes_ready + bytes_unacked + 256 * (ready + unacked),
            "slave_pids": replicas["slave_pids"],
            "synchronised_slave_pids": replicas["synchronised_slave_pids"],
            # A queue whose writes the store refused (a full disk) says so until one succeeds.
            "state": "down" if leader is None else "store_error" if leader.store_error else "running",
            "type": queue_type,
            "leader": replicas["leader"],
            "members": replicas["members"],
            "online": replicas["online"],
            "synchronised_nodes": replicas["synchronised_nodes"],
            "follower_nodes": replicas["follower_nodes"],
            "replica_followers": replicas["replica_followers"],
            # Not an info key: the node leading the queue, what `list_queues --local` filters on.
            "home_node": self.queue_leader_node(q),
        }

    def queue_leader_node(self, q: md.QueueRecord) -> str:
        """The node leading `q` as far as this node knows: for a replicated queue this
        replica's view of its group (newer than the metadata's record), else the metadata's."""
        driver = self.node.driver
        status = driver.status(q.group) if q.replicated and driver is not None else None
        return status.leader if status is not None and status.leader is not None else q.node

    def replica_items(self, q: md.QueueRecord, queue_type: str,
                      policy: Mapping[str, Any] | None) -> dict[str, Any]:
        """`pid`, `slave_pids`, `synchronised_slave_pids`, `leader`, `members`, `online` as
        this node knows them. Exact where this node leads the queue (the leader alone knows
        which followers have caught up); elsewhere no follower is counted as synchronised,
        and `replica_status` asks the leader instead."""
        node = self.node
        driver = node.driver
        status = driver.status(q.group) if q.replicated and driver is not None else None
        leads = status is not None and status.role == LEADER
        return replica_items(
            vhost=q.vhost, name=q.name, queue_type=queue_type,
            mirrored=queue_type == "classic" and is_replicated("classic", policy),
            leader=self.queue_leader_node(q), replicas=q.replicas,
            running=(node.reachable_nodes() & node.cluster_members()) | {node.name},
            voters=status.voters if leads and status is not None else (),
            match=status.match if leads and status is not None else {},
            commit=status.commit if leads and status is not None else 0)

    # ------------------------------------------------------------------ exchanges

    def exchange_rows(self, vhost: str | None = None) -> list[dict[str, Any]]:
        meta = self.metadata
        vhosts = [vhost] if vhost is not None else [v.name for v in meta.vhosts()]
        rows = []
        for v in vhosts:
            for x in meta.exchanges(v):
                policy = meta.effective_policy(x.vhost, x.name, "exchange")
                rows.append({"name": x.name, "vhost": x.vhost, "type": x.type, "durable": x.durable,
                             "auto_delete": x.auto_delete, "internal": x.internal,
                             "arguments": x.arguments or {}, "policy": policy.name if policy else ""})
        return rows

    # ------------------------------------------------------------------ connections

    def open_sessions(self) -> list["Session"]:
        return [s for s in self.node.sessions.values() if not s.closed]

    def find_connection(self, ident: str) -> "Session | None":
        """An open connection by its pid, its name ("peer -> local") or its id."""
        for s in self.open_sessions():
            if ident in (connection_pid(s), connection_name(s), s.id):
                return s
        return None

    def close_connection(self, ident: str, reason: str) -> bool:
        """Close a connection with 320 CONNECTION_FORCED and `reason`; False if there is none."""
        session = self.find_connection(ident)
        if session is None:
            return False
        session.force_close(320, f"CONNECTION_FORCED - {reason}")
        return True

    def connection_rows(self) -> list[dict[str, Any]]:
        rows = []
        for s in self.open_sessions():
            conn = s.conn
            rows.append({
                "pid": connection_pid(s),
                "name": connection_name(s),
                "port": s.local[1],
                "host": s.local[0],
                "peer_port": s.peer[1],
                "peer_host": s.peer[0],
                "ssl": False,
                # No TLS listener: the TLS items are empty, as RabbitMQ shows them for plain TCP.
                **{key: "" for key in ("ssl_protocol", "ssl_key_exchange", "ssl_cipher", "ssl_hash",
                                       "peer_cert_subject", "peer_cert_issuer", "peer_cert_validity")},
                "protocol": [0, 9, 1],
                "auth_mechanism": conn.mechanism or "",
                "user": s.username or "",
                "vhost": s.vhost,
                "timeout": conn.heartbeat,
                "frame_max": conn.frame_max,
                "channel_max": conn.channel_max,
                "client_properties": conn.client_properties or {},
                "connected_at": s.connected_at,
                "state": "blocked" if conn.blocked else "running",
                "channels": len(conn.channels),
                "send_pend": conn.pending_output,
            })
        return rows

    def channel_rows(self) -> list[dict[str, Any]]:
        rows = []
        for s in self.open_sessions():
            for number, ch in s.conn.channels.items():
                rows.append({
                    "pid": channel_pid(s, number),
                    "connection": connection_pid(s),
                    "name": f"{connection_name(s)} ({number})",
                    "connection_name": connection_name(s),
                    "peer_host": s.peer[0],
                    "peer_port": s.peer[1],
                    "number": number,
                    "user": s.username or "",
                    "vhost": s.vhost,
                    "transactional": ch.tx.name != "NONE",
                    "confirm": ch.confirm_mode,
                    "consumer_count": len(ch.consumers),
                    "messages_unacknowledged": len(ch.unacked),
                    "messages_unconfirmed": 0,
                    "messages_uncommitted": 0,
                    "acks_uncommitted": 0,
                    "prefetch_count": ch.consumer_prefetch,
                    "global_prefetch_count": ch.channel_prefetch,
                })
        return rows

    def consumer_rows(self, vhost: str | None = None) -> list[dict[str, Any]]:
        """The consumers on this node's connections of the queues led here."""
        return [row for row in self.led_consumer_rows(vhost) if row["node"] == self.node_name]

    def led_consumer_rows(self, vhost: str | None = None) -> list[dict[str, Any]]:
        """Every consumer of the queues led here, wherever its connection is, with the node
        of its connection (`node`) and the connection's pid (`connection`). A consumer on a
        connection here has a complete row; one on another node's (its endpoint here a
        `ConsumerProxy`) has what the queue knows of it, and none of the connection's and
        channel's items, which that node's channel row completes (`broker.cluster_clients`)."""
        meta = self.metadata
        vhosts = [vhost] if vhost is not None else [v.name for v in meta.vhosts()]
        rows = []
        for q in (q for v in vhosts for q in meta.queues(v)):
            leader = self.leader(q.vhost, q.name)
            if leader is None:
                continue
            active = leader.consumers.active
            for c in leader.consumers:
                ref = leader.refs.get(c.name)
                if ref is None:
                    continue
                is_active = active is None or active is c
                row: dict[str, Any] = {
                    "queue_name": q.name,
                    "vhost": q.vhost,
                    "channel_number": ref.channel,
                    "consumer_tag": c.tag,
                    "exclusive": c.exclusive,
                    "ack_required": not ref.no_ack,
                    "active": is_active,
                    "activity_status": ("single_active" if active is not None else "up") if is_active
                    else "waiting",
                    "arguments": {"x-priority": c.priority} if c.priority else {},
                }
                session = ref.session
                if isinstance(session, ConsumerProxy):
                    row.update(node=session.node, connection=pid_of(session.id))
                    rows.append(row)
                    continue
                ch = session.conn.channel(ref.channel)
                rows.append({
                    **row,
                    "node": self.node_name,
                    "connection": connection_pid(session),
                    "channel_pid": channel_pid(session, ref.channel),
                    "connection_name": connection_name(session),
                    "peer_host": session.peer[0],
                    "peer_port": session.peer[1],
                    "user": session.username or "",
                    "prefetch_count": ch.consumer_prefetch if ch is not None else 0,
                })
        return rows

    # ------------------------------------------------------------------ definitions

    def definitions(self) -> dict[str, Any]:
        """The definitions document rabbitmqctl export_definitions and GET /api/definitions give."""
        meta = self.metadata
        vhosts = meta.vhosts()
        return {
            "rabbit_version": __version__,
            "leveret_version": __version__,
            "users": [{"name": u.name, "password_hash": u.password_hash, "hashing_algorithm": u.hashing_algorithm,
                       "tags": list(auth.user_tags(u)), "limits": {}} for u in meta.users()],
            "vhosts": [{"name": v.name, "limits": [],
                        "metadata": {"description": v.description, "tags": list(v.tags)}} for v in vhosts],
            "permissions": [{"user": p.user, "vhost": p.vhost, "configure": p.configure, "write": p.write,
                             "read": p.read} for p in meta.permissions()],
            "topic_permissions": [{"user": p.user, "vhost": p.vhost, "exchange": p.exchange, "write": p.write,
                                   "read": p.read} for p in meta.topic_permissions()],
            "parameters": [],
            "global_parameters": [],
            "policies": [{"vhost": p.vhost, "name": p.name, "pattern": p.pattern, "apply-to": p.apply_to,
                          "definition": plain(p.definition), "priority": p.priority} for p in meta.policies()],
            # Exclusive queues belong to a connection and are not definitions (rabbit_definitions).
            "queues": [{"name": q.name, "vhost": q.vhost, "durable": q.durable, "auto_delete": q.auto_delete,
                        "type": q.type, "arguments": plain(q.arguments)}
                       for v in vhosts for q in meta.queues(v.name) if q.exclusive_owner is None],
            "exchanges": [{"name": x.name, "vhost": x.vhost, "type": x.type, "durable": x.durable,
                           "auto_delete": x.auto_delete, "internal": x.internal, "arguments": plain(x.arguments)}
                          for v in vhosts for x in meta.exchanges(v.name)
                          if x.name and not x.name.startswith("amq.")],
            "bindings": [{"source": b.source, "vhost": b.vhost, "destination": b.destination,
                          "destination_type": b.destination_kind, "routing_key": b.routing_key,
                          "arguments": plain(b.arguments)}
                         for v in vhosts for b in meta.bindings(v.name)],
        }


def _persistent(q: md.QueueRecord, state: Any) -> tuple[int, int]:
    """(messages, bytes) RabbitMQ counts as persistent: persistent messages in a durable queue."""
    if not q.durable:
        return 0, 0
    messages = [m for m in state.ready_in_memory() if m.persistent]
    messages += [m for m in state.unacked_messages(state.unacked_seqs()) if m.persistent]
    return len(messages), sum(m.size for m in messages)


def _head_timestamp(state: Any) -> Any:
    """The timestamp property of the next message to deliver, "" without one (as RabbitMQ shows)."""
    for _seq, message, _redelivered in state.ready():
        stamp = plain(getattr(message.properties, "timestamp", None))
        return stamp if isinstance(stamp, int) else ""
    return ""


def _utilisation(leader: "QueueLeader") -> float | int:
    """consumer_utilisation: 0 without consumers (as RabbitMQ 3.10 shows), else the share of
    consumers that could take a message now. RabbitMQ averages that over time; Leveret
    reports the present moment, which is 1.0 for an idle queue with consumers as RabbitMQ's is."""
    consumers = list(leader.consumers)
    if not consumers:
        return 0
    refs = [leader.refs.get(c.name) for c in consumers]
    able = sum(1 for ref in refs if ref is not None and ref.session.can_deliver(ref.channel, ref.tag))
    return able / len(consumers)
