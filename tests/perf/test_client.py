"""The load generator's AMQP client: frames that race a reply are kept in arrival order."""

from __future__ import annotations

import trio
import trio.testing

from broker.amqp import spec
from broker.amqp.codec import MethodFrame, encode_basic_ack, encode_method
from cli.perf.client import FRAME_MAX, Connection


async def test_frames_around_a_reply_keep_their_order() -> None:
    client_end, broker_end = trio.testing.memory_stream_pair()
    conn = Connection(client_end, FRAME_MAX)  # type: ignore[arg-type]
    # One read carries a frame for another channel, the awaited reply, then more frames:
    # the hot loop must see them in the order the broker sent them.
    await broker_end.send_all(
        encode_basic_ack(2, 1, False)
        + encode_method(1, spec.BasicQosOk())
        + encode_basic_ack(2, 2, False)
        + encode_basic_ack(2, 3, False)
    )
    with trio.fail_after(5):
        reply = await conn.call(1, spec.BasicQos(0, 10, False), spec.BasicQosOk)
        leftovers = await conn.receive()
    assert isinstance(reply, spec.BasicQosOk)
    tags = [f.method.delivery_tag for f in leftovers if type(f) is MethodFrame]
    assert tags == [1, 2, 3]


async def test_frames_from_several_reads_before_a_reply_keep_their_order() -> None:
    client_end, broker_end = trio.testing.memory_stream_pair()
    conn = Connection(client_end, FRAME_MAX)  # type: ignore[arg-type]

    async def broker() -> None:
        await broker_end.send_all(encode_basic_ack(2, 1, False))
        await trio.testing.wait_all_tasks_blocked()
        await broker_end.send_all(encode_method(1, spec.BasicQosOk()) + encode_basic_ack(2, 2, False))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(broker)
            await conn.call(1, spec.BasicQos(0, 10, False), spec.BasicQosOk)
        leftovers = await conn.receive()
    tags = [f.method.delivery_tag for f in leftovers if type(f) is MethodFrame]
    assert tags == [1, 2]
