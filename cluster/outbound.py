"""What a peer link's writer sends next: small items batched, large ones in chunks between them.

Items are msgpack-encoded already (`cluster.transport` encodes when it queues). An item
of at most `chunk_size` bytes is small: every write takes all the small items that may
go and frames them together, ONE frame per write unless the frame limit cuts it (as
before chunking, so a busy cycle still costs one write). A larger item goes as a
message of its own cut into chunk frames (`cluster.peer.ChunkWriter`), one chunk per
write, so that whatever is queued meanwhile waits behind one chunk at most, never
behind a whole snapshot.

Order. Items of the *ordered* tags (the transport's casts and calls: a get must see the
publishes cast before it) keep their order among themselves: while a large ordered item
is in chunks, the ordered items queued after it wait until its last chunk is written (the
receiver delivers a chunked item when it is whole, so they arrive after it). Other items
(Raft batches, which Raft takes in any order; pings, pongs and replies, matched by id)
overtake. At most one large item per kind of order is in chunks at a time, and when both
are, writes alternate between them: the receiver reassembles at most two at once.

Budgets. Small items share `limit` bytes, large ones `large_limit` (so that a snapshot
neither crowds out the small traffic nor is refused because of it). Pure: no I/O, no
clock; the trio shell owns the wake-ups.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection
from dataclasses import dataclass

import msgpack

from cluster.peer import CHUNK_SIZE, ChunkWriter, frame_of, message_payload

Item = tuple[str, bytes, int]
"""(tag, encoded item, call id or 0)."""

_PACKER = msgpack.Packer(use_bin_type=True)


@dataclass(frozen=True, slots=True)
class Write:
    """One write's bytes: `frames` whole frames. `started`: the items whose first byte is in it
    (small items whole, a large one its first chunk)."""

    data: bytes
    frames: int
    started: list[Item]


class _InChunks:
    __slots__ = ("item", "writer")

    def __init__(self, item: Item, writer: ChunkWriter) -> None:
        self.item, self.writer = item, writer


class Outbox:
    """Items waiting for a link's writer, and the large ones being written in chunks."""

    __slots__ = ("limit", "large_limit", "size", "large_size", "_ordered_tags", "_chunk_size", "_max_frame_items",
                 "_free", "_free_large", "_ordered", "_ordered_large", "_sending_ordered", "_sending_free",
                 "_ordered_turn", "_ids")

    def __init__(self, limit: float, *, large_limit: float, ordered_tags: Collection[str] = (),
                 chunk_size: int = CHUNK_SIZE, max_frame_items_bytes: int) -> None:
        assert 0 < chunk_size <= max_frame_items_bytes
        self.limit = limit
        self.large_limit = large_limit
        self.size = 0  # bytes of small items queued
        self.large_size = 0  # bytes of large items queued or in chunks
        self._ordered_tags = frozenset(ordered_tags)
        self._chunk_size = chunk_size
        self._max_frame_items = max_frame_items_bytes
        self._free: list[Item] = []  # small items that may overtake
        self._free_large: deque[Item] = deque()
        self._ordered: deque[Item] = deque()  # small and large, in order
        self._ordered_large = 0  # how many of `_ordered` are large
        self._sending_ordered: _InChunks | None = None
        self._sending_free: _InChunks | None = None
        self._ordered_turn = True
        self._ids = 0

    def is_large(self, item: Item) -> bool:
        return len(item[1]) > self._chunk_size

    def put(self, item: Item, *, always: bool = False) -> bool:
        """Queue `item`; False (and not queued) when its budget is spent, unless `always`."""
        n = len(item[1])
        large = n > self._chunk_size
        if large:
            if not always and self.large_size + n > self.large_limit:
                return False
            self.large_size += n
        else:
            if not always and self.size + n > self.limit:
                return False
            self.size += n
        if item[0] in self._ordered_tags:
            self._ordered.append(item)
            self._ordered_large += large
        elif large:
            self._free_large.append(item)
        else:
            self._free.append(item)
        return True

    def __len__(self) -> int:
        """Items queued or in chunks."""
        return (len(self._free) + len(self._free_large) + len(self._ordered)
                + (self._sending_ordered is not None) + (self._sending_free is not None))

    @property
    def chunking(self) -> bool:
        """A large item is part-way through its chunks."""
        return self._sending_ordered is not None or self._sending_free is not None

    def next_write(self) -> Write | None:
        """What to write now, or None when nothing waits."""
        small = self._free
        self._free = []
        started: list[Item] = []
        if self._sending_ordered is None and self._ordered:
            if not self._ordered_large:  # the common case: all small, all go
                small += self._ordered
                self._ordered.clear()
            else:
                while self._ordered and len(self._ordered[0][1]) <= self._chunk_size:
                    small.append(self._ordered.popleft())
                if self._ordered:  # a large one: its chunks begin after the small ones before it
                    item = self._ordered.popleft()
                    self._ordered_large -= 1
                    self._sending_ordered = self._start(item)
                    started.append(item)
        if self._sending_free is None and self._free_large:
            item = self._free_large.popleft()
            self._sending_free = self._start(item)
            started.append(item)
        frames: list[bytes] = []
        if small:
            self.size -= sum(len(item[1]) for item in small)
            frames = _batch_frames(small, self._max_frame_items)
            started = small + started
        if (chunk := self._next_chunk()) is not None:
            frames.append(chunk)
        if not frames:
            return None
        return Write(b"".join(frames), len(frames), started)

    def withdraw(self, call_id: int) -> bool:
        """Forget a queued call whose caller stopped waiting; False if it has begun going out."""
        for i, item in enumerate(self._ordered):
            if item[2] == call_id:
                del self._ordered[i]
                if self.is_large(item):
                    self._ordered_large -= 1
                    self.large_size -= len(item[1])
                else:
                    self.size -= len(item[1])
                return True
        return False

    def link_lost(self) -> list[Item]:
        """The link broke: the items part-way through their chunks are given up (their receiver
        dropped what it had) and returned; the rest wait for the next link."""
        lost = [sending.item for sending in (self._sending_ordered, self._sending_free) if sending is not None]
        self._sending_ordered = self._sending_free = None
        self.large_size -= sum(len(item[1]) for item in lost)
        return lost

    def take_all(self) -> list[Item]:
        """Everything, queued or in chunks, is given up (and returned): the outbox is empty."""
        items = [*self.link_lost(), *self._free, *self._free_large, *self._ordered]
        self._free, self._free_large, self._ordered = [], deque(), deque()
        self._ordered_large = 0
        self.size = self.large_size = 0
        return items

    def _start(self, item: Item) -> _InChunks:
        self._ids += 1
        payload = message_payload(_PACKER.pack_array_header(1) + item[1])
        return _InChunks(item, ChunkWriter(payload, self._ids, self._chunk_size))

    def _next_chunk(self) -> bytes | None:
        """One chunk, taking turns between the ordered and the free item in chunks."""
        order = (True, False) if self._ordered_turn else (False, True)
        for ordered in order:
            sending = self._sending_ordered if ordered else self._sending_free
            if sending is None:
                continue
            frame = sending.writer.next_frame()
            if sending.writer.done:
                self.large_size -= len(sending.item[1])
                if ordered:
                    self._sending_ordered = None
                else:
                    self._sending_free = None
            self._ordered_turn = not ordered
            return frame
        return None


def _batch_frames(items: list[Item], max_bytes: int) -> list[bytes]:
    """Small items as frames of ["m", [item, ...]]: one, unless the items exceed `max_bytes`."""
    frames = []
    start = 0
    while start < len(items):
        size, end = 0, start
        while end < len(items) and (end == start or size + len(items[end][1]) <= max_bytes):
            size += len(items[end][1])
            end += 1
        header = _PACKER.pack_array_header(end - start)
        frames.append(frame_of(message_payload(header + b"".join(item[1] for item in items[start:end]))))
        start = end
    return frames
