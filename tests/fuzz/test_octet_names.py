"""Octets that are not UTF-8 in names and routing keys.

RabbitMQ 3.10.8 refuses them in method short strings (501 "Malformed UTF-8 in
shortstr") except in basic.publish, whose routing key may be any octets: such a
message is routed (a topic "#" binding takes it), stored when persistent,
paged, and recovered after a restart. Found by the frame fuzz test, where such
names first crashed the metadata log's apply (wedging the node) and then the
message store.
"""

from __future__ import annotations

import socket
import struct
import time

from pamqp import commands as pc

from tests.fuzz.cases import handshake, method, raw_frame
from tests.support.node_process import NodeProcess

NAME = b"q-\xff\xfe-\xc3"
QUEUE = b"octets-by-topic"


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
        sock.sendall(basic_get(QUEUE))
        got = frames.until(lambda f: f[0] == 3 or is_method(60, 72)(f))
        return got[-1][2] if got[-1][0] == 3 else None
    finally:
        sock.close()


def test_queue_name_that_is_not_utf8_is_refused(node: NodeProcess) -> None:
    sock, frames = session(node)
    try:
        sock.sendall(queue_declare(NAME, durable=True))
        close = frames.until(is_method(10, 50))[-1][2]
        assert close[4:6] == struct.pack(">H", 501)
        assert b"FRAME_ERROR - Malformed UTF-8 in shortstr" in close
    finally:
        sock.close()


def test_messages_routed_by_non_utf8_key_are_stored_paged_and_recovered() -> None:
    # A memory window of 2 messages: the rest of the backlog is paged to the store.
    node = NodeProcess(name="octets@localhost", extra_env={"LEVERET_QUEUE_MEMORY_WINDOW": "2"}).start()
    try:
        sock, frames = session(node)
        sock.sendall(queue_declare(QUEUE, durable=True) + queue_bind(QUEUE, b"amq.topic", b"#")
                     + method(pc.Confirm.Select(), 1))
        frames.until(is_method(85, 11))
        bodies = [f"m{i}".encode() for i in range(8)]
        # Persistent and transient alternate.
        for i, body in enumerate(bodies):
            sock.sendall(publish(b"amq.topic", NAME, body, persistent=i % 2 == 0))
        frames.until(lambda f: is_method(60, 80)(f) and struct.unpack(">Q", f[2][4:12])[0] == len(bodies))
        # Before the restart, paged transient ones come back too, with their routing key.
        sock.sendall(basic_get(QUEUE))
        got = frames.until(is_method(60, 71))[-1][2]
        assert shortstr(NAME) + struct.pack(">I", len(bodies) - 1) in got
        sock.close()
        node.stop()
        node.start()
        left = []
        while (body := get_body(node)) is not None:
            left.append(body)
        assert left == bodies[2::2]  # the persistent ones not yet taken, in order
        assert "Traceback" not in node.log_text()
    finally:
        node.stop()
