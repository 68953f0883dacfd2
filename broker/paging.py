"""`StorePages`: the `broker.queue.PageStore` of a queue leader, over the node's store.

A page is one value in the table `queue_paged`, keyed by the queue's key prefix
and an 8-byte big-endian page number: a msgpack list with one record per
message — its queue sequence number, expiry, delivery count, node message id,
the property values the queue decides on, and its content. The content of a
persistent message in a durable queue is not written again: it is already in
`queue_messages` under the queue prefix and its message id, so its record
carries only the id and the page-in reads the content back from there (a
range read when the ids are dense, one lookup each otherwise).

Writes go through the node's group-commit writer in the order they are made,
so a page is never written before the persisted messages it refers to, and a
page read in before its own write lands is served from memory: its encoded
value (the very bytes the writer holds, so no second copy) stays in
`_unwritten` until the writer reports the page written (or forever, if the
write failed, so nothing is lost). Likewise a page read back while the rows of
its persisted messages are still staged or being written (a small window
drained as fast as it fills) finds them with the writer
(`GroupCommitWriter.find_unwritten`). A persisted message whose row failed to
be written (a full disk) stays in its queue, in memory: the node hands its
value back (`keep_unstored`) and a page that names it by id finds it there
until the message leaves the queue. Paged data need not survive a crash —
persistent messages are recovered from `queue_messages` and the node deletes
every leftover page at start (`delete_leftover_pages`).

Back-pressure: transient publishes are confirmed at once, so a publisher faster
than the writer would make unwritten pages pile up in memory; the writer counts
the octets it holds until written and the node stops reading publishers while
more than `broker.node.WRITER_BACKLOG_BYTES` wait (see `Node.writer_lagging`).

Reads are synchronous LMDB read transactions in the trio thread: a page of
1,000 small messages reads and decodes in a few milliseconds, and the queue
reads one only when its in-memory head falls under a page, so a consumer
never waits on a read per message. Properties are decoded once per distinct
property octets in a page (a publisher's messages usually share them).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any, Callable, Iterable

import msgpack
import trio

from broker.amqp import codec
from broker.message import Message
from broker.queue import QueueEntry
from storage.interface import Store, WriteBatch

if TYPE_CHECKING:
    from broker.node import Node


MESSAGES_TABLE = "queue_messages"
PAGED_TABLE = "queue_paged"
_ID = struct.Struct(">Q")


# Exchange names and routing keys are AMQP octets; the codec carries those that
# are not UTF-8 as surrogate escapes, and so do the stored records.
_OCTETS = "surrogateescape"


def persisted_key(prefix: bytes, message_id: int) -> bytes:
    """Where a durable queue keeps a persistent message: its prefix and the message id."""
    return prefix + _ID.pack(message_id)


def encode_persisted(m: Message) -> bytes:
    raw = m.raw_properties if m.raw_properties is not None else codec.encode_properties(m.properties)
    return msgpack.packb([m.exchange, m.routing_key, raw, m.body], use_bin_type=True,
                         unicode_errors=_OCTETS)


def decode_persisted(value: bytes) -> tuple[str, str, bytes, bytes]:
    exchange, routing_key, raw, body = msgpack.unpackb(value, raw=False, unicode_errors=_OCTETS)
    return exchange, routing_key, raw, body


def read_persisted(store: Store, prefix: bytes, ids: list[int]) -> dict[int, bytes]:
    """The stored values of persisted messages `ids` of the queue at `prefix`.

    Message ids of one queue are mostly consecutive, so when they fall into few
    blocks of 256 ids a range read per block (sub-microsecond per entry) beats a
    lookup per id (a read transaction each)."""
    blocks = {i >> 8 for i in ids}
    if len(blocks) * 8 > len(ids):
        return {i: v for i in ids if (v := store.get(MESSAGES_TABLE, persisted_key(prefix, i))) is not None}
    wanted = set(ids)
    found: dict[int, bytes] = {}
    skip = len(prefix)
    for block in sorted(blocks):
        for key, value in store.items(MESSAGES_TABLE, prefix + _ID.pack(block << 8)[:7]):
            i = _ID.unpack_from(key, skip)[0]
            if i in wanted:
                found[i] = value
    return found


def delete_leftover_pages(store: Store) -> WriteBatch:
    """At start: every page in the store belongs to a previous run (a batch deleting them)."""
    batch = WriteBatch()
    for key, _value in store.items(PAGED_TABLE):
        batch.delete(PAGED_TABLE, key)
    return batch


class StorePages:
    """Pages of one queue in `queue_paged`; see the module docstring."""

    def __init__(self, node: "Node", prefix: bytes, durable: bool) -> None:
        self._node = node
        self._prefix = prefix
        self._durable = durable
        self._next = 1
        self._live: set[int] = set()
        self._unwritten: dict[int, bytes] = {}
        # Persisted messages (by id) whose row never reached the store: their values.
        self._unstored: dict[int, bytes] = {}
        self.pages_written = 0
        self.pages_read = 0

    # --- PageStore ----------------------------------------------------------------------

    def write_page(self, entries: list[QueueEntry]) -> int:
        number = self._next
        self._next += 1
        self._live.add(number)
        value = self._unwritten[number] = self._encode(entries)
        batch = WriteBatch()
        batch.put(PAGED_TABLE, self._key(number), value)
        self._submit(batch, lambda exc: self._written(number, exc))
        self.pages_written += 1
        return number

    def read_page(self, number: int) -> list[QueueEntry]:
        entries = self.peek_page(number)
        self._live.discard(number)
        self._unwritten.pop(number, None)
        batch = WriteBatch()
        batch.delete(PAGED_TABLE, self._key(number))
        self._submit(batch)
        self.pages_read += 1
        return entries

    def peek_page(self, number: int) -> list[QueueEntry]:
        store = self._node.store
        assert store is not None
        value = self._unwritten.get(number)
        if value is None:
            value = store.get(PAGED_TABLE, self._key(number))
        assert value is not None, f"page {number} of {self._prefix!r} is missing from the store"
        return self._decode(store, value)

    def drop_page(self, number: int) -> None:
        self._drop((number,))

    # --- the leader's -------------------------------------------------------------------

    def keep_unstored(self, message_id: int, value: bytes) -> None:
        """The row of persisted message `message_id` failed to be written: pages that
        refer to it by id read its value from here instead of the store."""
        self._unstored[message_id] = value

    def forget_unstored(self, messages: Iterable[Message]) -> None:
        """`messages` left the queue: their values kept by `keep_unstored` go too."""
        if self._unstored:
            for m in messages:
                self._unstored.pop(m.id, None)

    def drop_all(self) -> None:
        """The queue is deleted: its pages and the persisted messages they hold go."""
        self._drop(sorted(self._live))

    @property
    def pages(self) -> int:
        return len(self._live)

    # --- inside -------------------------------------------------------------------------

    def _drop(self, numbers: Iterable[int]) -> None:
        batch = WriteBatch()
        for number in numbers:
            if self._durable:
                for entry in self.peek_page(number):
                    if entry.message.persistent:
                        batch.delete(MESSAGES_TABLE, persisted_key(self._prefix, entry.message.id))
                        self._unstored.pop(entry.message.id, None)
            self._live.discard(number)
            self._unwritten.pop(number, None)
            batch.delete(PAGED_TABLE, self._key(number))
        if batch.ops:
            self._submit(batch)

    def _key(self, number: int) -> bytes:
        return self._prefix + _ID.pack(number)

    def _submit(self, batch: WriteBatch, on_done: Callable[[BaseException | None], None] | None = None) -> None:
        try:
            self._node.submit_write(batch, on_done)
        except trio.ClosedResourceError:
            pass  # shutting down: unwritten pages stay in memory, paged data dies with the node anyway

    def _written(self, number: int, exc: BaseException | None) -> None:
        # A failed page stays in `_unwritten`, in memory (the node reports the failure).
        if exc is None:
            self._unwritten.pop(number, None)

    def _encode(self, entries: list[QueueEntry]) -> bytes:
        records: list[Any] = []
        durable = self._durable
        for e in entries:
            m = e.message
            if durable and m.persistent:
                content: tuple[Any, ...] = (None, None, None, None)
            else:
                raw = m.raw_properties if m.raw_properties is not None else codec.encode_properties(m.properties)
                content = (m.exchange, m.routing_key, raw, m.body)
            records.append((e.seq, e.expires_at, e.deliveries, m.id, m.persistent, m.priority, m.expiration_ms,
                            *content))
        return msgpack.packb(records, use_bin_type=True, unicode_errors=_OCTETS)

    def _decode(self, store: Store, value: bytes) -> list[QueueEntry]:
        records = msgpack.unpackb(value, raw=False, use_list=False, unicode_errors=_OCTETS)
        stored_ids = [r[3] for r in records if r[7] is None]
        stored = read_persisted(store, self._prefix, stored_ids) if stored_ids else {}
        if len(stored) < len(stored_ids) and self._node.writer is not None:
            # A page can be read back before the rows it refers to are durable (a small
            # window drained quickly): those rows are still with the writer.
            missing = {persisted_key(self._prefix, i): i for i in stored_ids if i not in stored}
            for key, value in self._node.writer.find_unwritten(MESSAGES_TABLE, set(missing)).items():
                stored[missing[key]] = value
        if len(stored) < len(stored_ids) and self._unstored:
            for i in stored_ids:
                if i not in stored and i in self._unstored:
                    stored[i] = self._unstored[i]
        properties: dict[bytes, Any] = {}
        entries = []
        for seq, expires_at, deliveries, mid, persistent, priority, expiration_ms, exchange, rk, raw, body in records:
            if exchange is None:
                value = stored.get(mid)
                assert value is not None, f"paged persistent message {mid} of {self._prefix!r} is not in the store"
                exchange, rk, raw, body = decode_persisted(value)
            props = properties.get(raw)
            if props is None:
                props = properties[raw] = codec.decode_properties(raw)
            message = Message(exchange, rk, props, body, persistent=persistent, priority=priority,
                              expiration_ms=expiration_ms, raw_properties=raw, id=mid)
            entries.append(QueueEntry(seq, message, expires_at, deliveries))
        return entries
