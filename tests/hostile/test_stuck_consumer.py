"""A consumer that cannot take deliveries does not throttle the queue's publishers.

Publisher flow control (docs/design.md, "Publisher flow is by queue backlog") pauses
a connection that publishes to a queue whose consumers are falling behind. A consumer
that takes nothing at all — prefetch 0 on a socket it never reads, so its connection's
output fills and it has no credit left — is not falling behind: it is stuck, and a
backlog nobody takes is paged to the store, as it is for a queue without consumers.

The node logs each flow pause at debug level; the test counts those lines rather than
timing the publisher (a benchmark would be at the mercy of the machine's load).
"""

from __future__ import annotations

import json
import socket

import trio

from broker.amqp import spec
from broker.amqp.codec import MethodFrame, encode_method
from cli.perf.client import Connection
from tests.integration.test_backlog import fill
from tests.ctl.support import ctl
from tests.support.node_process import NodeProcess

COUNT = 50_000
BODY = 1024
# A pause or two while the queue finds out that its only consumer takes nothing is
# allowed; a throttled publisher pauses once per read, hundreds of times for 50 MB.
MAX_PAUSES = 5
FLOW_PAUSE_LINE = "publisher flow: pausing"


def queue_row(node: NodeProcess, name: str) -> dict:
    """`leveretctl list_queues` row of queue `name` (the columns these tests read)."""
    result = ctl(node, "list_queues", "--formatter", "json", "name", "consumers", "messages", "messages_ready",
                 "messages_ready_ram", "state")
    assert result.code == 0, result.err
    return next(row for row in json.loads(result.out) if row["name"] == name)


async def attach_stuck_consumer(url: str, queue: str) -> Connection:
    """A consumer with prefetch 0 (unlimited) whose socket is never read again."""
    conn = await Connection.open(url)
    sock = conn.stream.socket
    # Small buffers: the node finds the socket full after a few hundred kilobytes.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await conn.open_channel(1)
    await conn.call(1, spec.QueueDeclare(queue=queue, durable=False), spec.QueueDeclareOk)
    await conn.call(1, spec.BasicConsume(queue=queue, consumer_tag="stuck"), spec.BasicConsumeOk)
    return conn


async def test_a_consumer_that_takes_nothing_does_not_throttle_publishers() -> None:
    with NodeProcess(name="stuck@localhost", extra_env={"LEVERET_LOG_LEVEL": "debug"},
                     config={"queue_memory_window": 5_000}).start() as node:
        stuck = await attach_stuck_consumer(node.url, "stuck_q")
        try:
            with trio.fail_after(180):
                await fill(node.url, "stuck_q", COUNT, durable=False, persistent=False, body_size=BODY)
            pauses = node.log_text().count(FLOW_PAUSE_LINE)
            assert pauses <= MAX_PAUSES, f"the publisher was paused {pauses} times for a stuck consumer"
            row = queue_row(node, "stuck_q")
            # Everything arrived; what the consumer could not take is ready, mostly paged out.
            assert row["consumers"] == 1
            assert row["messages"] == COUNT
            assert row["messages_ready"] > COUNT // 2
            assert row["messages_ready_ram"] < COUNT // 4
        finally:
            await trio.aclose_forcefully(stuck.stream)


async def test_a_consumer_falling_behind_still_throttles_publishers() -> None:
    """The other side: a consumer that takes messages, but slower than they come, pauses
    the publisher (the log line the first test counts is really written)."""
    with NodeProcess(name="slow@localhost", extra_env={"LEVERET_LOG_LEVEL": "debug"},
                     config={"queue_memory_window": 5_000}).start() as node:
        conn = await Connection.open(node.url)
        await conn.open_channel(1)
        await conn.call(1, spec.QueueDeclare(queue="slow_q", durable=False), spec.QueueDeclareOk)
        await conn.call(1, spec.BasicQos(0, 50, False), spec.BasicQosOk)
        await conn.call(1, spec.BasicConsume(queue="slow_q", consumer_tag="slow"), spec.BasicConsumeOk)

        async def consume_slowly() -> None:
            while True:
                for frame in await conn.receive():
                    if type(frame) is MethodFrame and type(frame.method) is spec.BasicDeliver:
                        await trio.sleep(0.0005)
                        await conn.send(encode_method(1, spec.BasicAck(frame.method.delivery_tag, False)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume_slowly)
            with trio.fail_after(180):
                await fill(node.url, "slow_q", 20_000, durable=False, persistent=False, body_size=BODY)
            nursery.cancel_scope.cancel()
        await trio.aclose_forcefully(conn.stream)
        assert node.log_text().count(FLOW_PAUSE_LINE) > MAX_PAUSES
