"""Dead-lettering: the copy of a message RabbitMQ republishes to a queue's dead-letter
exchange, with its `x-death` history, and the cycle rule that drops it instead.

Pure: a message, a reason, the source queue and a time in; a new `Message` and the
routing keys to route it with out. Follows RabbitMQ 3.10 `rabbit_dead_letter.erl`:

* `x-death` is a list of tables, one per (queue, reason), the latest death first.
  A death for a pair already present increments that entry's `count` and moves it
  to the front; its other fields (time, exchange, routing-keys) keep the values of
  the first death for that pair. A new pair is prepended with count 1. Before
  that, RabbitMQ regroups the existing entries with a fold that reverses their
  order whenever there are two or more (checked against RabbitMQ 3.10.8: after
  deaths a, b, c, d the header reads d, b, a, c); Leveret reproduces it, since
  clients and the cycle rule below see that order.
* each entry: `count`, `reason`, `queue`, `time` (seconds, an AMQP timestamp),
  `exchange`, `routing-keys` (the publish routing key then the CC keys) and
  `original-expiration` when the message had a per-message TTL, which is then
  removed so the message does not expire again in the dead-letter queue.
* the first death also sets `x-first-death-reason`, `-queue` and `-exchange`.
* routing keys: `x-dead-letter-routing-key` when set (and the CC header is then
  removed), else the original keys: the publish key, CC and BCC.
* cycles: a message routed back to a queue it already died in, without any
  `rejected` death in between, is dropped (`without_cycles`).

A header table written here is sorted by key like `rabbit_misc:set_table_value`
leaves it. AMQP timestamps are written as timezone-aware UTC `datetime` values;
the codec encodes a `datetime` in a field table as type `T`.

The copy shares the original body (no bytes are copied) and by default its id,
which is the body's key in the store; a caller that needs a distinct id passes one.
"""

from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from broker.amqp.codec import Long
from broker.message import Message

REASON_REJECTED = "rejected"
REASON_EXPIRED = "expired"
REASON_MAXLEN = "maxlen"
REASON_DELIVERY_LIMIT = "delivery_limit"
REASONS = (REASON_REJECTED, REASON_EXPIRED, REASON_MAXLEN, REASON_DELIVERY_LIMIT)


@dataclass(frozen=True, slots=True)
class DeadLettered:
    """The message to publish to the dead-letter exchange and the keys to route it by."""

    message: Message
    routing_keys: tuple[str, ...]


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return None


def _header_routes(headers: Mapping[str, Any], key: str) -> list[str]:
    value = headers.get(key)
    if not isinstance(value, (list, tuple)):
        return []
    return [t for t in (_text(v) for v in value) if t is not None]


def _sorted_table(table: Mapping[str, Any]) -> dict[str, Any]:
    return dict(sorted(table.items(), key=lambda kv: kv[0].encode("utf-8")))


def _death_key(entry: Any) -> tuple[str | None, str | None] | None:
    if not isinstance(entry, Mapping):
        return None
    return _text(entry.get("queue")), _text(entry.get("reason"))


def _grouped(deaths: list[Any]) -> list[Any]:
    """rabbit_dead_letter:group_by_queue_and_reason/1, fold and all: one entry per
    (queue, reason), a missing count set to the number of duplicates. The fold
    prepends, so with two or more entries their order comes out reversed; RabbitMQ
    3.10.8 does exactly this (measured), and clients see it, so Leveret does too."""
    if len(deaths) <= 1:
        return deaths
    tables = [d for d in deaths if isinstance(d, Mapping)]
    seen: set[tuple[str | None, str | None]] = set()
    grouped: list[Any] = []
    for table in tables:
        key = _death_key(table)
        matches = [t for t in tables if _death_key(t) == key]
        first = matches[0]
        if "count" not in first:
            first = {"count": Long(len(matches)), **first}
        if not grouped:
            grouped = [first]
        elif key not in seen:
            grouped.insert(0, first)
        seen.add(key)
    return grouped


def dead_letter(
    message: Message,
    reason: str,
    queue: str,
    exchange: str,
    routing_key: str | None,
    now_ms: int,
    message_id: int | None = None,
) -> DeadLettered:
    """The copy of `message` that queue `queue` publishes to `exchange` for `reason`."""
    assert reason in REASONS, reason
    props = message.properties
    headers: dict[str, Any] = dict(props.headers or {})
    cc = _header_routes(headers, "CC")
    bcc = _header_routes(headers, "BCC")
    original_keys = [message.routing_key, *cc, *bcc]

    info: dict[str, Any] = {
        "reason": reason,
        "queue": queue,
        "time": datetime.datetime.fromtimestamp(now_ms // 1000, tz=datetime.timezone.utc),
        "exchange": message.exchange,
        "routing-keys": [message.routing_key, *cc],
    }
    if props.expiration is not None:
        info["original-expiration"] = props.expiration

    existing = headers.get("x-death")
    if existing is None:
        headers["x-first-death-reason"] = reason
        headers["x-first-death-queue"] = queue
        headers["x-first-death-exchange"] = message.exchange
        headers["x-death"] = [{"count": Long(1), **info}]
    elif isinstance(existing, (list, tuple)):
        deaths = _grouped(list(existing))
        matches = [d for d in deaths if _death_key(d) == (queue, reason)]
        others = [d for d in deaths if _death_key(d) != (queue, reason)]
        if matches:
            entry = dict(matches[0])
            count = entry.get("count")
            entry["count"] = Long(count + 1 if isinstance(count, int) and not isinstance(count, bool) else 1)
        else:
            entry = {"count": Long(1), **info}
        headers["x-death"] = [_sorted_table(entry), *others]
    else:
        # A client republished a consumed message and turned x-death into something
        # else (rabbitmq-server#767): start the history again.
        headers["x-death"] = [{"count": Long(1), **info}]

    if routing_key is not None:
        keys: tuple[str, ...] = (routing_key,)
        headers.pop("CC", None)
    else:
        keys = tuple(original_keys)
    # BCC never travels with a message (rabbit_basic:message/3 strips it at publish).
    headers.pop("BCC", None)

    new_props = dataclasses.replace(props, headers=_sorted_table(headers), expiration=None)
    copy = Message(
        exchange=exchange,
        routing_key=keys[0],
        properties=new_props,
        body=message.body,
        persistent=message.persistent,
        priority=message.priority,
        expiration_ms=None,
        raw_properties=None,
        id=message.id if message_id is None else message_id,
    )
    return DeadLettered(copy, keys)


def is_cycle(message: Message, queue: str) -> bool:
    """Would dead-lettering `message` (already carrying this death) into `queue` loop
    without any client rejecting it? (`rabbit_dead_letter:is_cycle/2`)"""
    headers = message.properties.headers or {}
    deaths = headers.get("x-death")
    if not isinstance(deaths, (list, tuple)):
        return False
    for i, entry in enumerate(deaths):
        if isinstance(entry, Mapping) and _text(entry.get("queue")) == queue:
            cycle = deaths[: i + 1]
            return all(isinstance(d, Mapping) and _text(d.get("reason")) != REASON_REJECTED for d in cycle)
    return False


def without_cycles(reason: str, message: Message, queues: Iterable[str]) -> list[str]:
    """The routed queues a dead-lettered message may enter; cyclic ones are dropped.
    A rejection is always delivered (a client decided, so the loop is not automatic)."""
    if reason == REASON_REJECTED:
        return list(queues)
    return [q for q in queues if not is_cycle(message, q)]
