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
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Protocol

import msgpack

from cluster.peer import CHUNK_SIZE, ChunkWriter, message_frame_of_items, message_payload

Item = tuple[str, bytes, int]
"""(tag, encoded item, call id or 0)."""

_PACKER = msgpack.Packer(use_bin_type=True)


class Waker(Protocol):
    def set(self) -> None: ...


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


class _NoWaker:
    """The wake-up of an outbox nobody waits on (a pure test)."""

    __slots__ = ()

    def set(self) -> None:
        pass


class Outbox:
    """Items waiting for a link's writer, and the large ones being written in chunks.

    `wake` is set whenever an item is queued and replaced by a fresh one from `new_wake` when
    `next_write` finds nothing: the trio shell passes `trio.Event`, and its writer waits on it.
    """

    __slots__ = ("limit", "large_limit", "size", "large_size", "wake", "_new_wake", "_ordered_tags", "_chunk_size",
                 "_max_frame_items", "_free", "_free_large", "_ordered", "_ordered_large", "_sending_ordered",
                 "_sending_free", "_ordered_turn", "_ids")

    def __init__(self, limit: float, *, large_limit: float, ordered_tags: Collection[str] = (),
                 chunk_size: int = CHUNK_SIZE, max_frame_items_bytes: int,
                 new_wake: Callable[[], Waker] = _NoWaker) -> None:
        assert 0 < chunk_size <= max_frame_items_bytes
        self.limit = limit
        self.large_limit = large_limit
        self.size = 0  # bytes of small items queued
        self.large_size = 0  # bytes of large items queued or in chunks
        self._new_wake = new_wake
        self.wake = new_wake()
        self._ordered_tags = frozenset(ordered_tags)
        self._chunk_size = chunk_size
        self._max_frame_items = max_frame_items_bytes
        self._free: list[Item] = []  # small items that may overtake
        self._free_large: deque[Item] = deque()
        self._ordered: list[Item] = []  # small and large, in order
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
        if n <= self._chunk_size:
            if self.size + n > self.limit and not always:
                return False
            self.size += n
            if item[0] in self._ordered_tags:
                self._ordered.append(item)
            else:
                self._free.append(item)
        else:
            if self.large_size + n > self.large_limit and not always:
                return False
            self.large_size += n
            if item[0] in self._ordered_tags:
                self._ordered.append(item)
                self._ordered_large += 1
            else:
                self._free_large.append(item)
        self.wake.set()
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
        """What to write now, or None (and a fresh `wake`) when nothing waits."""
        small = self._free
        self._free = []
        started: list[Item] = []
        if self._ordered and self._sending_ordered is None:
            if not self._ordered_large:  # the common case: all small, all go
                small = small + self._ordered if small else self._ordered
                self._ordered = []
            else:  # the small ones up to the first large one, whose chunks begin after them
                first = next(i for i, item in enumerate(self._ordered) if len(item[1]) > self._chunk_size)
                item = self._ordered[first]
                small += self._ordered[:first]
                del self._ordered[: first + 1]
                self._ordered_large -= 1
                self._sending_ordered = self._start(item)
                started.append(item)
        if self._sending_free is None and self._free_large:
            item = self._free_large.popleft()
            self._sending_free = self._start(item)
            started.append(item)
        chunk = self._next_chunk()
        if not small:
            if chunk is None:
                self.wake = self._new_wake()
                return None
            return Write(chunk, 1, started)
        # The bytes taken: all the small ones', unless some wait behind a large ordered item.
        waiting = sum(len(item[1]) for item in self._ordered if len(item[1]) <= self._chunk_size) \
            if self._ordered else 0
        taken, self.size = self.size - waiting, waiting
        if taken <= self._max_frame_items:
            frames = [message_frame_of_items([item[1] for item in small], taken)]
        else:
            frames = _batch_frames(small, self._max_frame_items)
        if chunk is not None:
            frames.append(chunk)
        return Write(b"".join(frames), len(frames), small + started if started else small)

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
        self._free, self._free_large, self._ordered = [], deque(), []
        self._ordered_large = 0
        self.size = self.large_size = 0
        self.wake = self._new_wake()
        return items

    def _start(self, item: Item) -> _InChunks:
        self._ids += 1
        payload = message_payload(_PACKER.pack_array_header(1) + item[1])
        return _InChunks(item, ChunkWriter(payload, self._ids, self._chunk_size))

    def _next_chunk(self) -> bytes | None:
        """One chunk, taking turns between the ordered and the free item in chunks."""
        if self._sending_ordered is None and self._sending_free is None:
            return None
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
    """Small items as frames of ["m", [item, ...]], as few as `max_bytes` of items each allows."""
    frames = []
    start = 0
    while start < len(items):
        size, end = 0, start
        while end < len(items) and (end == start or size + len(items[end][1]) <= max_bytes):
            size += len(items[end][1])
            end += 1
        frames.append(message_frame_of_items([item[1] for item in items[start:end]], size))
        start = end
    return frames
