"""Publisher confirms (sequence numbers, coalesced acks, nacks) and transactions."""

from __future__ import annotations

from typing import Any

from pamqp import commands as pc

from broker.amqp import codec, spec
from broker.amqp.connection import Acked, ChannelClosed, PublishBuffered, PublishReceived, Rejected, TxCommitted

from .peer import Peer, opened, publish_frames

RAW = codec.encode_properties(spec.BasicProperties())


def confirming() -> Peer:
    peer = opened()
    peer.send(pc.Confirm.Select(), channel=1)
    assert isinstance(peer.one()[1], pc.Confirm.SelectOk)
    return peer


def publish(peer: Peer, n: int, channel: int = 1) -> list[PublishReceived]:
    events = peer.send_raw(b"".join(publish_frames(channel, b"m%d" % i) for i in range(n)))
    assert all(isinstance(e, PublishReceived) for e in events)
    return events


def acks(peer: Peer) -> list[tuple[str, int, bool]]:
    out = []
    for _, f in peer.received():
        if isinstance(f, pc.Basic.Ack):
            out.append(("ack", f.delivery_tag, f.multiple))
        elif isinstance(f, pc.Basic.Nack):
            out.append(("nack", f.delivery_tag, f.multiple))
        else:
            raise AssertionError(f)
    return out


def test_confirm_mode_numbers_publishes_from_one() -> None:
    peer = confirming()
    assert [e.seq for e in publish(peer, 3)] == [1, 2, 3]


def test_confirm_select_nowait_has_no_reply() -> None:
    peer = opened()
    peer.send(pc.Confirm.Select(nowait=True), channel=1)
    assert peer.conn.data_to_send() == b""
    assert publish(peer, 1)[0].seq == 1


def test_single_confirm_is_not_multiple() -> None:
    peer = confirming()
    publish(peer, 1)
    peer.conn.confirm(1, 1)
    assert acks(peer) == [("ack", 1, False)]


def test_contiguous_confirms_coalesce_into_one_multiple_ack() -> None:
    peer = confirming()
    publish(peer, 5)
    for seq in (3, 1, 2, 4, 5):
        assert peer.conn.confirm(1, seq)
    assert acks(peer) == [("ack", 5, True)]


def test_confirms_above_an_outstanding_seq_go_one_by_one() -> None:
    peer = confirming()
    publish(peer, 6)
    for seq in (1, 2, 4, 6):
        peer.conn.confirm(1, seq)
    # 3 and 5 are outstanding: 1-2 coalesce, 4 and 6 go alone.
    assert acks(peer) == [("ack", 2, True), ("ack", 4, False), ("ack", 6, False)]
    peer.conn.confirm(1, 3)
    peer.conn.confirm(1, 5)
    # Nothing is outstanding any more: one multiple ack covers both (4 was acked already).
    assert acks(peer) == [("ack", 5, True)]


def test_nack_splits_the_coalesced_range() -> None:
    peer = confirming()
    publish(peer, 5)
    for seq in (1, 2, 4, 5):
        peer.conn.confirm(1, seq)
    assert peer.conn.reject(1, 3)
    assert acks(peer) == [("ack", 2, True), ("ack", 4, False), ("ack", 5, False), ("nack", 3, False)]


def test_nacks_coalesce_too() -> None:
    peer = confirming()
    publish(peer, 3)
    for seq in (1, 2, 3):
        peer.conn.reject(1, seq)
    assert acks(peer) == [("nack", 3, True)]


def test_confirm_of_unknown_or_settled_seq_is_ignored() -> None:
    peer = confirming()
    publish(peer, 1)
    assert peer.conn.confirm(1, 1)
    assert not peer.conn.confirm(1, 1)
    assert not peer.conn.reject(1, 1)
    assert not peer.conn.confirm(1, 99)
    assert not peer.conn.confirm(9, 1)
    assert acks(peer) == [("ack", 1, False)]


def test_confirms_for_a_closed_channel_are_dropped() -> None:
    peer = confirming()
    publish(peer, 2)
    peer.conn.confirm(1, 1)
    peer.send(pc.Channel.Close(reply_code=200, reply_text="", class_id=0, method_id=0), channel=1)
    assert not peer.conn.confirm(1, 2)
    frames = [f for _, f in peer.received()]
    # The close-ok may follow the pending ack or not, but no ack after the channel is gone.
    assert not any(isinstance(f, pc.Basic.Ack) for f in frames[frames.index(next(f for f in frames if isinstance(f, pc.Channel.CloseOk))):])


def test_confirm_select_on_tx_channel() -> None:
    peer = opened()
    peer.send(pc.Tx.Select(), channel=1)
    peer.received()
    peer.send(pc.Confirm.Select(), channel=1)
    _, close = peer.one()
    assert (close.reply_code, close.reply_text) == (406, "PRECONDITION_FAILED - cannot switch from tx to confirm mode")
    assert (close.class_id, close.method_id) == (85, 10)


def test_tx_select_on_confirm_channel() -> None:
    peer = confirming()
    peer.send(pc.Tx.Select(), channel=1)
    _, close = peer.one()
    assert (close.reply_code, close.reply_text) == (406, "PRECONDITION_FAILED - cannot switch from confirm to tx mode")


def test_rollback_without_tx() -> None:
    peer = opened()
    peer.send(pc.Tx.Rollback(), channel=1)
    _, close = peer.one()
    assert close.reply_text == "PRECONDITION_FAILED - channel is not transactional"


def _consume_and_deliver(peer: Peer, n: int) -> str:
    (event,) = peer.send(pc.Basic.Consume(queue="q", consumer_tag="c"), channel=1)
    for i in range(1, n + 1):
        peer.conn.deliver(1, "c", f"h{i}", "", "q", RAW, b"")
    peer.received()
    return "c"


def test_tx_commit_hands_over_publishes_and_settlements() -> None:
    peer = opened()
    _consume_and_deliver(peer, 4)
    peer.send(pc.Tx.Select(), channel=1)
    assert isinstance(peer.one()[1], pc.Tx.SelectOk)
    assert publish(peer, 0) == []
    events = peer.send_raw(publish_frames(1, b"a") + publish_frames(1, b"b"))
    # Kept until commit; the node only gets to check them now (RabbitMQ fails a bad
    # publish in a transaction when it arrives, not at commit).
    assert [type(e) for e in events] == [PublishBuffered, PublishBuffered]
    assert [e.publish.body for e in events] == [b"a", b"b"]
    assert peer.send(pc.Basic.Ack(delivery_tag=2, multiple=True), channel=1) == []
    assert peer.send(pc.Basic.Reject(delivery_tag=3, requeue=True), channel=1) == []
    # Acked inside the transaction: acking again is an unknown tag... checked below on a fresh peer.
    (commit,) = peer.send(pc.Tx.Commit(), channel=1)
    assert isinstance(commit, TxCommitted)
    assert [p.body for p in commit.publishes] == [b"a", b"b"]
    assert list(commit.publishes) == [e.publish for e in events]
    assert all(p.seq is None for p in commit.publishes)
    assert commit.settlements == (Acked(1, ("h1", "h2")), Rejected(1, ("h3",), True))
    assert peer.conn.data_to_send() == b""  # commit-ok waits for the node
    # Anything before commit-ok is an error... so the node answers first.
    assert peer.conn.tx_commit_ok(1)
    assert isinstance(peer.one()[1], pc.Tx.CommitOk)
    # The channel stays transactional.
    assert [type(e) for e in peer.send_raw(publish_frames(1, b"c"))] == [PublishBuffered]


def test_method_during_pending_commit() -> None:
    peer = opened()
    peer.send(pc.Tx.Select(), channel=1)
    peer.received()
    peer.send(pc.Tx.Commit(), channel=1)
    peer.send(pc.Basic.Qos(prefetch_count=1), channel=1)
    _, close = peer.one()
    assert (close.reply_code, close.reply_text) == (504, "CHANNEL_ERROR - unexpected command while processing 'tx.commit'")


def test_tx_rollback_restores_unacked_and_drops_publishes() -> None:
    peer = opened()
    _consume_and_deliver(peer, 3)
    peer.send(pc.Tx.Select(), channel=1)
    peer.received()
    peer.send_raw(publish_frames(1, b"dropped"))
    peer.send(pc.Basic.Ack(delivery_tag=2), channel=1)
    # Inside the transaction tag 2 is already taken.
    peer.send(pc.Tx.Rollback(), channel=1)
    assert isinstance(peer.one()[1], pc.Tx.RollbackOk)
    assert list(peer.conn.channels[1].unacked) == [1, 2, 3]
    (commit,) = peer.send(pc.Tx.Commit(), channel=1)
    assert commit.publishes == () and commit.settlements == ()
    peer.conn.tx_commit_ok(1)
    peer.received()
    # After rollback tag 2 can be acked again.
    peer.send(pc.Basic.Ack(delivery_tag=2), channel=1)
    (commit,) = peer.send(pc.Tx.Commit(), channel=1)
    assert commit.settlements == (Acked(1, ("h2",)),)


def test_double_ack_inside_a_transaction() -> None:
    peer = opened()
    _consume_and_deliver(peer, 2)
    peer.send(pc.Tx.Select(), channel=1)
    peer.received()
    peer.send(pc.Basic.Ack(delivery_tag=1), channel=1)
    peer.send(pc.Basic.Ack(delivery_tag=1), channel=1)
    _, close = peer.one()
    assert close.reply_text == "PRECONDITION_FAILED - unknown delivery tag 1"


def test_tx_credit_is_released_on_commit_only() -> None:
    peer = opened()
    peer.send(pc.Basic.Qos(prefetch_count=1), channel=1)
    peer.received()
    _consume_and_deliver(peer, 1)
    assert not peer.conn.can_deliver(1, "c")
    peer.send(pc.Tx.Select(), channel=1)
    peer.send(pc.Basic.Ack(delivery_tag=1), channel=1)
    assert not peer.conn.can_deliver(1, "c")
    peer.send(pc.Tx.Commit(), channel=1)
    assert peer.conn.can_deliver(1, "c")


def test_close_in_tx_returns_uncommitted_acks_as_unacked() -> None:
    peer = opened()
    _consume_and_deliver(peer, 3)
    peer.send(pc.Tx.Select(), channel=1)
    peer.send(pc.Basic.Ack(delivery_tag=2), channel=1)
    events: list[Any] = peer.send(pc.Channel.Close(reply_code=200, reply_text="", class_id=0, method_id=0), channel=1)
    assert events == [ChannelClosed(1, ("h1", "h2", "h3"), ("c",))]


def test_basic_return_goes_out_before_the_confirm() -> None:
    # RabbitMQ: "basic.returns must be sent before confirms" for a mandatory unroutable publish.
    peer = confirming()
    (event,) = peer.send_raw(publish_frames(1, b"lost", mandatory=True))
    peer.conn.confirm(1, event.seq)
    peer.conn.send_content(
        1, spec.BasicReturn(reply_code=312, reply_text="NO_ROUTE", exchange="", routing_key="q"), RAW, b"lost"
    )
    names = [type(f).__name__ for _, f in peer.received()]
    assert names == ["Return", "ContentHeader", "ContentBody", "Ack"]
