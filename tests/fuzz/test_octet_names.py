"""Names that are not UTF-8: AMQP short strings are octets, and RabbitMQ takes any.

A queue declared with such a name (found by the frame fuzz test: it crashed
first the metadata proposal, then the metadata log's apply, which wedged the
node and would have failed every restart) must work like any other, and
survive a restart with its persistent message.
"""

from __future__ import annotations

import socket
import struct
import time

from pamqp import commands as pc

from tests.fuzz.cases import handshake, method, raw_frame
from tests.support.node_process import NodeProcess

NAME = b"q-\xff\xfe-\xc3"


def shortstr(b: bytes) -> bytes:
    return bytes([len(b)]) + b


def queue_declare(name: bytes, durable: bool) -> bytes:
    return raw_frame(1, 1, struct.pack(">HHH", 50, 10, 0) + shortstr(name) + bytes([2 if durable else 0])
                     + struct.pack(">I", 0))


def publish(exchange: bytes, routing_key: bytes, body: bytes, persistent: bool) -> bytes:
    method_frame = raw_frame(1, 1, struct.pack(">HHH", 60, 40, 0) + shortstr(exchange) + shortstr(routing_key) + b"\x00")
    if persistent:
        header = raw_frame(2, 1, struct.pack(">HHQH", 60, 0, len(body), 0x1000) + b"\x02")
    else:
        header = raw_frame(2, 1, struct.pack(">HHQH", 60, 0, len(body), 0))
    return method_frame + header + raw_frame(3, 1, body)


def queue_bind(queue: bytes, exchange: bytes, routing_key: bytes) -> bytes:
    return raw_frame(1, 1, struct.pack(">HHH", 50, 20, 0) + shortstr(queue) + shortstr(exchange)
                     + shortstr(routing_key) + b"\x00" + struct.pack(">I", 0))


def basic_get(queue: bytes) -> bytes:
    return raw_frame(1, 1, struct.pack(">HHH", 60, 70, 0) + shortstr(queue) + b"\x01")


class RawFrames:
    """Reads the node's frames as (type, channel, payload) without decoding strings."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def until(self, predicate, timeout: float = 5.0) -> list[tuple[int, int, bytes]]:
        frames: list[tuple[int, int, bytes]] = []
        deadline = time.monotonic() + timeout
        while True:
            while len(self.buf) >= 7:
                t, ch, size = struct.unpack(">BHI", self.buf[:7])
                if len(self.buf) < size + 8:
                    break
                frames.append((t, ch, self.buf[7:7 + size]))
                self.buf = self.buf[size + 8:]
                if predicate(frames[-1]):
                    return frames
            left = deadline - time.monotonic()
            assert left > 0, f"no matching frame; got {frames}"
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            assert data, f"node closed the connection; frames: {frames}"
            self.buf += data


def session(node: NodeProcess) -> tuple[socket.socket, RawFrames]:
    sock = socket.create_connection((node.host, node.port), timeout=5)
    sock.sendall(b"".join(handshake()) + method(pc.Channel.Open(), 1))
    frames = RawFrames(sock)
    frames.until(lambda f: f[0] == 1 and f[1] == 1 and f[2][:4] == struct.pack(">HH", 20, 11))
    return sock, frames


def is_method(class_id: int, method_id: int):
    return lambda f: f[0] == 1 and f[2][:4] == struct.pack(">HH", class_id, method_id)


def get_body(node: NodeProcess) -> bytes | None:
    sock, frames = session(node)
    try:
        sock.sendall(basic_get(NAME))
        got = frames.until(lambda f: f[0] == 3 or is_method(60, 72)(f))
        return got[-1][2] if got[-1][0] == 3 else None
    finally:
        sock.close()


def test_queue_with_non_utf8_name_works_and_survives_a_restart(fresh_node: NodeProcess) -> None:
    sock, frames = session(fresh_node)
    sock.sendall(queue_declare(NAME, durable=True))
    declare_ok = frames.until(is_method(50, 11))[-1][2]
    assert declare_ok[4:5 + len(NAME)] == shortstr(NAME)
    sock.sendall(queue_bind(NAME, b"amq.direct", b"plain-key"))
    frames.until(is_method(50, 21))
    sock.sendall(method(pc.Confirm.Select(), 1))
    frames.until(is_method(85, 11))
    # Routed by the name itself through the default exchange (transient), and by a
    # binding (persistent, so it is written to disk under the queue's key prefix).
    sock.sendall(publish(b"", NAME, b"by name", persistent=False))
    sock.sendall(publish(b"amq.direct", b"plain-key", b"kept", persistent=True))
    frames.until(lambda f: is_method(60, 80)(f) and struct.unpack(">Q", f[2][4:12])[0] == 2)
    sock.close()
    assert get_body(fresh_node) == b"by name"
    fresh_node.stop()
    fresh_node.start()
    assert get_body(fresh_node) == b"kept"
    assert "Traceback" not in fresh_node.log_text()


def test_messages_routed_by_non_utf8_key_are_stored_paged_and_recovered() -> None:
    # A memory window of 2 messages: the rest of the backlog is paged to the store.
    node = NodeProcess(name="octets@localhost", extra_env={"LEVERET_QUEUE_MEMORY_WINDOW": "2"}).start()
    try:
        sock, frames = session(node)
        sock.sendall(queue_declare(NAME, durable=True) + method(pc.Confirm.Select(), 1))
        frames.until(is_method(85, 11))
        bodies = [f"m{i}".encode() for i in range(8)]
        # Default exchange, routing key = the name: persistent and transient alternate.
        for i, body in enumerate(bodies):
            sock.sendall(publish(b"", NAME, body, persistent=i % 2 == 0))
        frames.until(lambda f: is_method(60, 80)(f) and struct.unpack(">Q", f[2][4:12])[0] == len(bodies))
        sock.close()
        node.stop()
        node.start()
        got = []
        while (body := get_body(node)) is not None:
            got.append(body)
        assert got == bodies[0::2]  # the persistent ones, in order
        assert "Traceback" not in node.log_text()
    finally:
        node.stop()
