"""The fuzz client's side of one case: send the writes, then watch how the node ends it.

Outcomes, as RabbitMQ ends a connection:
- "close": the node sent connection.close (we answer close-ok) and closed the socket;
- "client-close": the case itself closed the connection and got close-ok (the
  client then closes the socket);
- "header": the node answered a bad protocol header with its own and closed;
- "silent": the node closed without a word (only legitimate before the handshake completes);
- "hang": the socket stayed open past the bounds, even after a terminator
  (bytes that cannot form a valid frame) was sent; always a failure.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

from pamqp import commands as pc
from pamqp import exceptions as pexceptions
from pamqp import frame as pframe

from tests.fuzz.cases import FRAME_MAX, Case

# More bytes than any frame the node would wait for, none of them a frame end:
# whatever state the decoder is in, this makes it fail.
TERMINATOR = b"\xff" * (FRAME_MAX + 64)
QUIET = 0.6  # wait this long for the node's own verdict before sending the terminator
BOUND = 8.0  # after the terminator, the connection must end within this


@dataclass
class Outcome:
    case: Case
    port: int = 0
    kind: str = ""
    reply_code: int | None = None
    reply_text: str = ""
    opened: bool = False  # the node sent connection.open-ok
    terminated: bool = False  # the terminator was needed
    reset: bool = False
    frames: list[object] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    received: bytes = b""


class _Reader:
    """Parses what the node sends, with pamqp; notes a close and answers it."""

    def __init__(self, sock: socket.socket, out: Outcome) -> None:
        self.sock = sock
        self.out = out
        self.buf = b""
        self.eof = False
        self.close_seen = False
        self.close_ok_seen = False
        self.header_seen = False

    def pump(self, timeout: float, until_eof: bool = False) -> None:
        """Read for up to `timeout` seconds or until EOF (or, unless `until_eof`, a close)."""
        deadline = time.monotonic() + timeout
        while not self.eof and (until_eof or not (self.close_seen or self.close_ok_seen)):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return
            except ConnectionResetError:
                self.out.reset = True
                self.eof = True
                return
            if not data:
                self.eof = True
                return
            self.out.received += data
            self.buf += data
            self._parse()

    def _parse(self) -> None:
        out = self.out
        while self.buf:
            if not out.frames and self.buf[:4] == b"AMQP":
                if len(self.buf) < 8:
                    return
                if self.buf[:8] != b"AMQP\x00\x00\x09\x01":
                    out.problems.append(f"node sent protocol header {self.buf[:8]!r}")
                self.header_seen = True
                out.frames.append("protocol-header")
                self.buf = self.buf[8:]
                continue
            if len(self.buf) < 8:
                return
            size = int.from_bytes(self.buf[3:7], "big")
            if len(self.buf) < size + 8:
                return
            try:
                consumed, channel, frame = pframe.unmarshal(self.buf)
            except (pexceptions.UnmarshalingException, ValueError, KeyError) as exc:
                raw = self.buf[:size + 8]
                frame = _close_with_octets(raw)
                if frame is None:
                    if "UnicodeDecodeError" not in repr(exc) or raw[0] not in (1, 2, 3) or raw[-1] != 0xCE:
                        out.problems.append(f"unparseable frame from node: {exc!r} in {self.buf[:64]!r}")
                        self.buf = b""
                        return
                    # A well-formed frame echoing octets the client sent as a name or a
                    # property (AMQP strings are octets; pamqp insists on UTF-8).
                    frame = "frame with non-UTF-8 strings"
                consumed = size + 8
            self.buf = self.buf[consumed:]
            if self.close_seen and not isinstance(frame, pc.Connection.CloseOk):
                # Close-ok is right when our own connection.close crossed the node's.
                out.problems.append(f"node sent {frame!r} after connection.close")
            out.frames.append(frame)
            if isinstance(frame, pc.Connection.OpenOk):
                out.opened = True
            elif isinstance(frame, pc.Connection.Close):
                self.close_seen = True
                out.reply_code = frame.reply_code
                out.reply_text = frame.reply_text
            elif isinstance(frame, pc.Connection.CloseOk):
                self.close_ok_seen = True


def _close_with_octets(frame: bytes) -> object | None:
    """connection.close / channel.close whose reply text is not UTF-8: RabbitMQ, and the
    node, quote names as the client sent them, which pamqp will not decode."""
    if frame[0] != 1 or frame[-1] != 0xCE or len(frame) < 8 + 4 + 2 + 1:
        return None
    class_id, method_id, code, length = struct.unpack(">HHHB", frame[7:14])
    if (class_id, method_id) not in ((10, 50), (20, 40)) or 14 + length + 4 != len(frame) - 1:
        return None
    text = frame[14:14 + length].decode("utf-8", "surrogateescape")
    cls = pc.Connection.Close if class_id == 10 else pc.Channel.Close
    ids = struct.unpack(">HH", frame[14 + length:18 + length])
    return cls(reply_code=code, reply_text=text, class_id=ids[0], method_id=ids[1])


def _send(sock: socket.socket, data: bytes) -> bool:
    sock.settimeout(5)
    try:
        sock.sendall(data)
        return True
    except (BrokenPipeError, ConnectionResetError, socket.timeout):
        return False


def run_case(host: str, port: int, case: Case) -> Outcome:
    out = Outcome(case)
    sock = socket.create_connection((host, port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    out.port = sock.getsockname()[1]
    reader = _Reader(sock, out)
    try:
        for chunk in case.writes:
            if not _send(sock, chunk):
                break
            reader.pump(0.005)
            if reader.eof or reader.close_seen:
                break
        reader.pump(QUIET)
        if not (reader.eof or reader.close_seen or reader.close_ok_seen):
            out.terminated = True
            _send(sock, TERMINATOR)
            reader.pump(BOUND)
        if reader.close_seen:
            # Answer as a client should; the node must then close the socket.
            _send(sock, pframe.marshal(pc.Connection.CloseOk(), 0))
            reader.pump(QUIET, until_eof=True)
            if not reader.eof:
                # The close-ok may have landed inside a frame the case left incomplete
                # (the node, like RabbitMQ, is still reading it): complete and break it.
                out.terminated = True
                _send(sock, TERMINATOR)
        if reader.close_ok_seen and not reader.close_seen:
            # After close-ok it is the client that closes the socket (RabbitMQ waits for it).
            out.kind = "client-close"
            return out
        reader.pump(BOUND, until_eof=True)
        if not reader.eof:
            out.kind = "hang"
        elif reader.close_seen:
            out.kind = "close"
        elif reader.close_ok_seen:
            out.kind = "client-close"
        elif reader.header_seen:
            out.kind = "header"
        else:
            out.kind = "silent"
        return out
    finally:
        sock.close()
