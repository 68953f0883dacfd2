"""The load generator's own ceiling: how fast it encodes publishes and accounts deliveries, with no broker.

Runs the very code the roles run (`encode_batch`, `FrameDecoder.feed` +
`DeliveryAssembler.take` + `ReceiveTally.record`) on in-memory data, so a reader
can tell whether a broker's figure is the broker's or the generator's limit: a
broker figure close to the ceiling means the generator was the bottleneck.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from broker.amqp import spec
from broker.amqp.codec import FrameDecoder, encode_deliver, encode_properties

from .accounting import ReceiveTally, make_body
from .client import FRAME_MAX, RECEIVE_CHUNK
from .workload import DeliveryAssembler, Workload, encode_batch, publish_template

__all__ = ["Ceiling", "measure_ceiling"]

# Frames per message: method, content header, one body frame.
FRAMES_PER_MESSAGE = 3


@dataclass(frozen=True, slots=True)
class Ceiling:
    """Messages per second one generator process can encode (publish) and decode+account (deliver)."""

    encode_per_s: float
    decode_per_s: float
    procs: int

    @property
    def encode_frames_per_s(self) -> float:
        return self.encode_per_s * FRAMES_PER_MESSAGE

    @property
    def decode_frames_per_s(self) -> float:
        return self.decode_per_s * FRAMES_PER_MESSAGE


def _encode_rate(body_size: int, seconds: float) -> float:
    prefix, suffix = publish_template(Workload(routing_key="perf.ceiling", body_size=body_size), 1, FRAME_MAX)
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        encode_batch(prefix, suffix, 1, count + 1, 128, 0)
        count += 128
    return count / (time.perf_counter() - start)


def _decode_rate(body_size: int, seconds: float) -> float:
    raw = encode_properties(spec.BasicProperties(content_type="application/octet-stream", delivery_mode=1))
    batch = 20_000
    data = b"".join(
        encode_deliver(1, "perf-1", tag, False, "", "perf.ceiling", raw, make_body(1, tag, 0, body_size), FRAME_MAX)
        for tag in range(1, batch + 1)
    )
    chunks = [data[i : i + RECEIVE_CHUNK] for i in range(0, len(data), RECEIVE_CHUNK)]
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        # A fresh tally per pass: the same stamps again would count as duplicates.
        tally = ReceiveTally("perf.ceiling", 2**63)
        decoder = FrameDecoder(FRAME_MAX)
        assembler = DeliveryAssembler(tally, "perf.ceiling", None)
        for chunk in chunks:
            frames, error = decoder.feed(chunk)
            assert error is None
            assembler.take(frames, 1)
        assert tally.unique == batch, tally.unique
        count += batch
    return count / (time.perf_counter() - start)


def measure_ceiling(procs: int, body_size: int = 256, seconds: float = 0.5) -> Ceiling:
    return Ceiling(_encode_rate(body_size, seconds), _decode_rate(body_size, seconds), procs)
