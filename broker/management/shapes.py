"""RabbitMQ 3.10's management JSON objects, built from `NodeView` rows and records (pure).

Each function takes what the view returned and gives the object RabbitMQ's
rabbit_mgmt_format would: absent values as null, argument tables as JSON objects,
connection and channel summaries nested where RabbitMQ nests them. Fields that describe
Erlang internals (garbage_collection, reductions, backing_queue_status) are left out.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from typing import Any

from broker import auth
from broker.management.rates import MESSAGE_STATS, QUEUE_TOTALS, with_details
from broker.node_view import plain
from cluster import metadata as md

# RabbitMQ's version whose API Leveret answers as (clients compare it).
RABBITMQ_VERSION = "3.10.8"

EXCHANGE_TYPES = (
    ("direct", "AMQP direct exchange, as per the AMQP specification"),
    ("fanout", "AMQP fanout exchange, as per the AMQP specification"),
    ("headers", "AMQP headers exchange, as per the AMQP specification"),
    ("topic", "AMQP topic exchange, as per the AMQP specification"),
)
AUTH_MECHANISMS = (
    ("PLAIN", "SASL PLAIN authentication mechanism"),
    ("AMQPLAIN", "QPid AMQPLAIN mechanism"),
)


def exchange_types() -> list[dict[str, Any]]:
    return [{"name": name, "description": text, "enabled": True} for name, text in EXCHANGE_TYPES]


def _or_null(value: Any) -> Any:
    """rabbitmqctl shows an absent value as ""; the HTTP API as null."""
    return None if value == "" else value


# Queue fields the API shows as the view has them; and those rabbitmqctl shows as "" where
# the API shows null.
_QUEUE_AS_IS = ("auto_delete", "consumers", "durable", "exclusive", "memory", "message_bytes",
                "message_bytes_paged_out", "message_bytes_ram", "message_bytes_ready", "message_bytes_unacknowledged",
                "messages_paged_out", "messages_ram", "messages_ready_ram", "messages_unacknowledged_ram", "name",
                "state", "type", "vhost")
_QUEUE_OR_NULL = ("consumer_capacity", "consumer_utilisation", "exclusive_consumer_tag", "head_message_timestamp",
                  "message_bytes_persistent", "messages_persistent", "policy")


def queue_json(row: Mapping[str, Any], counts: Mapping[str, int], rates: Mapping[str, float],
               charted: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """One queue as GET /api/queues shows it. `counts` are its message_stats counters, `rates`
    their rates and its lengths' (as its leader's node sampled them), `charted` the chart
    items of each when a chart was asked for (`rates.charts`)."""
    out: dict[str, Any] = {
        **{k: row[k] for k in _QUEUE_AS_IS},
        **{k: _or_null(row[k]) for k in _QUEUE_OR_NULL},
        "arguments": plain(row["arguments"]),
        "effective_policy_definition": plain(row["effective_policy_definition"]),
        "message_stats": with_details(counts, rates, MESSAGE_STATS, charted),
        **with_details(row, rates, QUEUE_TOTALS, charted),
        "node": row["home_node"],
        "operator_policy": None,
        "recoverable_slaves": None,
        "single_active_consumer_tag": None,
    }
    if row["type"] != "classic":
        # Quorum queues: their Raft members in the order the queue was created, the leader,
        # and the members running now.
        out.update(leader=row["leader"], members=row["members"], online=row["online"] or [])
    elif "ha-mode" in (row["effective_policy_definition"] or {}):
        # A classic queue under an ha-mode policy: its mirrors on running nodes, those that
        # hold every committed message, and every mirror it has (down ones too), as
        # RabbitMQ 3.10 lists slave_nodes, synchronised_slave_nodes and recoverable_slaves.
        mirrors = list(row.get("follower_nodes") or [])
        synchronised = list(row.get("synchronised_nodes") or [])[1:]
        out.update(slave_nodes=mirrors, synchronised_slave_nodes=[n for n in synchronised if n in mirrors],
                   recoverable_slaves=list(row.get("replica_followers") or []))
    return out


def node_json(name: str, status: Mapping[str, Any] | None, processors: int,
              partitions: list[str]) -> dict[str, Any]:
    """One member as GET /api/nodes shows it, from its `NodeView.status()` (None when it does
    not answer: RabbitMQ then shows only its name, type, running false and no links)."""
    if status is None:
        return {"name": name, "type": "disc", "running": False, "cluster_links": []}
    alarms = set(status["alarms"])
    contexts = [{"ssl_opts": [], "node": name, "description": "Leveret Management", "path": "/",
                 "port": str(listener["port"])} for listener in status["listeners"] if listener["protocol"] == "http"]
    return {
        "name": name,
        "type": "disc",
        "running": True,
        "being_drained": False,
        "os_pid": str(status["pid"]),
        "mem_used": status["memory_used"],
        "mem_limit": status["vm_memory_limit"],
        "mem_alarm": "memory" in alarms,
        "mem_calculation_strategy": status["memory_calculation_strategy"],
        "disk_free": status["disk_free"],
        "disk_free_limit": status["disk_free_limit"],
        "disk_free_alarm": "disk" in alarms,
        "fd_used": status["file_descriptors"],
        "fd_total": status["file_descriptor_limit"],
        "sockets_used": status["connection_count"],
        "sockets_total": status["file_descriptor_limit"],
        "proc_used": 0,
        "proc_total": 0,
        "uptime": status["uptime"] * 1000,
        "run_queue": 0,
        "processors": processors,
        "partitions": partitions,
        "rates_mode": "basic",
        "exchange_types": exchange_types(),
        "auth_mechanisms": [{"name": n, "description": d, "enabled": True} for n, d in AUTH_MECHANISMS],
        "applications": [{"name": "leveret", "description": "Leveret", "version": status["product_version"]}],
        "contexts": contexts,
        "log_files": [],
        "db_dir": status["data_directory"],
        "config_files": status["config_files"],
        "enabled_plugins": ["rabbitmq_management", "rabbitmq_prometheus"],
        "net_ticktime": 60,
        "cluster_links": [],
    }


def exchange_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "arguments": plain(row["arguments"]),
        "auto_delete": row["auto_delete"],
        "durable": row["durable"],
        "internal": row["internal"],
        "name": row["name"],
        "policy": _or_null(row["policy"]),
        "type": row["type"],
        "user_who_performed_action": "",
        "vhost": row["vhost"],
    }


def properties_key(routing_key: str, arguments: Mapping[str, Any]) -> str:
    """How a binding is named in a URL: its routing key, and a digest of its arguments when it
    has any (RabbitMQ's "key~hash"; the digest is Leveret's own)."""
    if not arguments:
        return routing_key
    canonical = md.binding_identity("", "", "", "", "", arguments)[-1]
    digest = base64.urlsafe_b64encode(hashlib.sha1(canonical).digest()[:4]).decode().rstrip("=")
    return f"{routing_key}~{digest}"


def binding_json(vhost: str, source: str, destination: str, destination_kind: str, routing_key: str,
                 arguments: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "source": source,
        "vhost": vhost,
        "destination": destination,
        "destination_type": destination_kind,
        "routing_key": routing_key,
        "arguments": plain(arguments),
        "properties_key": properties_key(routing_key, arguments),
    }


def bindings_json(meta: md.MetadataState, vhost: str) -> list[dict[str, Any]]:
    """A vhost's bindings as RabbitMQ lists them: the default exchange's implicit ones first."""
    rows = [binding_json(vhost, "", q.name, "queue", q.name, {}) for q in meta.queues(vhost)]
    explicit = sorted(meta.bindings(vhost), key=lambda b: (b.source, b.routing_key, b.destination_kind,
                                                           b.destination))
    rows += [binding_json(b.vhost, b.source, b.destination, b.destination_kind, b.routing_key,
                          b.arguments or {}) for b in explicit]
    return rows


def connection_json(row: Mapping[str, Any], node: str) -> dict[str, Any]:
    return {
        "auth_mechanism": row["auth_mechanism"],
        "channel_max": row["channel_max"],
        "channels": row["channels"],
        "client_properties": plain(row["client_properties"]),
        "connected_at": row["connected_at"],
        "frame_max": row["frame_max"],
        "host": row["host"],
        "name": row["name"],
        "node": node,
        "peer_cert_issuer": None,
        "peer_cert_subject": None,
        "peer_cert_validity": None,
        "peer_host": row["peer_host"],
        "peer_port": row["peer_port"],
        "port": row["port"],
        "protocol": "AMQP 0-9-1",
        "send_pend": row["send_pend"],
        "ssl": False,
        "ssl_cipher": None,
        "ssl_hash": None,
        "ssl_key_exchange": None,
        "ssl_protocol": None,
        "state": row["state"],
        "timeout": row["timeout"],
        "type": "network",
        "user": row["user"],
        "user_who_performed_action": row["user"],
        "vhost": row["vhost"],
    }


def channel_json(row: Mapping[str, Any], node: str) -> dict[str, Any]:
    return {
        "acks_uncommitted": row["acks_uncommitted"],
        "confirm": row["confirm"],
        "connection_details": {"name": row["connection_name"], "peer_host": row["peer_host"],
                               "peer_port": row["peer_port"]},
        "consumer_count": row["consumer_count"],
        "global_prefetch_count": row["global_prefetch_count"],
        "messages_unacknowledged": row["messages_unacknowledged"],
        "messages_uncommitted": row["messages_uncommitted"],
        "messages_unconfirmed": row["messages_unconfirmed"],
        "name": row["name"],
        "node": node,
        "number": row["number"],
        "pending_raft_commands": 0,
        "prefetch_count": row["prefetch_count"],
        "state": "running",
        "transactional": row["transactional"],
        "user": row["user"],
        "user_who_performed_action": row["user"],
        "vhost": row["vhost"],
    }


def consumer_json(row: Mapping[str, Any], node: str) -> dict[str, Any]:
    return {
        "arguments": plain(row["arguments"]),
        "ack_required": row["ack_required"],
        "active": row["active"],
        "activity_status": row["activity_status"],
        "channel_details": {
            "connection_name": row["connection_name"],
            "name": f"{row['connection_name']} ({row['channel_number']})",
            "node": node,
            "number": row["channel_number"],
            "peer_host": row["peer_host"],
            "peer_port": row["peer_port"],
            "user": row["user"],
        },
        "consumer_tag": row["consumer_tag"],
        "exclusive": row["exclusive"],
        "prefetch_count": row["prefetch_count"],
        "queue": {"name": row["queue_name"], "vhost": row["vhost"]},
    }


def vhost_json(v: md.VhostRecord, cluster_state: Mapping[str, str], lengths: Mapping[str, int], counts: Mapping[str, int],
               rates: Mapping[str, float], charted: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """A vhost with its queues' totals: `lengths` summed queue lengths, `counts` summed
    counters, `rates` summed rates, `charted` summed charts (when asked for)."""
    return {
        **with_details({name: lengths.get(name, 0) for name in QUEUE_TOTALS}, rates, QUEUE_TOTALS, charted),
        "message_stats": with_details(counts, rates, MESSAGE_STATS, charted),
        "cluster_state": dict(cluster_state),
        "default_queue_type": v.default_queue_type or "undefined",
        "description": v.description,
        "metadata": {"description": v.description, "tags": list(v.tags)},
        "name": v.name,
        "tags": list(v.tags),
        "tracing": False,
    }


def user_json(u: md.UserRecord) -> dict[str, Any]:
    return {"name": u.name, "password_hash": u.password_hash, "hashing_algorithm": u.hashing_algorithm,
            "tags": list(auth.user_tags(u)), "limits": {}}


def permission_json(p: md.Permission) -> dict[str, Any]:
    return {"user": p.user, "vhost": p.vhost, "configure": p.configure, "write": p.write, "read": p.read}


def topic_permission_json(p: md.TopicPermission) -> dict[str, Any]:
    return {"user": p.user, "vhost": p.vhost, "exchange": p.exchange, "write": p.write, "read": p.read}


def policy_json(p: md.PolicyRecord) -> dict[str, Any]:
    return {"vhost": p.vhost, "name": p.name, "pattern": p.pattern, "apply-to": p.apply_to,
            "definition": plain(p.definition), "priority": p.priority}


def message_json(message: Any, redelivered: bool, remaining: int, encoding: str, truncate: int | None) -> dict[str, Any]:
    """A message taken by POST /api/queues/vhost/name/get. encoding "auto" gives the payload as
    text when it is UTF-8 and as base64 otherwise; "base64" always as base64."""
    body: bytes = message.body
    shown = body[:truncate] if truncate is not None else body
    text = None if encoding == "base64" else _utf8(shown)
    if text is not None:
        payload, payload_encoding = text, "string"
    else:
        payload, payload_encoding = base64.b64encode(shown).decode("ascii"), "base64"
    props = message.properties
    properties = {name: plain(getattr(props, name)) for name in PROPERTY_NAMES
                  if getattr(props, name, None) is not None}
    return {
        "payload_bytes": len(body),
        "redelivered": redelivered,
        "exchange": message.exchange,
        "routing_key": message.routing_key,
        "message_count": remaining,
        "properties": properties,
        "payload": payload,
        "payload_encoding": payload_encoding,
    }


def _utf8(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


PROPERTY_NAMES = ("content_type", "content_encoding", "headers", "delivery_mode", "priority", "correlation_id",
                  "reply_to", "expiration", "message_id", "timestamp", "type", "user_id", "app_id", "cluster_id")
