"""aio-pika (asyncio, over aiormq) against a real node.

`connect_robust`, channels with publisher confirms (`publish` awaits the
node's ack), `declare_queue`, exchanges and bindings, the async-iterator
consumer with `message.process()`, `get`, and a nack coming back as an error.
The tests are plain functions running their own asyncio loop: the suite's
pytest-trio mode owns `async def` tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import aio_pika.exceptions
import aiormq.exceptions
import pamqp.commands
import pytest

from tests.clients.common import BrokerAddress, unique

LIMIT = 20.0


def run(broker: BrokerAddress, body: Callable[[aio_pika.abc.AbstractRobustConnection], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        conn = await aio_pika.connect_robust(broker.url, timeout=5)
        try:
            return await asyncio.wait_for(body(conn), LIMIT)
        finally:
            await conn.close()

    return asyncio.run(main())


def test_confirmed_publish_and_iterator_consumer(broker: BrokerAddress) -> None:
    async def body(conn: aio_pika.abc.AbstractRobustConnection) -> None:
        ch = await conn.channel(publisher_confirms=True)
        await ch.set_qos(prefetch_count=4)
        q = await ch.declare_queue(unique("aiopika-iter"), durable=True, auto_delete=False)
        for i in range(20):
            confirmation = await ch.default_exchange.publish(
                aio_pika.Message(f"m{i}".encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                 headers={"i": i}, message_id=str(i)),
                routing_key=q.name)
            assert isinstance(confirmation, aiormq.abc.ConfirmationFrameType)
            assert confirmation.name == "Basic.Ack"
        got = []
        async with q.iterator() as it:
            async for message in it:
                async with message.process():
                    got.append((message.body, message.headers["i"], message.message_id))
                if len(got) == 20:
                    break
        assert got == [(f"m{i}".encode(), i, str(i)) for i in range(20)]
        declared = await ch.declare_queue(q.name, passive=True)
        assert declared.declaration_result.message_count == 0
        await q.delete(if_unused=False, if_empty=False)

    run(broker, body)


def test_process_requeues_on_exception_and_get(broker: BrokerAddress) -> None:
    async def body(conn: aio_pika.abc.AbstractRobustConnection) -> None:
        ch = await conn.channel(publisher_confirms=True)
        q = await ch.declare_queue(unique("aiopika-requeue"), auto_delete=False)
        await ch.default_exchange.publish(aio_pika.Message(b"retry me"), routing_key=q.name)
        m = await q.get(timeout=5)
        assert (m.body, m.redelivered) == (b"retry me", False)
        with pytest.raises(RuntimeError):
            async with m.process(requeue=True):
                raise RuntimeError("handler failed")
        m = await q.get(timeout=5)
        assert (m.body, m.redelivered) == (b"retry me", True)
        await m.ack()
        assert await q.get(fail=False) is None
        with pytest.raises(aio_pika.exceptions.QueueEmpty):
            await q.get()
        await q.delete()

    run(broker, body)


def test_exchanges_and_bindings(broker: BrokerAddress) -> None:
    async def body(conn: aio_pika.abc.AbstractRobustConnection) -> None:
        ch = await conn.channel(publisher_confirms=True)
        topic = await ch.declare_exchange(unique("aiopika-topic"), aio_pika.ExchangeType.TOPIC)
        fanout = await ch.declare_exchange(unique("aiopika-fanout"), aio_pika.ExchangeType.FANOUT)
        headers = await ch.declare_exchange(unique("aiopika-headers"), aio_pika.ExchangeType.HEADERS)
        a = await ch.declare_queue(exclusive=True)
        b = await ch.declare_queue(exclusive=True)
        await a.bind(topic, routing_key="eu.#")
        # Exchange-to-exchange: everything the fanout gets also goes through the topic exchange.
        await topic.bind(fanout)
        await b.bind(headers, arguments={"x-match": "all", "kind": "invoice", "region": "eu"})
        await topic.publish(aio_pika.Message(b"t1"), routing_key="eu.fr.paris")
        await topic.publish(aio_pika.Message(b"t2"), routing_key="us.ny")
        await fanout.publish(aio_pika.Message(b"f1"), routing_key="eu.de")
        await headers.publish(aio_pika.Message(b"h1", headers={"kind": "invoice", "region": "eu"}), routing_key="")
        await headers.publish(aio_pika.Message(b"h2", headers={"kind": "invoice"}), routing_key="")

        async def bodies(q: aio_pika.abc.AbstractQueue) -> list[bytes]:
            out = []
            while (m := await q.get(no_ack=True, fail=False)) is not None:
                out.append(m.body)
            return out

        assert await bodies(a) == [b"t1", b"f1"]
        assert await bodies(b) == [b"h1"]
        await topic.unbind(fanout)
        await fanout.publish(aio_pika.Message(b"f2"), routing_key="eu.de")
        assert await bodies(a) == []
        await a.unbind(topic, routing_key="eu.#")
        for ex in (topic, fanout, headers):
            await ex.delete()

    run(broker, body)


def test_async_callback_consumer_with_cancel(broker: BrokerAddress) -> None:
    async def body(conn: aio_pika.abc.AbstractRobustConnection) -> None:
        ch = await conn.channel(publisher_confirms=True)
        q = await ch.declare_queue(unique("aiopika-cb"), auto_delete=False)
        seen: list[bytes] = []
        done = asyncio.Event()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with message.process():
                seen.append(message.body)
                if len(seen) == 5:
                    done.set()

        tag = await q.consume(on_message)
        await asyncio.gather(*(ch.default_exchange.publish(aio_pika.Message(bytes([65 + i])), routing_key=q.name)
                               for i in range(5)))
        await done.wait()
        await q.cancel(tag)
        assert sorted(seen) == [b"A", b"B", b"C", b"D", b"E"]
        await ch.default_exchange.publish(aio_pika.Message(b"after"), routing_key=q.name)
        await asyncio.sleep(0.1)
        assert seen[-1] != b"after"
        assert (await q.get(no_ack=True)).body == b"after"
        await q.delete()

    run(broker, body)


def test_nack_from_full_reject_publish_queue(broker: BrokerAddress) -> None:
    async def body(conn: aio_pika.abc.AbstractRobustConnection) -> None:
        ch = await conn.channel(publisher_confirms=True)
        q = await ch.declare_queue(unique("aiopika-full"), auto_delete=False,
                                   arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
        await ch.default_exchange.publish(aio_pika.Message(b"fits"), routing_key=q.name)
        with pytest.raises(aio_pika.exceptions.DeliveryError) as info:
            await ch.default_exchange.publish(aio_pika.Message(b"overflow"), routing_key=q.name)
        assert info.value.frame.name == "Basic.Nack"
        assert (await q.get(no_ack=True)).body == b"fits"
        await q.delete()

    run(broker, body)


def test_channel_error_surfaces_and_connection_survives(broker: BrokerAddress) -> None:
    async def body(conn: aio_pika.abc.AbstractRobustConnection) -> None:
        ch = await conn.channel()
        name = unique("aiopika-missing")
        with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity) as info:
            await ch.declare_queue(name, passive=True)
        # aiormq picks the class by reply code (404) and keeps the reply text.
        assert info.value.args == (f"NOT_FOUND - no queue '{name}' in vhost '/'",)
        other = await conn.channel()
        q = await other.declare_queue(exclusive=True)
        await other.default_exchange.publish(aio_pika.Message(b"still here"), routing_key=q.name)
        assert (await q.get(no_ack=True, timeout=5)).body == b"still here"

    run(broker, body)


def test_update_secret_keeps_the_connection_whatever_the_secret(broker: BrokerAddress) -> None:
    """connection.update-secret is answered with update-secret-ok for internal users.

    RabbitMQ 3.10.8 hands the new secret only to auth backends whose state can
    expire; its internal user database cannot, so even a secret that is not the
    user's password is accepted and the connection carries on (a client rotating a
    credential must not lose its connection)."""

    async def body(conn: aio_pika.abc.AbstractRobustConnection) -> None:
        amqp = conn.transport.connection
        for secret in ("guest", "not-the-password"):
            ok = await amqp.update_secret(secret, reason="rotation", timeout=5)
            assert isinstance(ok, pamqp.commands.Connection.UpdateSecretOk)
        ch = await conn.channel()
        q = await ch.declare_queue(exclusive=True)
        await ch.default_exchange.publish(aio_pika.Message(b"after rotation"), routing_key=q.name)
        assert (await q.get(no_ack=True, timeout=5)).body == b"after rotation"

    run(broker, body)


def test_robust_connection_recovers_after_a_node_restart(fresh_node: Any) -> None:
    """connect_robust reconnects, redeclares its queue and resumes consuming when the node comes back."""
    broker = BrokerAddress(fresh_node.url)
    received: list[bytes] = []

    async def main() -> None:
        conn = await aio_pika.connect_robust(broker.url, timeout=5, reconnect_interval=0.2)
        try:
            ch = await conn.channel(publisher_confirms=True)
            q = await ch.declare_queue(unique("aiopika-robust"), durable=True, auto_delete=False)
            got = asyncio.Event()

            async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                async with message.process():
                    received.append(message.body)
                    got.set()

            await q.consume(on_message)
            await ch.default_exchange.publish(aio_pika.Message(b"before"), routing_key=q.name)
            await asyncio.wait_for(got.wait(), 5)
            got.clear()
            reconnected = asyncio.Event()
            conn.reconnect_callbacks.add(lambda *_: reconnected.set())
            await asyncio.to_thread(fresh_node.stop)
            await asyncio.to_thread(fresh_node.start)
            await asyncio.wait_for(reconnected.wait(), 10)
            await ch.default_exchange.publish(aio_pika.Message(b"after", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                                              routing_key=q.name)
            await asyncio.wait_for(got.wait(), 5)
        finally:
            await conn.close()

    asyncio.run(asyncio.wait_for(main(), LIMIT))
    assert received == [b"before", b"after"]


def test_unroutable_mandatory_publish_raises_and_transactions(broker: BrokerAddress) -> None:
    async def body(conn: aio_pika.abc.AbstractRobustConnection) -> None:
        ch = await conn.channel(publisher_confirms=True, on_return_raises=True)
        with pytest.raises(aio_pika.exceptions.DeliveryError) as info:
            await ch.default_exchange.publish(aio_pika.Message(b"lost"), routing_key=unique("aiopika-nobody"),
                                              mandatory=True)
        returned = info.value.message
        assert returned is not None and returned.body == b"lost"
        # A transactional channel: nothing is visible before commit, a rollback drops.
        tx_ch = await conn.channel(publisher_confirms=False)
        q = await tx_ch.declare_queue(unique("aiopika-tx"), auto_delete=False)
        tx = tx_ch.transaction()
        await tx.select()
        await tx_ch.default_exchange.publish(aio_pika.Message(b"rolled back"), routing_key=q.name)
        await tx.rollback()
        await tx_ch.default_exchange.publish(aio_pika.Message(b"committed"), routing_key=q.name)
        assert (await ch.declare_queue(q.name, passive=True)).declaration_result.message_count == 0
        await tx.commit()
        assert (await q.get(no_ack=True)).body == b"committed"
        assert await q.get(no_ack=True, fail=False) is None
        await q.delete()

    run(broker, body)
