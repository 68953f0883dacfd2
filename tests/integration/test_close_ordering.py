"""Two close orderings RabbitMQ keeps and clients rely on (issue 13's single-node details):

- an exclusive queue is gone before its connection's close-ok is sent, so a connection that
  declares the same queue right after sees no 405 RESOURCE_LOCKED;
- after a publish that closes its channel (a missing or internal exchange), nothing the
  client pipelined behind it on that channel is answered before the channel.close."""

from __future__ import annotations

from pamqp import commands
from pamqp import header as pamqp_header
from pamqp import body as pamqp_body

from tests.integration.raw_amqp import RawClient
from tests.support.node_process import NodeProcess


def test_an_exclusive_queue_is_gone_when_close_ok_arrives(node: NodeProcess) -> None:
    for i in range(20):
        owner = RawClient(node.host, node.port)
        owner.handshake()
        owner.send_frame(1, commands.Channel.Open())
        owner.expect(commands.Channel.OpenOk)
        owner.send_frame(1, commands.Queue.Declare(queue=f"excl-{i}", exclusive=True))
        owner.expect(commands.Queue.DeclareOk)
        # The other connection is ready before the owner closes, and declares the moment the
        # owner's close-ok arrives.
        other = RawClient(node.host, node.port)
        other.handshake()
        other.send_frame(1, commands.Channel.Open())
        other.expect(commands.Channel.OpenOk)
        owner.send_frame(0, commands.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0))
        owner.expect(commands.Connection.CloseOk)
        other.send_frame(1, commands.Queue.Declare(queue=f"excl-{i}", exclusive=True))
        got = other.frames(5, stop_after=1)[0][2]
        assert isinstance(got, commands.Queue.DeclareOk), (i, got)
        other.close()
        owner.sock.close()


def test_methods_pipelined_after_a_failing_publish_are_not_answered(node: NodeProcess) -> None:
    client = RawClient(node.host, node.port)
    client.handshake()
    client.send_frame(1, commands.Channel.Open())
    client.expect(commands.Channel.OpenOk)
    body = b"x"
    # One write: a publish to a missing exchange, then a declare on the same channel.
    data = b"".join([
        _marshal(1, commands.Basic.Publish(exchange="no-such-exchange", routing_key="k")),
        _marshal(1, pamqp_header.ContentHeader(0, len(body), commands.Basic.Properties())),
        _marshal(1, pamqp_body.ContentBody(body)),
        _marshal(1, commands.Queue.Declare(queue="after-the-failed-publish")),
    ])
    client.send(data)
    got = [f for _t, _ch, f in client.frames(3)]
    assert got and isinstance(got[0], commands.Channel.Close), got
    assert got[0].reply_code == 404
    assert not any(isinstance(f, commands.Queue.DeclareOk) for f in got), got
    client.close()


def _marshal(channel: int, value: object) -> bytes:
    from pamqp import frame

    return frame.marshal(value, channel)
