"""A tiny in-process AMQP broker for testing the load generator's accounting.

It speaks just what `leveret-perf` uses (handshake, channels, declare/bind/delete,
qos, confirms, consume, publish, ack) with the project's codec, and it can
misbehave on purpose: drop every k-th published message (while still confirming
it), deliver every k-th message twice, or garble every k-th body. It counts what
it really delivered, so a test can hold the generator's figures against the truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from broker.amqp import spec
from broker.amqp.codec import (
    BodyFrame,
    FrameDecoder,
    HeaderFrame,
    MethodFrame,
    encode_basic_ack,
    encode_deliver,
    encode_method,
)


@dataclass
class Misbehaviour:
    drop_every: int = 0
    duplicate_every: int = 0
    garble_every: int = 0
    # Hold every k-th message back and deliver it after the next one.
    swap_every: int = 0


@dataclass
class Truth:
    published: int = 0
    dropped: int = 0
    # Deliveries written to consumers, counting each copy.
    deliveries: int = 0
    duplicated: int = 0
    garbled: int = 0
    swapped: int = 0
    confirms: int = 0


class _Conn:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.lock = trio.Lock()
        self.tags = 0

    async def send(self, data: bytes) -> None:
        async with self.lock:
            await self.stream.send_all(data)


@dataclass
class _Queue:
    consumers: list[tuple[_Conn, int, str]] = field(default_factory=list)
    ready: list[tuple[bytes, bytes, str, str]] = field(default_factory=list)
    next_consumer: int = 0


class FakeBroker:
    def __init__(self, misbehaviour: Misbehaviour | None = None) -> None:
        self.misbehaviour = misbehaviour or Misbehaviour()
        self.truth = Truth()
        self.queues: dict[str, _Queue] = {}
        self.fanouts: dict[str, set[str]] = {}
        self.port = 0
        self._held: tuple[spec.BasicPublish, bytes] | None = None

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._connection, listeners)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = _Conn(stream)
        try:
            await self._speak(conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            for queue in self.queues.values():
                queue.consumers = [c for c in queue.consumers if c[0] is not conn]
            await trio.aclose_forcefully(stream)

    async def _speak(self, conn: _Conn) -> None:
        decoder = FrameDecoder(131072)
        header = await conn.stream.receive_some(8)
        assert header == spec.PROTOCOL_HEADER, header
        await conn.send(encode_method(0, spec.ConnectionStart(0, 9, {"product": "fake"}, b"PLAIN", b"en_US")))
        confirming: set[int] = set()
        published_on: dict[int, int] = {}
        content: dict[int, list] = {}
        while True:
            data = await conn.stream.receive_some(65536)
            if not data:
                return
            frames, error = decoder.feed(data)
            assert error is None, error
            out: list[bytes] = []
            for frame in frames:
                ch = frame.channel
                if type(frame) is MethodFrame:
                    m = frame.method
                    if isinstance(m, spec.ConnectionStartOk):
                        out.append(encode_method(0, spec.ConnectionTune(2047, 131072, 0)))
                    elif isinstance(m, spec.ConnectionOpen):
                        out.append(encode_method(0, spec.ConnectionOpenOk()))
                    elif isinstance(m, spec.ConnectionClose):
                        out.append(encode_method(0, spec.ConnectionCloseOk()))
                        await conn.send(b"".join(out))
                        return
                    elif isinstance(m, spec.ChannelOpen):
                        out.append(encode_method(ch, spec.ChannelOpenOk()))
                    elif isinstance(m, spec.QueueDeclare):
                        self.queues.setdefault(m.queue, _Queue())
                        out.append(encode_method(ch, spec.QueueDeclareOk(m.queue, 0, 0)))
                    elif isinstance(m, spec.ExchangeDeclare):
                        self.fanouts.setdefault(m.exchange, set())
                        out.append(encode_method(ch, spec.ExchangeDeclareOk()))
                    elif isinstance(m, spec.QueueBind):
                        self.fanouts[m.exchange].add(m.queue)
                        out.append(encode_method(ch, spec.QueueBindOk()))
                    elif isinstance(m, spec.QueueDelete):
                        self.queues.pop(m.queue, None)
                        out.append(encode_method(ch, spec.QueueDeleteOk(0)))
                    elif isinstance(m, spec.ExchangeDelete):
                        self.fanouts.pop(m.exchange, None)
                        out.append(encode_method(ch, spec.ExchangeDeleteOk()))
                    elif isinstance(m, spec.BasicQos):
                        out.append(encode_method(ch, spec.BasicQosOk()))
                    elif isinstance(m, spec.ConfirmSelect):
                        confirming.add(ch)
                        out.append(encode_method(ch, spec.ConfirmSelectOk()))
                    elif isinstance(m, spec.BasicConsume):
                        out.append(encode_method(ch, spec.BasicConsumeOk(m.consumer_tag)))
                        await conn.send(b"".join(out))
                        out = []
                        queue = self.queues[m.queue]
                        queue.consumers.append((conn, ch, m.consumer_tag))
                        ready, queue.ready = queue.ready, []
                        for raw, body, exchange, routing_key in ready:
                            await self._deliver(queue, raw, body, exchange, routing_key)
                    elif isinstance(m, spec.BasicPublish):
                        content[ch] = [m, None, []]
                    elif isinstance(m, (spec.BasicAck, spec.ChannelClose, spec.ConnectionTuneOk)):
                        if isinstance(m, spec.ChannelClose):
                            out.append(encode_method(ch, spec.ChannelCloseOk()))
                    else:
                        raise AssertionError(f"fake broker does not speak {m.NAME}")
                else:
                    if type(frame) is HeaderFrame:
                        content[ch][1] = frame.body_size
                    elif type(frame) is BodyFrame:
                        content[ch][2].append(frame.payload)
                    publish, size, parts = content[ch]
                    if size is None or sum(map(len, parts)) < size:
                        continue
                    del content[ch]
                    if out:
                        await conn.send(b"".join(out))
                        out = []
                    await self._route(publish, b"".join(parts))
                    if ch in confirming:
                        # Confirmed whatever happened to it: a broker that loses confirmed messages.
                        published_on[ch] = published_on.get(ch, 0) + 1
                        out.append(encode_basic_ack(ch, published_on[ch], False))
                        self.truth.confirms += 1
            if out:
                await conn.send(b"".join(out))

    async def _route(self, publish: spec.BasicPublish, body: bytes) -> None:
        raw = b"\x00\x00"  # no properties: the generator does not read them
        self.truth.published += 1
        n = self.truth.published
        mis = self.misbehaviour
        if mis.drop_every and n % mis.drop_every == 0:
            self.truth.dropped += 1
            return
        if mis.garble_every and n % mis.garble_every == 0:
            self.truth.garbled += 1
            body = b"garbage!" + body[8:]
        if publish.exchange:
            targets = sorted(self.fanouts.get(publish.exchange, ()))
        else:
            targets = [publish.routing_key] if publish.routing_key in self.queues else []
        if mis.swap_every and n % mis.swap_every == 0 and self._held is None:
            self._held = (publish, body)
            return
        copies = 2 if mis.duplicate_every and n % mis.duplicate_every == 0 else 1
        if copies == 2:
            self.truth.duplicated += 1
        for name in targets:
            queue = self.queues[name]
            for _ in range(copies):
                await self._deliver(queue, raw, body, publish.exchange, publish.routing_key)
        held, self._held = self._held, None
        if held is not None:
            self.truth.swapped += 1
            for name in targets:
                await self._deliver(self.queues[name], raw, held[1], held[0].exchange, held[0].routing_key)

    async def _deliver(self, queue: _Queue, raw: bytes, body: bytes, exchange: str, routing_key: str) -> None:
        if not queue.consumers:
            queue.ready.append((raw, body, exchange, routing_key))
            return
        conn, ch, tag = queue.consumers[queue.next_consumer % len(queue.consumers)]
        queue.next_consumer += 1
        conn.tags += 1
        self.truth.deliveries += 1
        try:
            await conn.send(encode_deliver(ch, tag, conn.tags, False, exchange, routing_key, raw, body, 131072))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
