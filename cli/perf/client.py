"""A small, fast AMQP 0-9-1 client for the load generator: just enough protocol to drive a broker.

It speaks the wire with the project's codec (`broker.amqp.codec`) over a trio
stream. Setup is request/reply (`call`): send one method, read frames until its
reply on that channel, raising `BrokerClosed` if the broker closes the channel or
the connection instead. The hot loops in `cli.perf.workload` then read and write
the stream themselves in large chunks; frames that arrived during setup after the
awaited reply (deliveries that raced a consume-ok) are kept in `pending` for them.

Heartbeats are negotiated off (0): a benchmark run is bounded in time and a
heartbeat frame arriving in the middle of a publish burst would only add noise.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import TypeVar

import trio

from broker.amqp import spec
from broker.amqp.codec import Frame, FrameDecoder, HeartbeatFrame, MethodFrame, encode_method

__all__ = ["BrokerClosed", "BrokerURL", "Connection", "parse_url"]

# What we offer in tune-ok (the broker's own limit wins if smaller).
FRAME_MAX = 131072
RECEIVE_CHUNK = 262144

_R = TypeVar("_R", bound=spec.Method)


class BrokerClosed(Exception):
    """The broker closed a channel or the connection (or the socket ended)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text


@dataclass(frozen=True, slots=True)
class BrokerURL:
    host: str
    port: int
    username: str
    password: str
    vhost: str

    def __str__(self) -> str:
        vhost = urllib.parse.quote(self.vhost, safe="")
        return f"amqp://{self.username}@{self.host}:{self.port}/{vhost}"


def parse_url(url: str) -> BrokerURL:
    """amqp://user:pass@host:port/vhost, as RabbitMQ's URI spec reads it (empty path = vhost "/")."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "amqp":
        raise ValueError(f"only amqp:// URLs are supported, not {url!r}")
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    return BrokerURL(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5672,
        username=urllib.parse.unquote(parts.username or "guest"),
        password=urllib.parse.unquote(parts.password or "guest"),
        vhost=urllib.parse.unquote(path) if path else "/",
    )


class Connection:
    """One AMQP connection. Open with `await Connection.open(url)`; close with `await close()`."""

    def __init__(self, stream: trio.SocketStream, frame_max: int) -> None:
        self.stream = stream
        self.frame_max = frame_max
        self.decoder = FrameDecoder(frame_max)
        self.pending: list[Frame] = []
        self.closed = False

    @classmethod
    async def open(cls, url: str | BrokerURL, *, timeout: float = 10.0) -> "Connection":
        target = url if isinstance(url, BrokerURL) else parse_url(url)
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(target.host, target.port)
            try:
                conn = cls(stream, FRAME_MAX)
                await conn._handshake(target)
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
        return conn

    async def _handshake(self, target: BrokerURL) -> None:
        await self.stream.send_all(spec.PROTOCOL_HEADER)
        start = await self._expect(0, spec.ConnectionStart)
        if b"PLAIN" not in start.mechanisms.split():
            raise BrokerClosed(spec.ACCESS_REFUSED, f"broker offers no PLAIN login: {start.mechanisms!r}")
        response = b"\x00" + target.username.encode() + b"\x00" + target.password.encode()
        client_properties = {
            "product": "leveret-perf",
            "capabilities": {"publisher_confirms": True, "consumer_cancel_notify": True},
        }
        await self.send(encode_method(0, spec.ConnectionStartOk(client_properties, "PLAIN", response, "en_US")))
        tune = await self._expect(0, spec.ConnectionTune)
        frame_max = min(tune.frame_max or FRAME_MAX, FRAME_MAX)
        self.frame_max = frame_max
        self.decoder.frame_max = frame_max
        channel_max = tune.channel_max or 2047
        await self.send(encode_method(0, spec.ConnectionTuneOk(channel_max, frame_max, 0)))
        await self.send(encode_method(0, spec.ConnectionOpen(target.vhost)))
        await self._expect(0, spec.ConnectionOpenOk)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def receive(self) -> list[Frame]:
        """The next batch of frames (setup leftovers first). Raises BrokerClosed on close or EOF."""
        if self.pending:
            frames, self.pending = self.pending, []
            return frames
        while True:
            data = await self.stream.receive_some(RECEIVE_CHUNK)
            if not data:
                self.closed = True
                raise BrokerClosed(spec.CONNECTION_FORCED, "socket closed by the broker")
            frames, error = self.decoder.feed(data)
            if error is not None:
                raise BrokerClosed(error.code, f"undecodable frame from the broker: {error.text}")
            if frames:
                return frames

    def check(self, frame: Frame) -> None:
        """Raise BrokerClosed for a close from the broker (answering it first is left to `close`)."""
        if type(frame) is MethodFrame:
            method = frame.method
            if isinstance(method, (spec.ConnectionClose, spec.ChannelClose)):
                if isinstance(method, spec.ConnectionClose):
                    self.closed = True
                raise BrokerClosed(method.reply_code, method.reply_text)

    async def _expect(self, channel: int, reply: type[_R]) -> _R:
        # Anything else (a delivery racing the reply) is kept for the hot loop, in
        # arrival order. It goes back to `pending` only once the reply is found:
        # parked there earlier, the next `receive` would hand it straight back.
        kept: list[Frame] = []
        try:
            while True:
                frames = await self.receive()
                for index, frame in enumerate(frames):
                    if type(frame) is HeartbeatFrame:
                        continue
                    self.check(frame)
                    if frame.channel == channel and type(frame) is MethodFrame and isinstance(frame.method, reply):
                        kept += frames[index + 1 :]
                        return frame.method  # type: ignore[return-value]
                    kept.append(frame)
        finally:
            self.pending = kept + self.pending

    async def call(self, channel: int, method: spec.Method, reply: type[_R], *, timeout: float = 30.0) -> _R:
        """Send a synchronous method and wait for its reply on the same channel."""
        with trio.fail_after(timeout):
            await self.send(encode_method(channel, method))
            return await self._expect(channel, reply)

    async def open_channel(self, channel: int = 1) -> int:
        await self.call(channel, spec.ChannelOpen(), spec.ChannelOpenOk)
        return channel

    async def close(self, *, timeout: float = 5.0) -> None:
        """Polite connection.close; falls back to dropping the socket."""
        if not self.closed:
            self.closed = True
            with trio.move_on_after(timeout):
                try:
                    await self.send(encode_method(0, spec.ConnectionClose(200, "Goodbye", 0, 0)))
                    while True:
                        data = await self.stream.receive_some(RECEIVE_CHUNK)
                        if not data:
                            break
                        frames, error = self.decoder.feed(data)
                        if error is not None or any(
                            type(f) is MethodFrame and isinstance(f.method, spec.ConnectionCloseOk) for f in frames
                        ):
                            break
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
        await trio.aclose_forcefully(self.stream)
