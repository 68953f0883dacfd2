"""A client that pipelines its work and its connection.close in one write.

The node parses the whole write at once, so its connection machine is closed
before the session has handled the methods before the close (a declare waits
for the metadata log). The session must still handle every one of them and
the close itself: found by the frame fuzz test, exclusive queues of such a
connection were left behind, locked (405), because the socket's writer
stopped the reader in the middle of the batch.
"""

from __future__ import annotations

import socket
import time
import uuid

import pika
import pika.exceptions
from pamqp import commands as pc

from tests.fuzz.cases import content, handshake, method
from tests.support.node_process import NodeProcess


def _run_to_eof(node: NodeProcess, data: bytes) -> bytes:
    with socket.create_connection((node.host, node.port), timeout=10) as s:
        s.sendall(data)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
        return got


def _queue_state(url: str, name: str) -> int | str:
    with pika.BlockingConnection(pika.URLParameters(url)) as c:
        try:
            c.channel().queue_declare(name, passive=True)
            return "exists"
        except pika.exceptions.ChannelClosedByBroker as e:
            return e.reply_code


def test_exclusive_queues_go_with_a_connection_that_closes_in_the_same_write(node: NodeProcess) -> None:
    q1, q2 = (f"pipelined-{uuid.uuid4().hex[:8]}-{i}" for i in (1, 2))
    data = b"".join([
        *handshake(),
        method(pc.Channel.Open(), 1),
        method(pc.Queue.Declare(queue=q1, exclusive=True), 1),
        method(pc.Confirm.Select(), 1),
        # The confirm wakes the socket's writer while the session still has work queued.
        method(pc.Basic.Publish(exchange="", routing_key=q1), 1) + content(1, b"x"),
        method(pc.Queue.Declare(queue=q2, exclusive=True), 1),
        method(pc.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0)),
    ])
    got = _run_to_eof(node, data)
    assert got.endswith(method(pc.Connection.CloseOk()))
    deadline = time.monotonic() + 5
    while (states := [_queue_state(node.url, q) for q in (q1, q2)]) != [404, 404]:
        assert time.monotonic() < deadline, f"exclusive queues left behind: {states}"
        time.sleep(0.1)
