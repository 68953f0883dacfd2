"""The Prometheus endpoint: scraped from a real node and parsed with prometheus_client's
text-format parser; RabbitMQ's metric names with the node's numbers, per object on
/metrics/per-object, and Leveret's own Raft and store-writer metrics."""

from __future__ import annotations

import urllib.error
import urllib.request

import pika
from prometheus_client.parser import text_string_to_metric_families

from tests.management.http import Api
from tests.support.node_process import NodeProcess


def scrape(node: NodeProcess, path: str = "/metrics") -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample by name, then by its sorted labels."""
    with urllib.request.urlopen(node.prometheus_url + path, timeout=30) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = resp.read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


def test_metrics_count_queues_messages_and_connections(http_node: NodeProcess, api: Api) -> None:
    before = scrape(http_node)
    api.ok("PUT", "/api/queues/%2F/prom-q", {"durable": True})
    conn = pika.BlockingConnection(pika.URLParameters(http_node.url))
    try:
        ch = conn.channel()
        for i in range(3):
            ch.basic_publish("", "prom-q", b"m%d" % i)
        ch.basic_qos(prefetch_count=1)
        ch.basic_consume("prom-q", lambda *a: None)
        conn.process_data_events(0.3)
        after = scrape(http_node)
        per_object = scrape(http_node, "/metrics/per-object")
    finally:
        conn.close()
    assert value(after, "rabbitmq_queues") == value(before, "rabbitmq_queues") + 1
    assert value(after, "rabbitmq_connections") == value(before, "rabbitmq_connections") + 1
    assert value(after, "rabbitmq_channels") >= 1 and value(after, "rabbitmq_consumers") >= 1
    assert value(after, "rabbitmq_queue_messages_ready") == value(before, "rabbitmq_queue_messages_ready") + 2
    assert value(after, "rabbitmq_queue_messages_unacked") == value(before, "rabbitmq_queue_messages_unacked") + 1
    assert value(after, "rabbitmq_queue_messages_published_total") == value(
        before, "rabbitmq_queue_messages_published_total") + 3
    q = {"vhost": "/", "queue": "prom-q"}
    assert value(per_object, "rabbitmq_queue_messages_ready", **q) == 2
    assert value(per_object, "rabbitmq_queue_messages_unacked", **q) == 1
    assert value(per_object, "rabbitmq_queue_messages", **q) == 3
    assert value(per_object, "rabbitmq_queue_consumers", **q) == 1
    assert value(per_object, "rabbitmq_queue_messages_published_total", **q) == 3
    assert value(per_object, "rabbitmq_queue_messages_delivered_total", **q) == 1
    # Aggregated /metrics has no per-queue labels.
    assert list(after["rabbitmq_queue_messages_ready"]) == [()]


def test_node_identity_resources_and_leveret_metrics(http_node: NodeProcess, api: Api) -> None:
    samples = scrape(http_node)
    assert value(samples, "rabbitmq_identity_info", rabbitmq_node=http_node.name,
                 rabbitmq_cluster=http_node.name) == 1
    assert value(samples, "rabbitmq_process_resident_memory_bytes") > 0
    assert value(samples, "rabbitmq_resident_memory_limit_bytes") > 0
    assert value(samples, "rabbitmq_alarms_memory_used_watermark") == 0
    assert value(samples, "rabbitmq_disk_space_available_bytes") > 0
    # The metadata group: a single voter that leads it, its log committed and applied.
    group = {"group": "metadata"}
    assert value(samples, "leveret_raft_group_is_leader", **group) == 1
    assert value(samples, "leveret_raft_group_voters", **group) == 1
    assert value(samples, "leveret_raft_group_term", **group) >= 1
    commit = value(samples, "leveret_raft_group_commit_index", **group)
    assert commit >= 1 and value(samples, "leveret_raft_group_commit_lag", **group) == 0
    # A metadata change goes through the log: the commit index moves; the writer made it durable.
    cycles = value(samples, "leveret_store_writer_cycles_total")
    api.ok("PUT", "/api/queues/%2F/prom-commit")
    later = scrape(http_node)
    assert value(later, "leveret_raft_group_commit_index", **group) > commit
    assert value(later, "leveret_store_writer_cycles_total") > cycles
    assert value(later, "leveret_store_writer_batches_failed_total") == 0


def test_unknown_metrics_path_is_404(http_node: NodeProcess) -> None:
    try:
        urllib.request.urlopen(http_node.prometheus_url + "/nope", timeout=30)
    except urllib.error.HTTPError as err:
        assert err.code == 404
    else:
        raise AssertionError("expected 404")
