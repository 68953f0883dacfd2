"""A published message as the broker moves it: routed, queued, delivered, dead-lettered.

The body is shared, never copied, between the queues a message is routed to
(fan-out keeps one `Message` object). The few property values the queue layer
decides on (persistence, priority, per-message TTL) are read once at publish
time so queues never decode properties again. `raw_properties` keeps the
encoded property list exactly as the publisher sent it, so a delivery reuses
those bytes instead of encoding the properties again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True, eq=False)
class Message:
    exchange: str
    routing_key: str
    properties: Any  # broker.amqp.spec.BasicProperties; Any keeps this module free of the codec
    body: bytes
    persistent: bool = False
    priority: int = 0
    expiration_ms: int | None = None
    raw_properties: bytes | None = None
    # Node-unique id, also the body's key in the store when it is paged or persisted.
    id: int = 0

    @property
    def size(self) -> int:
        return len(self.body)
