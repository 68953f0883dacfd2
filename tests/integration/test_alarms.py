"""Resource alarms block publishers with connection.blocked, as RabbitMQ does."""

from __future__ import annotations

import time

import pika

from broker.alarms import DISK, MEMORY, ResourceLimits, block_reason
from broker.config import DiskFreeLimit, MemoryWatermark
from tests.support.node_process import NodeProcess


def test_limits_from_settings_relative_and_absolute() -> None:
    gib = 1 << 30
    limits = ResourceLimits.from_settings(MemoryWatermark(relative=0.4), DiskFreeLimit(absolute=50_000_000), 10 * gib)
    assert limits.memory_bytes == 4 * gib
    assert limits.disk_free_bytes == 50_000_000
    limits = ResourceLimits.from_settings(MemoryWatermark(relative=None, absolute=123),
                                          DiskFreeLimit(absolute=None, mem_relative=1.5), gib)
    assert (limits.memory_bytes, limits.disk_free_bytes) == (123, int(1.5 * gib))


def test_alarms_raise_and_clear_at_the_limits() -> None:
    limits = ResourceLimits(memory_bytes=1000, disk_free_bytes=500)
    assert limits.alarms(999, 500) == frozenset()
    assert limits.alarms(1000, 500) == {MEMORY}
    assert limits.alarms(10, 499) == {DISK}
    assert limits.alarms(2000, 0) == {MEMORY, DISK}
    assert block_reason(frozenset({DISK})) == "low on disk"
    assert block_reason(frozenset({MEMORY, DISK})) == "low on memory"


def _blocked_node(config: dict) -> NodeProcess:
    return NodeProcess(name="alarm@localhost", config=config).start()


def _check_publisher_blocked(node: NodeProcess, reason: str) -> None:
    blocked: list[str] = []
    params = pika.URLParameters(node.url)
    conn = pika.BlockingConnection(params)
    conn.add_on_connection_blocked_callback(lambda _c, frame: blocked.append(frame.method.reason))
    ch = conn.channel()
    ch.queue_declare("alarm_q")
    ch.basic_publish("", "alarm_q", b"held back")
    deadline = time.monotonic() + 5
    while not blocked and time.monotonic() < deadline:
        conn.process_data_events(0.1)
    assert blocked == [reason]
    # The publish is not taken while blocked: another connection sees an empty queue.
    observer = pika.BlockingConnection(params)
    try:
        assert observer.channel().queue_declare("alarm_q", passive=True).method.message_count == 0
    finally:
        observer.close()
    # A log line names the alarm.
    assert "resource limit alarm set" in node.log_text()


def test_memory_alarm_blocks_publishers() -> None:
    node = _blocked_node({"vm_memory_high_watermark": {"absolute": "1MB"}})
    try:
        _check_publisher_blocked(node, "low on memory")
    finally:
        node.stop()


def test_disk_alarm_blocks_publishers() -> None:
    node = _blocked_node({"disk_free_limit": "1000000GB"})
    try:
        _check_publisher_blocked(node, "low on disk")
    finally:
        node.stop()


def test_thresholds_set_at_run_time_block_then_unblock_publishers(fresh_node: NodeProcess) -> None:
    from tests.ctl.support import ctl, ok

    params = pika.URLParameters(fresh_node.url)
    conn = pika.BlockingConnection(params)
    events: list[str] = []
    conn.add_on_connection_blocked_callback(lambda _c, frame: events.append("blocked:" + frame.method.reason))
    conn.add_on_connection_unblocked_callback(lambda _c, _frame: events.append("unblocked"))
    ch = conn.channel()
    ch.queue_declare("alarm_rt")
    ch.basic_publish("", "alarm_rt", b"before")

    out = ok(fresh_node, "set_disk_free_limit", "1000000GB")
    assert out.out == f"Setting disk free limit on {fresh_node.name} to 1000000GB bytes ...\n"
    ch.basic_publish("", "alarm_rt", b"during")
    deadline = time.monotonic() + 10
    while "blocked:low on disk" not in events and time.monotonic() < deadline:
        conn.process_data_events(0.1)
    assert events == ["blocked:low on disk"]

    ok(fresh_node, "set_disk_free_limit", "50MB")
    while "unblocked" not in events and time.monotonic() < deadline:
        conn.process_data_events(0.1)
    assert events == ["blocked:low on disk", "unblocked"]
    # The publish held back while blocked is taken once the alarm clears.
    while ch.queue_declare("alarm_rt", passive=True).method.message_count < 2 and time.monotonic() < deadline:
        conn.process_data_events(0.05)
    assert ch.queue_declare("alarm_rt", passive=True).method.message_count == 2

    out = ok(fresh_node, "set_vm_memory_high_watermark", "0.5")
    assert out.out == f"Setting memory threshold on {fresh_node.name} to 0.5 ...\n"
    bad = ctl(fresh_node, "set_vm_memory_high_watermark", "2")
    assert bad.code == 65
    assert "Bad argument: The threshold should be a fraction between 0.0 and 1.0" in bad.err
    assert ctl(fresh_node, "set_disk_free_limit", "abc").code == 65
    conn.close()
