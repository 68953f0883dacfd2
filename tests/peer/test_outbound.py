"""The outbox a peer link's writer drains (`cluster.outbound`), driven by hypothesis: whatever is
queued, with links lost at any point, arrives whole, once, with casts and calls in order, a write
holding at most one chunk, and small items that may overtake never waiting behind a chunk."""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster import peer
from cluster.outbound import Item, Outbox

CHUNK = 64
ORDERED = frozenset({"cast", "call"})

ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from(["cast", "call", "raft", "ping", "reply"]),
                  st.one_of(st.integers(0, 40), st.integers(CHUNK, 5 * CHUNK))),
        st.just(("write",)),
        st.just(("lost",)),
    ),
    max_size=60,
)


class Receiver:
    """A link's far end: frames in, items out (as the transport's reader sees them)."""

    def __init__(self) -> None:
        self.decoder = peer.FrameDecoder(peer.DEFAULT_FRAME_MAX)
        self.reassembler = peer.Reassembler(10**6)
        self.items: list[list[Any]] = []

    def feed(self, data: bytes) -> int:
        """Decodes one write; how many chunk frames it held."""
        self.decoder.feed(data)
        chunks = 0
        while (frame := self.decoder.next_frame()) is not peer.NEED_DATA:
            if frame[0] == "c":
                chunks += 1
                whole = self.reassembler.add(frame[1], frame[2], frame[3])
                if whole is None:
                    continue
                frame = msgpack.unpackb(whole)
            assert frame[0] == "m"
            self.items += frame[1]
        assert self.decoder.buffered == 0  # a write is whole frames
        return chunks


@settings(max_examples=150, deadline=None)
@given(ops)
def test_everything_queued_arrives_once_in_order_where_it_must(script: list[tuple[Any, ...]]) -> None:
    outbox = Outbox(10**6, large_limit=10**6, ordered_tags=ORDERED, chunk_size=CHUNK, max_frame_items_bytes=200)
    receiver = Receiver()
    sent: dict[int, Item] = {}
    lost: set[int] = set()

    def write() -> bool:
        free_small = {n for n, item in sent.items() if item[0] not in ORDERED and not outbox.is_large(item)
                      and n not in seen()}
        w = outbox.next_write()
        if w is None:
            return False
        assert receiver.feed(w.data) <= 1
        assert free_small <= seen()  # overtaking items waited for no chunk
        return True

    def seen() -> set[int]:
        return {item[1] for item in receiver.items}

    for op in script:
        if op[0] == "put":
            n = len(sent)
            item = (op[1], msgpack.packb([op[1], n, b"x" * op[2]]), n if op[1] == "call" else 0)
            assert outbox.put(item)
            sent[n] = item
        elif op[0] == "write":
            write()
        else:
            lost |= {_serial(item) for item in outbox.link_lost()}
            receiver.reassembler = peer.Reassembler(10**6)  # a new link: what was part-way is gone
    while write():
        pass
    assert len(outbox) == 0 and outbox.size == 0 and outbox.large_size == 0 and not outbox.chunking
    got = [item[1] for item in receiver.items]
    assert sorted(got) == sorted(set(sent) - lost)  # each once, the lost ones never
    for item in receiver.items:
        assert msgpack.packb(item) == sent[item[1]][1]
    ordered = [n for n in got if sent[n][0] in ORDERED]
    assert ordered == sorted(ordered)


def _serial(item: Item) -> int:
    return msgpack.unpackb(item[1])[1]


def test_budgets_are_separate_for_small_and_large_items() -> None:
    outbox = Outbox(100, large_limit=1000, ordered_tags=ORDERED, chunk_size=CHUNK, max_frame_items_bytes=200)
    assert outbox.put(("cast", b"s" * 60, 0)) and not outbox.put(("cast", b"s" * 60, 0))
    assert outbox.put(("raft", b"L" * 900, 0))  # a large one still fits its own budget
    assert not outbox.put(("raft", b"L" * 200, 0))
    assert outbox.put(("ping", b"p" * 60, 0), always=True)
    assert (outbox.size, outbox.large_size, len(outbox)) == (120, 900, 3)


def test_a_call_withdrawn_before_it_went_out_never_goes() -> None:
    outbox = Outbox(10**6, large_limit=10**6, ordered_tags=ORDERED, chunk_size=CHUNK, max_frame_items_bytes=200)
    outbox.put(("cast", b"L" * 300, 0))
    outbox.put(("call", b"c" * 10, 7))
    first = outbox.next_write()
    assert first is not None and [item[0] for item in first.started] == ["cast"]
    assert outbox.withdraw(7) and outbox.size == 0
    while (w := outbox.next_write()) is not None:
        assert all(item[0] != "call" for item in w.started)
