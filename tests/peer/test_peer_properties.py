"""Property tests: framing survives any chunking; the acceptor survives any input."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cluster import peer

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20) | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=12,
)


@given(st.lists(values, min_size=1, max_size=8), st.data())
def test_frames_decode_identically_however_the_bytes_are_split(objs: list, data: st.DataObject) -> None:
    stream = b"".join(peer.encode_frame(o) for o in objs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = peer.FrameDecoder(max_size=peer.DEFAULT_FRAME_MAX)
    out = []
    start = 0
    for cut in [*cuts, len(stream)]:
        decoder.feed(stream[start:cut])
        start = cut
        while (frame := decoder.next_frame()) is not peer.NEED_DATA:
            out.append(frame)
    assert out == [_normalise(o) for o in objs]
    assert decoder.buffered == 0


def _normalise(obj):  # msgpack turns tuples into lists
    if isinstance(obj, (list, tuple)):
        return [_normalise(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _normalise(v) for k, v in obj.items()}
    return obj


handshake_frames = st.one_of(
    values,
    st.fixed_dictionaries(
        {"type": st.sampled_from(["hello", "challenge", "proof", "welcome", "refused", "other"])},
        optional={
            "version": st.one_of(st.just(peer.PROTOCOL_VERSION), st.integers(), st.booleans()),
            "purpose": st.one_of(st.sampled_from(["control", "peer"]), st.text(max_size=5), st.integers()),
            "name": st.one_of(st.text(max_size=10), st.integers()),
            "to": st.one_of(st.none(), st.just("a@h"), st.text(max_size=5)),
            "nonce": st.one_of(st.binary(min_size=32, max_size=32), st.binary(max_size=40)),
            "mac": st.binary(max_size=40),
            "reason": values,
        },
    ),
)


@settings(max_examples=300)
@given(st.lists(handshake_frames, min_size=1, max_size=4))
def test_acceptor_without_the_cookie_never_authenticates_garbage(frames: list) -> None:
    a = peer.AcceptorHandshake(cookie="SECRETSECRETSECRETSE", local_name="a@h", nonce=b"n" * 32)
    for frame in frames:
        replies, outcome = a.receive(frame)
        for reply in replies:
            assert b"SECRETSECRETSECRETSE" not in peer.encode_frame(reply)
        if outcome is not None:
            assert isinstance(outcome, peer.HandshakeRefused)
            break


@settings(max_examples=150)
@given(st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=5), st.integers(1, 700), st.data())
def test_chunked_messages_reassemble_whatever_the_chunk_size_interleaving_and_cuts(
        payloads: list[bytes], chunk_size: int, data: st.DataObject) -> None:
    writers = {n: peer.ChunkWriter(p, n, chunk_size) for n, p in enumerate(payloads)}
    # the writers take turns in any order, with whole frames between their chunks
    stream = bytearray()
    while live := [n for n, w in writers.items() if not w.done]:
        n = data.draw(st.sampled_from(live))
        stream += writers[n].next_frame()
        if data.draw(st.booleans()):
            stream += peer.encode_frame(["m", n, writers[n].done])
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = peer.FrameDecoder(max_size=chunk_size + 64)  # a chunk frame is one chunk and a little
    reassembler = peer.Reassembler(sum(map(len, payloads)))
    whole: dict[int, bytes] = {}
    start = 0
    for cut in [*cuts, len(stream)]:
        decoder.feed(bytes(stream[start:cut]))
        start = cut
        while (frame := decoder.next_frame()) is not peer.NEED_DATA:
            if frame[0] == "c":
                assert 0 < len(frame[3]) <= chunk_size
                done = reassembler.add(frame[1], frame[2], frame[3])
                if done is not None:
                    assert frame[1] not in whole
                    whole[frame[1]] = bytes(done)
            else:  # whole once its last chunk came, never before
                assert (frame[1] in whole) == frame[2]
    assert whole == dict(enumerate(payloads))
    assert reassembler.buffered == 0 and reassembler.unfinished == 0 and decoder.buffered == 0
