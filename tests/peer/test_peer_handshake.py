"""The pure handshake machines: mutual cookie proof, refusals, replay and reflection."""

from __future__ import annotations

import msgpack
import pytest

from cluster import peer
from cluster.peer import (
    PROTOCOL_VERSION,
    AcceptorHandshake,
    ConnectorHandshake,
    HandshakeRefused,
    PeerAuthenticated,
    Purpose,
    RefusalKind,
)

COOKIE = "QWERTYUIOPASDFGHJKLZ"
NC = b"c" * 32
NA = b"a" * 32


def machines(connector_cookie: str = COOKIE, acceptor_cookie: str = COOKIE, remote: str | None = "a@h"):
    c = ConnectorHandshake(cookie=connector_cookie, local_name="c@h", remote_name=remote, nonce=NC)
    a = AcceptorHandshake(cookie=acceptor_cookie, local_name="a@h", nonce=NA)
    return c, a


def run(c: ConnectorHandshake, a: AcceptorHandshake) -> tuple[list[dict], object, object]:
    """Shuttle frames between the two machines until both finish; return every frame sent."""
    wire: list[dict] = []
    to_a = c.start()
    to_c: list[dict] = []
    wire += to_a
    while c.outcome is None or a.outcome is None:
        if not to_a and not to_c:
            break
        for f in to_a:
            if a.outcome is None:
                replies, _ = a.receive(f)
                wire += replies
                to_c += replies
        to_a = []
        for f in to_c:
            if c.outcome is None:
                replies, _ = c.receive(f)
                wire += replies
                to_a += replies
        to_c = []
    return wire, c.outcome, a.outcome


def test_right_cookie_authenticates_both_sides() -> None:
    wire, c_out, a_out = run(*machines())
    assert c_out == PeerAuthenticated("a@h")
    assert a_out == PeerAuthenticated("c@h")
    assert [f["type"] for f in wire] == ["hello", "challenge", "proof", "welcome"]


def test_wrong_cookie_is_refused_by_the_acceptor() -> None:
    wire, c_out, a_out = run(*machines(connector_cookie="WRONGWRONGWRONGWRONG"))
    assert a_out == HandshakeRefused("authentication failed", "c@h", kind=RefusalKind.COOKIE)
    assert wire[-1] == {"type": "refused", "reason": "authentication failed", "kind": "cookie"}
    assert isinstance(c_out, HandshakeRefused) and c_out.by_peer and c_out.reason == "authentication failed"
    assert c_out.cookie_differs and a_out.cookie_differs


@pytest.mark.parametrize("cookie_case", ["right", "wrong"])
def test_cookie_never_appears_in_frames(cookie_case: str) -> None:
    wire, _, _ = run(*machines(connector_cookie=COOKIE if cookie_case == "right" else "X" * 20))
    raw = b"".join(peer.encode_frame(f) for f in wire)
    assert COOKIE.encode() not in raw
    assert COOKIE.encode().hex().encode() not in raw


def test_connector_refuses_unexpected_node_name() -> None:
    c2 = ConnectorHandshake(cookie=COOKIE, local_name="c@h", remote_name="other@h", nonce=NC)
    hello = c2.start()[0]
    assert hello["to"] == "other@h"
    # an acceptor that does not check 'to' (or a stale DNS name) answers as a@h
    a_loose = AcceptorHandshake(cookie=COOKIE, local_name="a@h", nonce=NA)
    hello_no_to = dict(hello, to=None)
    challenge = a_loose.receive(hello_no_to)[0][0]
    replies, outcome = c2.receive(challenge)
    assert isinstance(outcome, HandshakeRefused)
    assert outcome.reason == "connected to node 'a@h', expected 'other@h'"
    assert replies[0]["type"] == "refused"


def test_acceptor_refuses_hello_for_another_node() -> None:
    c = ConnectorHandshake(cookie=COOKIE, local_name="c@h", remote_name="b@h", nonce=NC)
    a = AcceptorHandshake(cookie=COOKIE, local_name="a@h", nonce=NA)
    replies, outcome = a.receive(c.start()[0])
    assert isinstance(outcome, HandshakeRefused) and "wanted node 'b@h'" in outcome.reason
    assert replies[0]["type"] == "refused"


def test_connector_without_expected_name_accepts_any() -> None:
    _, c_out, a_out = run(*machines(remote=None))
    assert c_out == PeerAuthenticated("a@h") and a_out == PeerAuthenticated("c@h")


def test_version_mismatch_refused() -> None:
    c, a = machines()
    hello = dict(c.start()[0], version=99)
    replies, outcome = a.receive(hello)
    assert isinstance(outcome, HandshakeRefused) and "unsupported peer protocol version 99" in outcome.reason
    assert replies == [{"type": "refused", "reason": outcome.reason, "kind": "version"}]
    assert outcome.kind is RefusalKind.VERSION and outcome.peer_name == "c@h"
    assert f"(this node speaks {PROTOCOL_VERSION})" in outcome.reason
    # ... and the connector, told so, has the kind without reading the text
    _, told = c.receive(replies[0])
    assert isinstance(told, HandshakeRefused) and told.by_peer and told.kind is RefusalKind.VERSION
    assert not told.cookie_differs


def test_connector_refuses_an_acceptor_of_another_version() -> None:
    c, _ = machines()
    c.start()
    replies, outcome = c.receive({"type": "challenge", "version": 1, "name": "a@h", "nonce": NA})
    assert isinstance(outcome, HandshakeRefused) and outcome.kind is RefusalKind.VERSION
    assert outcome.reason == f"unsupported peer protocol version 1 (this node speaks {PROTOCOL_VERSION})"
    assert replies[0]["kind"] == "version"


@pytest.mark.parametrize("purpose", ["gossip", "", None, 7])
def test_unknown_purpose_refused_before_any_proof(purpose: object) -> None:
    c, a = machines()
    replies, outcome = a.receive(dict(c.start()[0], purpose=purpose))
    assert isinstance(outcome, HandshakeRefused)
    assert [r["type"] for r in replies] == ["refused"]  # no challenge: nothing was proved
    if isinstance(purpose, str):
        assert outcome.kind is RefusalKind.PURPOSE
        assert outcome.reason == f"unknown or unserved connection purpose '{purpose}' (this node accepts: control)"
    else:
        assert outcome.kind is RefusalKind.PROTOCOL


def test_purpose_is_served_only_if_accepted_and_is_reported() -> None:
    c = ConnectorHandshake(cookie=COOKIE, local_name="c@h", remote_name="a@h", nonce=NC, purpose=Purpose.PEER)
    a = AcceptorHandshake(cookie=COOKIE, local_name="a@h", nonce=NA)  # control only
    _, c_out, a_out = run(c, a)
    assert isinstance(a_out, HandshakeRefused) and a_out.kind is RefusalKind.PURPOSE
    assert isinstance(c_out, HandshakeRefused) and c_out.kind is RefusalKind.PURPOSE and c_out.by_peer
    c = ConnectorHandshake(cookie=COOKIE, local_name="c@h", remote_name="a@h", nonce=NC, purpose=Purpose.PEER)
    a = AcceptorHandshake(cookie=COOKIE, local_name="a@h", nonce=NA, purposes=frozenset(Purpose))
    _, c_out, a_out = run(c, a)
    assert c_out == PeerAuthenticated("a@h", Purpose.PEER) and a_out == PeerAuthenticated("c@h", Purpose.PEER)


def test_a_control_proof_does_not_open_a_peer_link() -> None:
    # The purpose is inside the transcript: a hello rewritten in transit from control to
    # peer makes the connector's proof fail at the acceptor.
    c, _ = machines()
    a = AcceptorHandshake(cookie=COOKIE, local_name="a@h", nonce=NA, purposes=frozenset(Purpose))
    challenge = a.receive(dict(c.start()[0], purpose="peer"))[0][0]
    proof = c.receive(challenge)[0][0]
    _, outcome = a.receive(proof)
    assert isinstance(outcome, HandshakeRefused) and outcome.kind is RefusalKind.COOKIE


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [1, 2],
        {"type": "hello"},
        {"type": "hello", "version": PROTOCOL_VERSION, "purpose": "control", "name": "c@h", "nonce": b"short"},
        {"type": "hello", "version": PROTOCOL_VERSION, "purpose": "control", "name": 5, "nonce": NC},
        {"type": "proof", "mac": b"x" * 32},  # out of order
    ],
)
def test_malformed_or_out_of_order_frames_refused(bad: object) -> None:
    a = AcceptorHandshake(cookie=COOKIE, local_name="a@h", nonce=NA)
    replies, outcome = a.receive(bad)
    assert isinstance(outcome, HandshakeRefused) and outcome.reason.startswith("malformed handshake frame")
    assert replies[0]["type"] == "refused"


def test_recorded_proof_does_not_replay_against_a_fresh_nonce() -> None:
    wire, _, _ = run(*machines())
    hello, proof = wire[0], wire[2]
    fresh = AcceptorHandshake(cookie=COOKIE, local_name="a@h", nonce=b"z" * 32)
    fresh.receive(hello)
    _, outcome = fresh.receive(proof)
    assert outcome == HandshakeRefused("authentication failed", "c@h", kind=RefusalKind.COOKIE)


def test_impostor_acceptor_cannot_reflect_the_connectors_proof() -> None:
    # Without the cookie, the best an impostor can do is echo the connector's own MAC.
    c = ConnectorHandshake(cookie=COOKIE, local_name="c@h", remote_name="a@h", nonce=NC)
    c.start()
    proof = c.receive({"type": "challenge", "version": PROTOCOL_VERSION, "name": "a@h", "nonce": NA})[0][0]
    replies, outcome = c.receive({"type": "welcome", "mac": proof["mac"]})
    assert isinstance(outcome, HandshakeRefused) and outcome.reason.startswith("authentication failed")
    assert outcome.cookie_differs
    assert replies == [{"type": "refused", "reason": "authentication failed", "kind": "cookie"}]


def test_transcript_binds_names() -> None:
    # The same nonces with the names swapped give different MACs.
    m1 = peer._transcript_mac(COOKIE, "connector", Purpose.CONTROL, "c@h", "a@h", NC, NA)
    m2 = peer._transcript_mac(COOKIE, "connector", Purpose.CONTROL, "a@h", "c@h", NC, NA)
    m3 = peer._transcript_mac(COOKIE, "acceptor", Purpose.CONTROL, "c@h", "a@h", NC, NA)
    m4 = peer._transcript_mac(COOKIE, "connector", Purpose.PEER, "c@h", "a@h", NC, NA)
    assert len({m1, m2, m3, m4}) == 4


def test_finished_machine_rejects_more_input() -> None:
    run(*(pair := machines()))
    with pytest.raises(AssertionError):
        pair[1].receive({"type": "hello"})


def test_frame_decoder_limits_and_partial_input() -> None:
    d = peer.FrameDecoder(max_size=100)
    frame = peer.encode_frame({"k": "v"})
    d.feed(frame[:3])
    assert d.next_frame() is peer.NEED_DATA
    d.feed(frame[3:] + frame)
    assert d.next_frame() == {"k": "v"}
    assert d.next_frame() == {"k": "v"}
    assert d.next_frame() is peer.NEED_DATA
    d.feed((101).to_bytes(4, "big"))
    with pytest.raises(peer.FrameTooLarge):
        d.next_frame()
    bad = peer.FrameDecoder(max_size=100)
    bad.feed((1).to_bytes(4, "big") + b"\xc1")  # 0xc1 is never valid msgpack
    with pytest.raises(peer.MalformedFrame):
        bad.next_frame()


def test_encode_frame_refuses_oversize() -> None:
    with pytest.raises(peer.FrameTooLarge):
        peer.encode_frame(b"x" * 200, max_size=100)
    assert len(peer.encode_frame(b"x" * 50, max_size=100)) == 4 + len(msgpack.packb(b"x" * 50))
