"""Prometheus metrics in the text exposition format (0.0.4), on `prometheus_port`.

`/metrics` gives RabbitMQ 3.10's aggregated metrics (rabbitmq_prometheus's default: one
unlabelled sample per metric, summed over objects); `/metrics/per-object` the same names
with a sample per queue, labelled `vhost` and `queue`. As RabbitMQ's plugin, a node reports
the queues it leads (summing every node's metrics counts each queue once). Leveret's own
metrics carry the `leveret_` prefix: the node's Raft groups (the metadata's and each
replicated queue's: role, term, commit lag, synchronised followers), its peer links
(partitions as this node sees them), and the store's group-commit writer (cycles and the
duration of each durable write, a histogram).

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
from cluster.raft.group import LEADER
from cluster.replica_listing import synchronised_followers
from storage.latency import HistogramSnapshot

if TYPE_CHECKING:
    from broker.node import Node

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]


@dataclass(slots=True)
class MetricFamily:
    name: str
    kind: str  # "gauge" | "counter" | "histogram" | "untyped"
    help: str
    # (labels, value, suffix of the sample's name: "" or a histogram's "_bucket", "_sum", "_count")
    samples: list[tuple[Labels, float, str]] = field(default_factory=list)

    def add(self, value: float, labels: Labels = ()) -> "MetricFamily":
        self.samples.append((labels, value, ""))
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
        for labels, value, suffix in family.samples:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            name = family.name + suffix
            lines.append(f"{name}{{{label_text}}} {_number(value)}" if labels else f"{name} {_number(value)}")
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
    group_queues: dict[str, tuple[str, str]] = field(default_factory=dict)  # Raft group -> (vhost, queue)
    members: list[str] = field(default_factory=list)  # the cluster's other members
    reachable: frozenset[str] = frozenset()  # those this node has a working peer link to


def metrics_snapshot(view: NodeView) -> MetricsSnapshot:
    queues = []
    meta = view.metadata
    for v in meta.vhosts():
        for q in meta.queues(v.name):
            counters = view.queue_counters(q.vhost, q.name)
            if counters is None:
                continue  # led elsewhere: its leader's node reports it
            queues.append({**view.queue_row(q), "counts": message_stats_counts(counters)})
    members = [name for name, _reachable in view.other_members()]
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
        group_queues={q.group: (q.vhost, q.name) for v in meta.vhosts() for q in meta.queues(v.name) if q.replicated},
        members=members,
        reachable=frozenset(name for name, reachable in view.other_members() if reachable),
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
    out += _raft_families(s.raft_groups, s.group_queues)
    out += _cluster_families(s.members, s.reachable)
    if s.writer is not None:
        out += _writer_families(s.writer)
    return out


def _queue_samples(family: MetricFamily, queues: list[dict[str, Any]], per_object: bool, value: Any) -> None:
    if per_object:
        for q in queues:
            family.add(value(q), (("vhost", q["vhost"]), ("queue", q["name"])))
    else:
        family.add(sum(value(q) for q in queues))


def _raft_families(groups: list[Any], group_queues: dict[str, tuple[str, str]]) -> list[MetricFamily]:
    info = MetricFamily("leveret_raft_group_info", "gauge",
                        "The Raft groups hosted here: the queue a group replicates (none for the metadata) "
                        "and the leader this node knows of")
    leader = MetricFamily("leveret_raft_group_is_leader", "gauge", "1 if this node leads the Raft group")
    has_leader = MetricFamily("leveret_raft_group_has_leader", "gauge", "1 if this node knows a leader of the group")
    term = MetricFamily("leveret_raft_group_term", "gauge", "Current Raft term of the group")
    commit = MetricFamily("leveret_raft_group_commit_index", "gauge", "Highest log index known committed")
    applied = MetricFamily("leveret_raft_group_applied_index", "gauge", "Highest log index applied")
    lag = MetricFamily("leveret_raft_group_commit_lag", "gauge",
                       "Log entries appended here but not yet committed (last index - commit index)")
    voters = MetricFamily("leveret_raft_group_voters", "gauge", "Voting members of the group")
    learners = MetricFamily("leveret_raft_group_learners", "gauge",
                            "Members still copying the log before they may vote")
    synced = MetricFamily("leveret_raft_group_synchronised_followers", "gauge",
                          "On the leader: followers that are voters holding every committed entry "
                          "(a mirror that could take over without losing a message)")
    followers = MetricFamily("leveret_raft_group_followers", "gauge", "On the leader: the other members")
    follower_lag = MetricFamily("leveret_raft_group_follower_lag", "gauge",
                                "On the leader: committed entries a follower does not hold yet "
                                "(commit index - its match index)")
    for g in groups:
        labels = (("group", g.group),)
        vhost, queue = group_queues.get(g.group, ("", ""))
        info.add(1, (*labels, ("vhost", vhost), ("queue", queue), ("leader", g.leader or "")))
        leader.add(int(g.role == LEADER), labels)
        has_leader.add(int(g.leader is not None), labels)
        term.add(g.term, labels)
        commit.add(g.commit, labels)
        applied.add(g.applied, labels)
        lag.add(max(g.last_index - g.commit, 0), labels)
        voters.add(len(g.voters), labels)
        learners.add(len(g.learners), labels)
        if g.role == LEADER:
            others = sorted((g.voters | g.learners) - {g.leader})
            followers.add(len(others), labels)
            synced.add(len(synchronised_followers(others, g.voters, g.match, g.commit)), labels)
            for name in others:
                follower_lag.add(max(g.commit - g.match.get(name, 0), 0), (*labels, ("follower", name)))
    return [info, leader, has_leader, term, commit, applied, lag, voters, learners, followers, synced, follower_lag]


def _cluster_families(members: list[str], reachable: frozenset[str]) -> list[MetricFamily]:
    peer = MetricFamily("leveret_cluster_peer_reachable", "gauge",
                        "1 if this node has a working peer link to the member, 0 if it is down or partitioned "
                        "away from this node")
    for name in members:
        peer.add(int(name in reachable), (("peer", name),))
    return [
        MetricFamily("leveret_cluster_members", "gauge", "Members of the cluster, this node included").add(
            len(members) + 1),
        MetricFamily("leveret_cluster_peers_unreachable", "gauge",
                     "Other members this node has no working peer link to (down, or across a partition)").add(
            sum(1 for name in members if name not in reachable)),
        peer,
    ]


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
        *([_histogram("leveret_store_writer_fsync_seconds",
                      "Duration of each durable store write: the LMDB commit and its fsyncs", w.write_seconds)]
          if w.write_seconds is not None else []),
    ]


def _histogram(name: str, text: str, h: HistogramSnapshot) -> MetricFamily:
    """A histogram family: cumulative `_bucket` samples by `le`, then `_sum` and `_count`."""
    family = MetricFamily(name, "histogram", text)
    for bound, count in zip((*h.bounds, float("inf")), h.cumulative):
        family.samples.append(((("le", _le(bound)),), count, "_bucket"))
    family.samples.append(((), h.sum, "_sum"))
    family.samples.append(((), h.count, "_count"))
    return family


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


def prometheus_app(node: "Node") -> Starlette:
    view = NodeView(node)

    def scrape(per_object: bool) -> Any:
        async def endpoint(request: Request) -> Response:
            text = render(families(metrics_snapshot(view), per_object))
            return PlainTextResponse(text, media_type=CONTENT_TYPE)

        return endpoint

    return Starlette(routes=[Route("/metrics", scrape(False)), Route("/metrics/per-object", scrape(True))])
