"""A bare AMQP 0-9-1 client on a socket (pamqp frames), for what real clients never send."""

from __future__ import annotations

import socket
import time
from typing import Any

from pamqp import commands, frame

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"


class RawClient:
    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=5)
        self.buffer = b""
        self.eof = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frame(self, channel: int, value: Any) -> None:
        self.sock.sendall(frame.marshal(value, channel))

    def frames(self, timeout: float, stop_after: int | None = None) -> list[tuple[float, int, Any]]:
        """(arrival time, channel, frame) until EOF, `timeout` or `stop_after` frames."""
        out: list[tuple[float, int, Any]] = []
        deadline = time.monotonic() + timeout
        while not self.eof and (stop_after is None or len(out) < stop_after):
            while self.buffer:
                try:
                    used, channel, value = frame.unmarshal(self.buffer)
                except Exception:
                    break
                self.buffer = self.buffer[used:]
                out.append((time.monotonic(), channel, value))
                if stop_after is not None and len(out) >= stop_after:
                    return out
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
            self.buffer += data
        return out

    def expect(self, cls: type, timeout: float = 5.0) -> Any:
        got = self.frames(timeout, stop_after=1)
        assert got, f"no frame within {timeout}s (expected {cls.__name__})"
        value = got[0][2]
        assert isinstance(value, cls), value
        return value

    def read_until_eof(self, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        data = self.buffer
        self.buffer = b""
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.eof = True
                break
            data += chunk
        return data

    def handshake(self, heartbeat: int = 0, vhost: str = "/") -> None:
        self.send(PROTOCOL_HEADER)
        self.expect(commands.Connection.Start)
        self.send_frame(0, commands.Connection.StartOk(
            client_properties={}, mechanism="PLAIN", response="\x00guest\x00guest", locale="en_US"))
        tune = self.expect(commands.Connection.Tune)
        self.send_frame(0, commands.Connection.TuneOk(
            channel_max=tune.channel_max, frame_max=tune.frame_max, heartbeat=heartbeat))
        self.send_frame(0, commands.Connection.Open(virtual_host=vhost))
        self.expect(commands.Connection.OpenOk)

    def close(self) -> None:
        self.sock.close()
