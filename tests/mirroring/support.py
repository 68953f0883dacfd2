"""Helpers for mirrored and quorum queue tests on real `leveret-server` processes: a joined
cluster, the replica query (`queue_replicas`, broker/control_mirroring.py), confirmed
publishing and draining a queue."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pika.exceptions
import trio

from cluster.control import control_call
from tests.ctl.support import connect, ok
from tests.support.cluster import NAMES, running, stop_all
from tests.support.cluster import start_cluster as joined_nodes
from tests.support.node_process import NodeProcess


def start_cluster(names: tuple[str, ...] = NAMES, extra_env: dict[str, str] | None = None) -> list[NodeProcess]:
    """Nodes named `names` started and joined to the first; the caller stops them (`stop_all`)."""
    return joined_nodes([NodeProcess(name=n, extra_env=dict(extra_env or {})) for n in names])


def control(node: NodeProcess, method: str, **args: Any) -> dict[str, Any]:
    """One control request to `node`: {"ok": True, "result": ...} or {"ok": False, "error": ...}."""
    async def call() -> dict[str, Any]:
        with trio.fail_after(20):
            return await control_call(node.host, node.dist_port, node.name, method, args, cookie=node.cookie)

    return trio.run(call)


def replica_rows(node: NodeProcess, vhost: str = "/") -> dict[str, dict[str, Any]]:
    reply = control(node, "queue_replicas", vhost=vhost)
    assert reply["ok"], reply
    return {row["name"]: row for row in reply["result"]}


def replica_row(node: NodeProcess, queue: str) -> dict[str, Any] | None:
    return replica_rows(node).get(queue)


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Until `predicate()` is truthy (its value is returned), polling every 0.1 s; connection
    and control errors count as not yet."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (pika.exceptions.AMQPError, OSError, trio.TooSlowError) as exc:
            value, last = None, exc
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not met in {timeout}s (last error: {last!r})")


def settled_replicas(nodes: list[NodeProcess], queue: str, expected: set[str]) -> Callable[[], Any]:
    """A predicate: every running node's metadata names `expected` as the queue's replicas,
    and the group's leader has exactly those voters (no learner left); its value is the leader's row."""
    def check() -> Any:
        rows = [replica_row(n, queue) for n in running(nodes)]
        if any(r is None or set(r["replicas"]) != expected for r in rows):
            return None
        leaders = [r for r in rows if r.get("role") == "leader"]
        if len(leaders) != 1:
            return None
        row = leaders[0]
        if set(row["voters"]) != expected or row["learners"] or row["node"] != row["leader"]:
            return None
        # Every replica's node hosts the group, and no other running node does.
        hosting = {n.name for n, r in zip(running(nodes), rows) if r is not None and r["hosted"]}
        alive = {n.name for n in running(nodes)}
        if hosting != expected & alive:
            return None
        return row
    return check


def wait_replicas(nodes: list[NodeProcess], queue: str, expected: set[str], timeout: float = 30.0) -> dict[str, Any]:
    return wait_for(settled_replicas(nodes, queue, expected), timeout, f"replicas of {queue} == {sorted(expected)}")


def node_named(nodes: list[NodeProcess], name: str) -> NodeProcess:
    return next(n for n in nodes if n.name == name)


def set_policy(node: NodeProcess, name: str, pattern: str, definition: str, *extra: str) -> None:
    ok(node, "set_policy", name, pattern, definition, "--apply-to", "queues", *extra)


def publish_confirmed(node: NodeProcess, queue: str, bodies: list[bytes], retry_for: float = 0.0) -> None:
    """Publish persistent messages with confirms; returns once every one is confirmed (pika
    raises on a nack). With `retry_for`, a nacked message is published again for that many
    seconds, as a client publishing through a failover does."""
    conn = connect(node)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        deadline = time.monotonic() + retry_for
        for body in bodies:
            while True:
                try:
                    ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2), mandatory=True)
                    break
                except pika.exceptions.NackError:
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.1)
    finally:
        conn.close()


def drain(node: NodeProcess, queue: str, expected: int, timeout: float = 30.0,
          idle: float = 0.5) -> list[tuple[bytes, bool]]:
    """Consume (manual acks) from `node` until `expected` deliveries arrived and then `idle`
    seconds passed with no more, `timeout` at most: [(body, redelivered)]."""
    conn = connect(node)
    got: list[tuple[bytes, bool]] = []
    try:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=200)

        def on_message(ch: Any, method: Any, props: Any, body: bytes) -> None:
            got.append((body, method.redelivered))
            ch.basic_ack(method.delivery_tag)

        ch.basic_consume(queue, on_message)
        deadline = time.monotonic() + timeout
        while len(got) < expected and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
        quiet_until = time.monotonic() + idle
        while time.monotonic() < quiet_until:
            conn.process_data_events(time_limit=0.1)
    finally:
        if conn.is_open:
            conn.close()
    return got


def declare(node: NodeProcess, queue: str, **arguments: object) -> None:
    conn = connect(node)
    try:
        conn.channel().queue_declare(queue, durable=True, arguments=dict(arguments))
    finally:
        if conn.is_open:
            conn.close()


def ready_count(node: NodeProcess, queue: str) -> int:
    conn = connect(node)
    try:
        return conn.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        if conn.is_open:
            conn.close()


class Load:
    """A confirmed publisher on one node and an acking consumer on another, each in a thread
    of its own connection, bounded by `count` messages and `seconds`. `publish_gap` paces the
    publisher so the load spans the changes a test makes meanwhile."""

    def __init__(self, publish_on: NodeProcess, consume_on: NodeProcess, queue: str, count: int,
                 seconds: float = 90.0, publish_gap: float = 0.005) -> None:
        self.publish_on, self.consume_on, self.queue = publish_on, consume_on, queue
        self.count, self.seconds, self.publish_gap = count, seconds, publish_gap
        self.confirmed: list[bytes] = []
        self.received: list[tuple[bytes, bool]] = []
        self.errors: list[BaseException] = []
        self._publishing_done = threading.Event()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._guard, args=(self._publish,), daemon=True),
                         threading.Thread(target=self._guard, args=(self._consume,), daemon=True)]

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _guard(self, body: Callable[[], None]) -> None:
        try:
            body()
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)
        finally:
            if body == self._publish:
                self._publishing_done.set()

    def _publish(self) -> None:
        deadline = time.monotonic() + self.seconds
        conn = connect(self.publish_on)
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            for i in range(self.count):
                if self._stop.is_set() or time.monotonic() > deadline:
                    break
                body = b"load-%05d" % i
                # pika raises NackError on a nack: the test fails on any.
                ch.basic_publish("", self.queue, body, pika.BasicProperties(delivery_mode=2), mandatory=True)
                self.confirmed.append(body)
                if self.publish_gap:
                    time.sleep(self.publish_gap)
        finally:
            if conn.is_open:
                conn.close()

    def _consume(self) -> None:
        deadline = time.monotonic() + self.seconds + 30
        conn = connect(self.consume_on)
        try:
            ch = conn.channel()
            ch.basic_qos(prefetch_count=50)

            def on_message(ch: Any, method: Any, props: Any, body: bytes) -> None:
                self.received.append((body, method.redelivered))
                ch.basic_ack(method.delivery_tag)

            ch.basic_consume(self.queue, on_message)
            while time.monotonic() < deadline and not self._stop.is_set():
                conn.process_data_events(time_limit=0.1)
                if self._publishing_done.is_set() and self.all_received():
                    break
        finally:
            if conn.is_open:
                conn.close()

    def all_received(self) -> bool:
        return set(self.confirmed) <= {body for body, _ in self.received}

    def wait(self, timeout: float = 120.0) -> None:
        """Until both threads are done (the consumer once it has every confirmed message)."""
        for t in self._threads:
            t.join(timeout)
            assert not t.is_alive(), "load still running"

    def check(self) -> None:
        """No channel or connection error, every confirmed message received, nothing that was
        never published, and a message received twice only if flagged redelivered."""
        assert not self.errors, self.errors
        published = set(self.confirmed)
        got = [body for body, _ in self.received]
        assert set(got) - published == set(), sorted(set(got) - published)[:5]
        missing = published - set(got)
        assert not missing, (len(missing), sorted(missing)[:5])
        seen: set[bytes] = set()
        for body, redelivered in self.received:
            assert body not in seen or redelivered, f"{body!r} delivered twice without redelivered"
            seen.add(body)
