"""Publisher and consumer roles: the hot loops of the load generator.

A role is set up first (connect, open a channel, subscribe) and then run over a
time window given as monotonic nanoseconds (`time.monotonic_ns`, which is
CLOCK_MONOTONIC and so shared by every process on the machine):

    start ──── publish ──── end ──── drain (consumers only) ──── drain_until

Publishers pipeline: each write carries a batch of messages encoded from a
template (method frame + content header + body frame head built once with the
codec), only the stamp changing from message to message. With confirms, a batch
never takes the number of unconfirmed messages past the window. A paced publisher
(`rate`) sends every message when it falls due.

Consumers read in large chunks, decode with the codec's FrameDecoder and count
each complete delivery through `ReceiveTally`; with manual acks they settle each
chunk with one `basic.ack(multiple)`. A consumer stops once the publishing window
is over and nothing has arrived for `idle` seconds, or at `drain_until`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import trio

from broker.amqp import spec
from broker.amqp.codec import BodyFrame, HeaderFrame, MethodFrame, encode_basic_ack, encode_content, encode_method, encode_properties

from .accounting import STAMP_SIZE, ConfirmClock, ConfirmTracker, PublishTally, ReceiveTally, stamp_prefix
from .client import BrokerClosed, Connection

__all__ = [
    "Consumer",
    "DeliveryAssembler",
    "Publisher",
    "Role",
    "Window",
    "Workload",
    "encode_batch",
    "make_role",
    "publish_template",
]

_monotonic_ns = time.monotonic_ns


@dataclass(frozen=True, slots=True)
class Workload:
    """How the roles of one scenario publish and consume."""

    exchange: str = ""
    routing_key: str = ""
    body_size: int = 256
    persistent: bool = False
    # Unconfirmed messages a publisher may have in flight; 0 = no confirms.
    confirm_window: int = 0
    # Messages per second per publisher; 0 = as fast as the broker takes them.
    rate: float = 0.0
    # Stop after this many messages per publisher (0 = stop by time only).
    max_messages: int = 0
    auto_ack: bool = True
    prefetch: int = 0
    keep_latencies: bool = False
    # A consumer stops once it has received this many messages (0 = by time only).
    stop_after: int = 0
    # Consumers stop after this long without a delivery once publishing is over.
    idle: float = 1.0
    # Publishers time every confirm (PublishTally.confirm_latencies_ns / confirm_times_ns).
    confirm_latencies: bool = False
    # Consumers keep the arrival time of every delivery (ReceiveTally.arrivals_ns).
    keep_arrivals: bool = False


@dataclass(frozen=True, slots=True)
class Role:
    kind: str  # "publish" or "consume"
    index: int
    queue: str = ""
    # Another node of the same cluster to connect to, instead of the run's URL.
    url: str = ""


@dataclass(frozen=True, slots=True)
class Window:
    start_ns: int
    end_ns: int
    drain_until_ns: int


async def _sleep_until_ns(deadline_ns: int) -> None:
    await trio.sleep(max(0.0, (deadline_ns - _monotonic_ns()) / 1e9))


class Publisher:
    def __init__(self, url: str, workload: Workload, role: Role) -> None:
        assert workload.body_size >= STAMP_SIZE
        self.url = role.url or url
        self.workload = workload
        self.role = role
        self.tally = PublishTally(role.index)
        self.confirms = ConfirmTracker()
        self.clock = ConfirmClock() if workload.confirm_latencies else None
        self.conn: Connection | None = None
        self._space = trio.Event()
        self.error: str | None = None
        self.done = False

    async def setup(self) -> None:
        conn = self.conn = await Connection.open(self.url)
        await conn.open_channel(1)
        if self.workload.confirm_window:
            await conn.call(1, spec.ConfirmSelect(), spec.ConfirmSelectOk)

    async def _read_confirms(self) -> None:
        conn = self.conn
        assert conn is not None
        confirms = self.confirms
        clock = self.clock
        while True:
            frames = await conn.receive()
            settled = acked = 0
            for frame in frames:
                if type(frame) is MethodFrame:
                    method = frame.method
                    if type(method) is spec.BasicAck:
                        n = confirms.settle(method.delivery_tag, method.multiple, True)
                        settled += n
                        acked += n
                    elif type(method) is spec.BasicNack:
                        settled += confirms.settle(method.delivery_tag, method.multiple, False)
                    else:
                        conn.check(frame)
            if settled:
                if clock is not None:
                    clock.settled(confirms.settled_through, _monotonic_ns(), acked > 0)
                self._space.set()
                self._space = trio.Event()

    async def run(self, window: Window) -> PublishTally:
        conn = self.conn
        assert conn is not None
        w = self.workload
        prefix, suffix = publish_template(w, 1, conn.frame_max)
        tally = self.tally
        confirms = self.confirms
        publisher = self.role.index
        limit = w.max_messages
        confirm_window = w.confirm_window
        batch_cap = 64 if confirm_window else 128
        rate_per_ns = w.rate / 1e9
        send_all = conn.stream.send_all
        seq = 0
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_confirms)
                await _sleep_until_ns(window.start_ns)
                tally.first_ns = _monotonic_ns()
                while True:
                    now = _monotonic_ns()
                    if now >= window.end_ns or (limit and seq >= limit):
                        break
                    n = batch_cap
                    if rate_per_ns:
                        n = min(n, int((now - window.start_ns) * rate_per_ns) + 1 - seq)
                        if n <= 0:
                            next_due = window.start_ns + int((seq) / rate_per_ns)
                            await _sleep_until_ns(min(next_due, window.end_ns))
                            continue
                    if confirm_window:
                        space = confirm_window - confirms.unconfirmed
                        if space <= 0:
                            with trio.move_on_after((window.end_ns - now) / 1e9):
                                await self._space.wait()
                            continue
                        n = min(n, space)
                    if limit:
                        n = min(n, limit - seq)
                    data = encode_batch(prefix, suffix, publisher, seq + 1, n, now)
                    if confirm_window:
                        for _ in range(n):
                            confirms.publish()
                        if self.clock is not None:
                            self.clock.sent(seq + 1, seq + n, now)
                    seq += n
                    await send_all(data)
                    tally.sent = seq
                tally.last_ns = _monotonic_ns()
                tally.acked_in_window = confirms.acked
                if confirm_window:
                    # Let the broker settle what is in flight so `acked` is final.
                    with trio.move_on_after(max(0.0, (window.drain_until_ns - _monotonic_ns()) / 1e9)):
                        while confirms.unconfirmed > 0:
                            await self._space.wait()
                    tally.settled_ns = _monotonic_ns()
                nursery.cancel_scope.cancel()
        except (BrokerClosed, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.error = f"publisher {publisher}: {exc}"
        finally:
            tally.sent = seq
            tally.acked = confirms.acked
            tally.nacked = confirms.nacked
            tally.bogus_confirms = confirms.bogus
            if self.clock is not None:
                tally.confirm_latencies_ns = self.clock.latencies_ns
                tally.confirm_times_ns = self.clock.times_ns
                tally.confirm_acks_ns = self.clock.acks_ns
            # The close handshake completes only once the broker has taken in every
            # publish before it, so wait for it as long as the drain allows.
            with trio.CancelScope(shield=True):
                await conn.close(timeout=max(2.0, (window.drain_until_ns - _monotonic_ns()) / 1e9))
        return tally


class Consumer:
    def __init__(self, url: str, workload: Workload, role: Role) -> None:
        self.url = role.url or url
        self.workload = workload
        self.role = role
        self.tally = ReceiveTally(role.queue, 0, workload.keep_latencies, workload.keep_arrivals)
        self.conn: Connection | None = None
        self.error: str | None = None
        # Set by an in-process runner: the total the publishers sent once all are
        # done (None before), so the consumer can stop as soon as it has them all.
        self.expected: Callable[[], int | None] = lambda: None

    async def setup(self) -> None:
        conn = self.conn = await Connection.open(self.url)
        await conn.open_channel(1)
        w = self.workload
        if w.prefetch:
            await conn.call(1, spec.BasicQos(0, w.prefetch, False), spec.BasicQosOk)
        self.tally.subscribed_ns = _monotonic_ns()
        await conn.call(
            1,
            spec.BasicConsume(0, self.role.queue, f"perf-{self.role.index}", False, w.auto_ack, False, False, {}),
            spec.BasicConsumeOk,
        )

    async def run(self, window: Window) -> ReceiveTally:
        conn = self.conn
        assert conn is not None
        tally = self.tally
        tally.window_end_ns = window.end_ns
        assembler = DeliveryAssembler(tally, self.role.queue, conn)
        take = assembler.take
        manual = not self.workload.auto_ack
        idle_ns = int(self.workload.idle * 1e9)
        stop_after = self.workload.stop_after
        receive = conn.receive
        acked_tag = 0
        try:
            while True:
                now = _monotonic_ns()
                if now >= window.drain_until_ns or (stop_after and tally.unique >= stop_after):
                    break
                if now >= window.end_ns:
                    if now - max(tally.last_ns, window.end_ns) >= idle_ns:
                        break
                    expected = self.expected()
                    if expected is not None and tally.unique >= expected:
                        break
                frames = None
                with trio.move_on_after(0.2):
                    frames = await receive()
                if frames is None:
                    continue
                tag = take(frames, _monotonic_ns())
                if manual and tag > acked_tag:
                    await conn.send(encode_basic_ack(1, tag, True))
                    acked_tag = tag
        except (BrokerClosed, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.error = f"consumer {self.role.index} on {self.role.queue!r}: {exc}"
        finally:
            with trio.CancelScope(shield=True):
                await conn.close(timeout=2.0)
        return tally


class DeliveryAssembler:
    """basic.deliver + content header + body frames → one `ReceiveTally.record` per message."""

    __slots__ = ("tally", "queue", "conn", "remaining", "parts", "tag")

    def __init__(self, tally: ReceiveTally, queue: str, conn: Connection | None) -> None:
        self.tally = tally
        self.queue = queue
        self.conn = conn
        self.remaining = -1  # body octets still expected; -1 = waiting for a method
        self.parts: list[bytes] = []
        self.tag = 0

    def take(self, frames: list, now: int) -> int:
        """Account for a batch of frames; returns the highest delivery tag seen so far."""
        record = self.tally.record
        remaining = self.remaining
        parts = self.parts
        tag = self.tag
        for frame in frames:
            kind = type(frame)
            if kind is BodyFrame:
                payload = frame.payload
                if remaining == len(payload) and not parts:
                    remaining = -1
                    record(payload, now)
                else:
                    parts.append(payload)
                    remaining -= len(payload)
                    if remaining <= 0:
                        remaining = -1
                        record(b"".join(parts), now)
                        parts = []
            elif kind is HeaderFrame:
                remaining = frame.body_size
                if remaining == 0:
                    remaining = -1
                    record(b"", now)
            elif kind is MethodFrame:
                method = frame.method
                if type(method) is spec.BasicDeliver:
                    tag = method.delivery_tag
                elif type(method) is spec.BasicCancel:
                    raise BrokerClosed(0, f"broker cancelled the consumer on {self.queue!r}")
                elif self.conn is not None:
                    self.conn.check(frame)
        self.remaining = remaining
        self.parts = parts
        self.tag = tag
        return tag


def encode_batch(prefix: bytes, suffix: bytes, publisher: int, first_seq: int, count: int, now: int) -> bytes:
    """`count` publishes with sequences first_seq.. as one write."""
    parts: list[bytes] = []
    append = parts.append
    for seq in range(first_seq, first_seq + count):
        append(prefix)
        append(stamp_prefix(publisher, seq, now))
        append(suffix)
    return b"".join(parts)


def publish_template(workload: Workload, channel: int, frame_max: int) -> tuple[bytes, bytes]:
    """(octets before the stamp, octets after it) of one publish: method, header and body frames."""
    w = workload
    props = spec.BasicProperties(content_type="application/octet-stream", delivery_mode=2 if w.persistent else 1)
    body = b"\x00" * STAMP_SIZE + b"." * (w.body_size - STAMP_SIZE)
    content = encode_content(channel, 60, encode_properties(props), body, frame_max)
    assert content.endswith(body + b"\xce"), "body must fit one frame"
    method = encode_method(channel, spec.BasicPublish(0, w.exchange, w.routing_key, False, False))
    prefix = method + content[: len(content) - len(body) - 1]
    suffix = body[STAMP_SIZE:] + b"\xce"
    return prefix, suffix


def make_role(url: str, workload: Workload, role: Role) -> Publisher | Consumer:
    return Publisher(url, workload, role) if role.kind == "publish" else Consumer(url, workload, role)
