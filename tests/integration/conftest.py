"""Helpers shared by the integration tests: pika connections to the session node.

Every test talks to the shared `node` (one `leveret-server` for the session)
through `amqp_url`, with queue and exchange names of its own (`unique`). For a
comparison by hand with the reference RabbitMQ, set LEVERET_COMPARE_URL (e.g.
amqp://guest:guest@127.0.0.1:5690/) and the same tests run against that broker
instead; the default run never depends on it.
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from typing import Any, Callable

import pika
import pika.exceptions
import pytest

from tests.support.node_process import ONE_NODE_OR_ACROSS_NODES, url_for_param


@pytest.fixture(scope="session")
def amqp_url(request: pytest.FixtureRequest) -> str:
    override = os.environ.get("LEVERET_COMPARE_URL")
    if override:
        return override
    return request.getfixturevalue("node").url


_counter = itertools.count()


def unique(prefix: str) -> str:
    """A name no other test (or earlier run against the same broker) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}-{next(_counter)}"


def connect(url: str, **params: Any) -> pika.BlockingConnection:
    p = pika.URLParameters(url)
    for k, v in params.items():
        setattr(p, k, v)
    if "blocked_connection_timeout" not in params:
        p.blocked_connection_timeout = 10
    p.socket_timeout = 5
    return pika.BlockingConnection(p)


@pytest.fixture
def conn(amqp_url: str):
    c = connect(amqp_url)
    try:
        yield c
    finally:
        if c.is_open:
            c.close()


@pytest.fixture
def ch(conn: pika.BlockingConnection):
    return conn.channel()


def channel_error(fn: Callable[[], Any]) -> tuple[int, str]:
    """Run `fn`, expecting the broker to close the channel; (reply code, reply text)."""
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        fn()
    return info.value.reply_code, info.value.reply_text


def connection_error(fn: Callable[[], Any]) -> tuple[int, str]:
    """Run `fn`, expecting the broker to close the connection; (reply code, reply text)."""
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        fn()
    return info.value.reply_code, info.value.reply_text


def get_body(ch: Any, queue: str, timeout: float = 5.0, auto_ack: bool = True) -> bytes | None:
    """basic.get until a message arrives or `timeout` passes (None then)."""
    deadline = time.monotonic() + timeout
    while True:
        method, _props, body = ch.basic_get(queue, auto_ack=auto_ack)
        if method is not None:
            return body
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)


def drain(ch: Any, queue: str) -> list[bytes]:
    """Every message ready in `queue` now, auto-acked, in order."""
    out = []
    while True:
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append(body)


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02) -> Any:
    """Poll `predicate` until it returns something true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def message_count(conn: pika.BlockingConnection, queue: str) -> int:
    """Ready messages of `queue` by passive declare on a throwaway channel."""
    tmp = conn.channel()
    try:
        return tmp.queue_declare(queue, passive=True).method.message_count
    finally:
        tmp.close()


def consume_n(conn: pika.BlockingConnection, ch: Any, queue: str, n: int, timeout: float = 5.0,
              auto_ack: bool = False) -> list[tuple[Any, Any, bytes]]:
    """Consume `n` deliveries from `queue` (not acked unless auto_ack); cancel afterwards."""
    got: list[tuple[Any, Any, bytes]] = []
    tag = ch.basic_consume(queue, lambda c, m, p, b: got.append((m, p, b)), auto_ack=auto_ack)
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    ch.basic_cancel(tag)
    return got


@pytest.fixture(scope="session", params=ONE_NODE_OR_ACROSS_NODES)
def amqp_url_one_node_or_across_nodes(request: pytest.FixtureRequest) -> str:
    """`amqp_url` for modules that also run against `queues_across_nodes`: assign it to
    `amqp_url` in the module."""
    return url_for_param(request, "LEVERET_COMPARE_URL")
