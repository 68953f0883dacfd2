"""Prometheus metrics in the text exposition format (0.0.4), on `prometheus_port`.

`/metrics` gives RabbitMQ 3.10's aggregated metrics (rabbitmq_prometheus's default: one
unlabelled sample per metric, summed over objects); `/metrics/per-object` the same names
with a sample per queue, labelled `vhost` and `queue`. Leveret's own metrics carry the
`leveret_` prefix: the store's group-commit writer and the node's Raft groups.

Rendering is pure (`render` takes `MetricFamily` values); `metrics_snapshot` reads the
node through `NodeView` once per scrape.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from broker import __version__
from broker.management.rates import message_stats_counts, sum_counts
from broker.management.shapes import RABBITMQ_VERSION
from broker.node_view import NodeView

if TYPE_CHECKING:
    from broker.node import Node

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]


@dataclass(slots=True)
class MetricFamily:
    name: str
    kind: str  # "gauge" | "counter" | "untyped"
    help: str
    samples: list[tuple[Labels, float]] = field(default_factory=list)

    def add(self, value: float, labels: Labels = ()) -> "MetricFamily":
        self.samples.append((labels, value))
        return self


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def render(families: Iterable[MetricFamily]) -> str:
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {family.help}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for labels, value in family.samples:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(f"{family.name}{{{label_text}}} {_number(value)}" if labels
                         else f"{family.name} {_number(value)}")
    return "\n".join(lines) + "\n"


# (metric, help, key of the queue row or of the message_stats counts)
QUEUE_GAUGES = (
    ("rabbitmq_queue_messages_ready", "Messages ready to be delivered to consumers", "messages_ready"),
    ("rabbitmq_queue_messages_unacked", "Messages delivered to consumers but not yet acknowledged",
     "messages_unacknowledged"),
    ("rabbitmq_queue_messages", "Sum of ready and unacknowledged messages - total queue depth", "messages"),
    ("rabbitmq_queue_messages_ready_bytes", "Size in bytes of ready messages", "message_bytes_ready"),
    ("rabbitmq_queue_messages_unacked_bytes", "Size in bytes of all unacknowledged messages",
     "message_bytes_unacknowledged"),
    ("rabbitmq_queue_messages_bytes", "Size in bytes of ready and unacknowledged messages", "message_bytes"),
    ("rabbitmq_queue_messages_paged_out", "Messages paged out to disk", "messages_paged_out"),
    ("rabbitmq_queue_consumers", "Consumers on a queue", "consumers"),
    ("rabbitmq_queue_process_memory_bytes", "Memory in bytes used by the queue (an estimate)", "memory"),
)
QUEUE_COUNTERS = (
    ("rabbitmq_queue_messages_published_total", "Total number of messages published to queues", "publish"),
    ("rabbitmq_queue_messages_delivered_total", "Total number of messages delivered to consumers (and got)",
     "deliver_get"),
    ("rabbitmq_queue_messages_redelivered_total", "Total number of messages redelivered to consumers",
     "redeliver"),
    ("rabbitmq_queue_messages_acked_total", "Total number of messages acknowledged by consumers", "ack"),
    ("rabbitmq_queue_get_empty_total", "Total number of times basic.get found the queue empty", "get_empty"),
)


@dataclass(slots=True)
class MetricsSnapshot:
    """What one scrape reads of the node: plain values, so rendering is pure."""

    node: str
    cluster: str
    queues: list[dict[str, Any]]  # NodeView queue rows, each with its message_stats counts under "counts"
    connections: int
    channels: int
    exchanges: int
    vhosts: int
    status: dict[str, Any]
    raft_groups: list[Any]
    writer: Any


def metrics_snapshot(view: NodeView) -> MetricsSnapshot:
    queues = []
    for row in view.queue_rows():
        counters = view.queue_counters(row["vhost"], row["name"])
        queues.append({**row, "counts": message_stats_counts(counters) if counters is not None else {}})
    meta = view.metadata
    return MetricsSnapshot(
        node=view.node_name,
        cluster=view.cluster_name,
        queues=queues,
        connections=len(view.connection_rows()),
        channels=len(view.channel_rows()),
        exchanges=sum(len(meta.exchanges(v.name)) for v in meta.vhosts()),
        vhosts=len(meta.vhosts()),
        status=view.status(),
        raft_groups=view.raft_groups(),
        writer=view.writer_statistics(),
    )


def families(snapshot: MetricsSnapshot, per_object: bool) -> list[MetricFamily]:
    s = snapshot
    status = s.status
    alarms = set(status["alarms"])
    out = [
        MetricFamily("rabbitmq_build_info", "gauge", "RabbitMQ & Erlang/OTP version info").add(
            1, (("rabbitmq_version", RABBITMQ_VERSION), ("prometheus_plugin_version", RABBITMQ_VERSION),
                ("leveret_version", __version__))),
        MetricFamily("rabbitmq_identity_info", "gauge", "RabbitMQ node & cluster identity info").add(
            1, (("rabbitmq_node", s.node), ("rabbitmq_cluster", s.cluster))),
        MetricFamily("rabbitmq_connections", "gauge", "Connections currently open").add(s.connections),
        MetricFamily("rabbitmq_channels", "gauge", "Channels currently open").add(s.channels),
        MetricFamily("rabbitmq_consumers", "gauge", "Consumers currently connected").add(
            sum(q["consumers"] for q in s.queues)),
        MetricFamily("rabbitmq_queues", "gauge", "Queues available").add(len(s.queues)),
        MetricFamily("rabbitmq_exchanges", "gauge", "Exchanges available").add(s.exchanges),
        MetricFamily("rabbitmq_vhosts", "gauge", "Virtual hosts available").add(s.vhosts),
        MetricFamily("rabbitmq_process_resident_memory_bytes", "gauge",
                     "Memory used in bytes").add(status["memory_used"]),
        MetricFamily("rabbitmq_resident_memory_limit_bytes", "gauge",
                     "Memory high watermark in bytes").add(status["vm_memory_limit"]),
        MetricFamily("rabbitmq_disk_space_available_limit_bytes", "gauge",
                     "Free disk space low watermark in bytes").add(status["disk_free_limit"]),
        MetricFamily("rabbitmq_alarms_memory_used_watermark", "gauge",
                     "is 1 if VM memory watermark alarm is in effect").add(int("memory" in alarms)),
        MetricFamily("rabbitmq_alarms_free_disk_space_watermark", "gauge",
                     "is 1 if free disk space watermark alarm is in effect").add(int("disk" in alarms)),
    ]
    if status["disk_free"] is not None:
        out.append(MetricFamily("rabbitmq_disk_space_available_bytes", "gauge",
                                "Disk space available in bytes").add(status["disk_free"]))
    if status["file_descriptors"] is not None:
        out.append(MetricFamily("rabbitmq_process_open_fds", "gauge", "Open file descriptors").add(
            status["file_descriptors"]))
    if status["file_descriptor_limit"] is not None:
        out.append(MetricFamily("rabbitmq_process_max_fds", "gauge", "Open file descriptors limit").add(
            status["file_descriptor_limit"]))
    for name, text, key in QUEUE_GAUGES:
        family = MetricFamily(name, "gauge", text)
        _queue_samples(family, s.queues, per_object, lambda q, k=key: q[k])
        out.append(family)
    for name, text, key in QUEUE_COUNTERS:
        family = MetricFamily(name, "counter", text)
        _queue_samples(family, s.queues, per_object, lambda q, k=key: q["counts"].get(k, 0))
        out.append(family)
    totals = sum_counts([q["counts"] for q in s.queues])
    out += [
        MetricFamily("rabbitmq_global_messages_routed_total", "counter",
                     "Total number of messages routed to queues").add(totals.get("publish", 0)),
        MetricFamily("rabbitmq_global_messages_delivered_total", "counter",
                     "Total number of messages delivered to consumers").add(totals.get("deliver_get", 0)),
        MetricFamily("rabbitmq_global_messages_acknowledged_total", "counter",
                     "Total number of messages acknowledged by consumers").add(totals.get("ack", 0)),
        MetricFamily("rabbitmq_global_messages_redelivered_total", "counter",
                     "Total number of messages redelivered to consumers").add(totals.get("redeliver", 0)),
    ]
    out += _raft_families(s.raft_groups)
    if s.writer is not None:
        out += _writer_families(s.writer)
    return out


def _queue_samples(family: MetricFamily, queues: list[dict[str, Any]], per_object: bool, value: Any) -> None:
    if per_object:
        for q in queues:
            family.add(value(q), (("vhost", q["vhost"]), ("queue", q["name"])))
    else:
        family.add(sum(value(q) for q in queues))


def _raft_families(groups: list[Any]) -> list[MetricFamily]:
    leader = MetricFamily("leveret_raft_group_is_leader", "gauge", "1 if this node leads the Raft group")
    term = MetricFamily("leveret_raft_group_term", "gauge", "Current Raft term of the group")
    commit = MetricFamily("leveret_raft_group_commit_index", "gauge", "Highest log index known committed")
    applied = MetricFamily("leveret_raft_group_applied_index", "gauge", "Highest log index applied")
    lag = MetricFamily("leveret_raft_group_commit_lag", "gauge",
                       "Log entries appended here but not yet committed (last index - commit index)")
    voters = MetricFamily("leveret_raft_group_voters", "gauge", "Voting members of the group")
    for g in groups:
        labels = (("group", g.group),)
        leader.add(int(g.role == "leader"), labels)
        term.add(g.term, labels)
        commit.add(g.commit, labels)
        applied.add(g.applied, labels)
        lag.add(max(g.last_index - g.commit, 0), labels)
        voters.add(len(g.voters), labels)
    return [leader, term, commit, applied, lag, voters]


def _writer_families(w: Any) -> list[MetricFamily]:
    return [
        MetricFamily("leveret_store_writer_cycles_total", "counter",
                     "Store writes (one transaction and one fsync each) made by the group-commit writer"
                     ).add(w.writes),
        MetricFamily("leveret_store_writer_batches_written_total", "counter",
                     "Batches made durable by the group-commit writer").add(w.batches_written),
        MetricFamily("leveret_store_writer_batches_failed_total", "counter",
                     "Batches whose write failed").add(w.batches_failed),
        MetricFamily("leveret_store_writer_ops_written_total", "counter",
                     "Store operations made durable").add(w.ops_written),
        MetricFamily("leveret_store_writer_batches_pending", "gauge",
                     "Batches submitted and not yet taken by a write").add(w.batches_pending),
    ]


def prometheus_app(node: "Node") -> Starlette:
    view = NodeView(node)

    def scrape(per_object: bool) -> Any:
        async def endpoint(request: Request) -> Response:
            text = render(families(metrics_snapshot(view), per_object))
            return PlainTextResponse(text, media_type=CONTENT_TYPE)

        return endpoint

    return Starlette(routes=[Route("/metrics", scrape(False)), Route("/metrics/per-object", scrape(True))])
