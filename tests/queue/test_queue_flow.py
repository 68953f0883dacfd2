"""Publisher flow control on a queue leader: consumers that fall behind pause publishers,
consumers that take nothing do not (issue 12 item 7; the end-to-end version with a real
socket that is never read is tests/hostile/test_stuck_consumer.py)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import trio
import trio.testing

from broker.amqp.spec import BasicProperties
from broker.arguments import QueueSettings
from broker.config import Settings
from broker.message import Message
from broker.node import Node
from broker.queue_leader import FLOW_HIGH, ConsumerRef, QueueLeader


class CreditedSession:
    """The part of a session a queue leader delivers through, with credit set by the test."""

    def __init__(self) -> None:
        self.credit = 0
        self.delivered = 0

    def can_deliver(self, channel: int, tag: str) -> bool:
        return self.credit > 0

    def deliver(self, channel: int, tag: str, handle: Any, m: Message, redelivered: bool) -> int | None:
        if self.credit <= 0:
            return None
        self.credit -= 1
        self.delivered += 1
        return self.delivered


def backlogged_queue() -> tuple[QueueLeader, CreditedSession]:
    node = Node(replace(Settings(node_name="flow@localhost"), queue_memory_window=0))
    leader = QueueLeader(node, "/", "q", False, QueueSettings(), 0)
    session = CreditedSession()
    leader.add_consumer(ConsumerRef(session, 1, "c", no_ack=True), 0, False)  # type: ignore[arg-type]
    for number in range(FLOW_HIGH + 100):
        leader.publish(Message("", "q", BasicProperties(), b"x", id=number + 1), 0, None)
    return leader, session


async def test_a_pause_without_a_delivery_marks_the_consumers_stuck_until_they_take_one(
        autojump_clock: trio.testing.MockClock) -> None:
    leader, session = backlogged_queue()
    assert leader.congested  # not yet known to be stuck: the first pause finds out
    await leader.pause_publisher(0.05)
    assert not leader.congested
    # Credit again: the consumer takes a few, and the queue throttles its publishers again.
    session.credit = 10
    leader.dispatch(0)
    assert session.delivered == 10 and leader.state.messages_ready > FLOW_HIGH
    assert leader.congested


async def test_a_pause_with_deliveries_leaves_the_queue_congested(autojump_clock: trio.testing.MockClock) -> None:
    leader, session = backlogged_queue()

    async def take_one_later() -> None:
        await trio.sleep(0.01)
        session.credit = 1
        leader.dispatch(0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take_one_later)
        await leader.pause_publisher(0.05)
    assert session.delivered == 1
    assert leader.congested
