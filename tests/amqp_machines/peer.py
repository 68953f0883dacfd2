"""A test client for the connection machine: frames built and parsed by pamqp,
an oracle independent of broker.amqp.codec."""

from __future__ import annotations

from typing import Any

from pamqp import body as pbody
from pamqp import commands as pc
from pamqp import encode as pencode
from pamqp import frame as pframe
from pamqp import header as pheader
from pamqp import heartbeat as pheartbeat

from broker.amqp import connection as amqp

USERS = {"guest": "guest", "alice": "s3cret"}
# vhost -> users allowed in it
VHOSTS = {"/": {"guest", "alice"}, "private": {"alice"}}


def authenticate(username: str, password: str) -> str | None:
    if USERS.get(username) != password:
        return f"user '{username}' - invalid credentials"
    return None


def open_vhost(username: str, vhost: str) -> str | None:
    if vhost not in VHOSTS:
        return f"vhost {vhost} not found"
    if username not in VHOSTS[vhost]:
        return f"access to vhost '{vhost}' refused for user '{username}'"
    return None


CAPABILITIES = {
    "authentication_failure_close": True,
    "connection.blocked": True,
    "consumer_cancel_notify": True,
    "publisher_confirms": True,
    "basic.nack": True,
}


def new_connection(**kwargs: Any) -> amqp.Connection:
    import random

    kwargs.setdefault("rng", random.Random(7))
    return amqp.Connection(authenticate, open_vhost, **kwargs)


def marshal(*frames: Any, channel: int = 0) -> bytes:
    return b"".join(pframe.marshal(f, channel) for f in frames)


def publish_frames(
    channel: int,
    body: bytes,
    exchange: str = "",
    routing_key: str = "q",
    properties: pc.Basic.Properties | None = None,
    chunk: int | None = None,
    mandatory: bool = False,
) -> bytes:
    props = properties or pc.Basic.Properties()
    out = [
        pframe.marshal(pc.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=mandatory), channel),
        pframe.marshal(pheader.ContentHeader(0, len(body), props), channel),
    ]
    step = chunk or max(len(body), 1)
    for i in range(0, len(body), step):
        out.append(pframe.marshal(pbody.ContentBody(body[i : i + step]), channel))
    return b"".join(out)


def amqplain_response(login: str, password: str) -> str:
    # AMQPLAIN: a field table without its 4-octet length prefix.
    return pencode.field_table({"LOGIN": login, "PASSWORD": password})[4:].decode("latin-1")


def parse(data: bytes) -> list[tuple[int, Any]]:
    """Every frame the server wrote, as (channel, pamqp frame)."""
    out = []
    while data:
        used, channel, value = pframe.unmarshal(data)
        assert used > 0
        out.append((channel, value))
        data = data[used:]
    return out


class Peer:
    """Drives a Connection the way a client would."""

    def __init__(self, conn: amqp.Connection | None = None) -> None:
        self.conn = conn if conn is not None else new_connection()
        self.events: list[Any] = []

    def send_raw(self, data: bytes) -> list[Any]:
        events = self.conn.receive_data(data)
        self.events += events
        return events

    def send(self, *frames: Any, channel: int = 0) -> list[Any]:
        return self.send_raw(marshal(*frames, channel=channel))

    def received(self) -> list[tuple[int, Any]]:
        return parse(self.conn.data_to_send())

    def methods(self) -> list[tuple[int, Any]]:
        return [(ch, f) for ch, f in self.received() if not isinstance(f, pheartbeat.Heartbeat)]

    def one(self) -> tuple[int, Any]:
        frames = self.methods()
        assert len(frames) == 1, frames
        return frames[0]

    # --- handshake steps ---

    def header(self) -> Any:
        self.send_raw(b"AMQP\x00\x00\x09\x01")
        ch, start = self.one()
        assert ch == 0 and isinstance(start, pc.Connection.Start)
        return start

    def start_ok(
        self,
        user: str = "guest",
        password: str = "guest",
        mechanism: str = "PLAIN",
        capabilities: dict[str, Any] | None = None,
    ) -> list[Any]:
        response = f"\0{user}\0{password}" if mechanism == "PLAIN" else amqplain_response(user, password)
        props = {"product": "test", "capabilities": CAPABILITIES if capabilities is None else capabilities}
        return self.send(pc.Connection.StartOk(client_properties=props, mechanism=mechanism, response=response))

    def tune_ok(self, channel_max: int = 2047, frame_max: int = 131072, heartbeat: int = 60) -> list[Any]:
        return self.send(pc.Connection.TuneOk(channel_max=channel_max, frame_max=frame_max, heartbeat=heartbeat))

    def handshake(self, vhost: str = "/", heartbeat: int = 60, frame_max: int = 131072, **start: Any) -> "Peer":
        self.header()
        self.start_ok(**start)
        ch, tune = self.one()
        assert isinstance(tune, pc.Connection.Tune), tune
        self.tune_ok(frame_max=frame_max, heartbeat=heartbeat)
        self.send(pc.Connection.Open(virtual_host=vhost))
        ch, ok = self.one()
        assert isinstance(ok, pc.Connection.OpenOk), ok
        self.events.clear()
        return self

    def open_channel(self, number: int = 1) -> None:
        self.send(pc.Channel.Open(), channel=number)
        ch, ok = self.one()
        assert ch == number and isinstance(ok, pc.Channel.OpenOk), ok
        self.events.clear()


def opened(**kwargs: Any) -> Peer:
    peer = Peer(new_connection(**kwargs))
    peer.handshake()
    peer.open_channel(1)
    return peer


def of_type(events: list[Any], cls: type) -> list[Any]:
    return [e for e in events if isinstance(e, cls)]
