"""Snapshots of a queue's state machine: `QueueState` to bytes and back.

A replicated queue's log is compacted behind a snapshot of its `QueueState`; a
new replica starts from one. So the bytes must carry everything that decides
what the state does next, and nothing a replica chooses for itself:

* the name and the effective settings (`QueueSettings.to_wire`), which include
  the quorum delivery limit;
* the last use of the queue (the x-expires clock) and the next sequence number;
* every priority level's ready entries, in delivery order, and every
  unacknowledged entry, by sequence number: seq, expiry deadline, delivery
  count (the redelivered flag and a quorum queue's returns both derive from
  it) and the message (`broker.remote_queue.message_to_wire`, its id kept).

Which consumer holds an unacknowledged message is not part of `QueueState`
(the leader's shell keeps it, and a new leader's `RequeueAll` returns them all),
so it is not part of the snapshot either. Paging is a replica's local affair
and its pages are not in the state: a state with messages paged out is refused
(ValueError), and a restored state runs without paging.

Deterministic: equal states give equal bytes. Nothing in the snapshot is
unordered — levels and their entries are in queue order, unacknowledged
entries sorted by seq (the state never depends on the order it took them in),
the settings map in `QueueSettings`' field order.

Layout (msgpack): ["leveret.queue", VERSION, name, settings, last_used_ms,
next_seq, [level...] lowest priority first, [unacked entry...]], each level a
list of entries, each entry [seq, expires_at, deliveries, message id, message].
"""

from __future__ import annotations

from typing import Any

import msgpack

from broker.arguments import QueueSettings
from broker.queue import QueueEntry, QueueState
from broker.remote_queue import message_from_wire, message_to_wire

MAGIC = "leveret.queue"
VERSION = 1


def _entry_to_wire(entry: QueueEntry) -> list[Any]:
    message = entry.message
    return [entry.seq, entry.expires_at, entry.deliveries, message.id, message_to_wire(message)]


def _entry_from_wire(wire: Any) -> QueueEntry:
    seq, expires_at, deliveries, message_id, message = wire
    return QueueEntry(int(seq), message_from_wire(message, int(message_id)),
                      None if expires_at is None else int(expires_at), int(deliveries))


def state_to_bytes(state: QueueState) -> bytes:
    """The snapshot of `state`; ValueError if it has messages paged out."""
    next_seq, levels, unacked = state.snapshot_parts()
    return msgpack.packb([
        MAGIC,
        VERSION,
        state.name,
        state.settings.to_wire(),
        state.last_used_ms,
        next_seq,
        [[_entry_to_wire(e) for e in entries] for entries in levels],
        [_entry_to_wire(e) for e in unacked],
    ], use_bin_type=True)


def state_from_bytes(data: bytes) -> QueueState:
    """The `QueueState` `state_to_bytes` made `data` from (without paging); ValueError if
    `data` is not such a snapshot."""
    try:
        decoded = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (msgpack.UnpackException, ValueError, TypeError) as exc:
        raise ValueError(f"not a queue snapshot: {exc}") from exc
    if not isinstance(decoded, list) or len(decoded) != 8 or decoded[0] != MAGIC:
        raise ValueError("not a queue snapshot")
    _, version, name, settings, last_used_ms, next_seq, levels, unacked = decoded
    if version != VERSION:
        raise ValueError(f"queue snapshot version {version!r} is not {VERSION}")
    try:
        return QueueState.restored(
            str(name),
            QueueSettings.from_wire(settings),
            int(last_used_ms),
            int(next_seq),
            [[_entry_from_wire(e) for e in entries] for entries in levels],
            [_entry_from_wire(e) for e in unacked],
        )
    except (TypeError, KeyError) as exc:
        raise ValueError(f"malformed queue snapshot: {exc}") from exc
