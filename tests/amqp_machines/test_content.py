"""Content assembly: publish + header + bodies, however the bytes are cut."""

from __future__ import annotations

from pamqp import commands as pc

from broker.amqp import codec
from broker.amqp.connection import PublishReceived

from .peer import of_type, opened, publish_frames


def test_multi_frame_body_fed_byte_by_byte() -> None:
    peer = opened()
    body = bytes(range(256)) * 40  # 10240 octets
    props = pc.Basic.Properties(content_type="application/octet-stream", delivery_mode=2, headers={"k": "v"})
    data = publish_frames(1, body, exchange="amq.direct", routing_key="rk", properties=props, chunk=1000)
    events = []
    for i in range(len(data)):
        events += peer.conn.receive_data(data[i : i + 1])
    (event,) = events
    assert isinstance(event, PublishReceived)
    assert event.body == body
    assert (event.method.exchange, event.method.routing_key) == ("amq.direct", "rk")
    assert event.properties.content_type == "application/octet-stream"
    assert event.properties.delivery_mode == 2 and event.properties.headers == {"k": "v"}
    # The raw property octets decode to the same properties (reused verbatim on delivery).
    assert codec.decode_properties(event.raw_properties) == event.properties
    assert event.seq is None
    assert peer.conn.data_to_send() == b""


def test_many_publishes_in_one_read_interleaved_across_channels() -> None:
    peer = opened()
    peer.open_channel(2)
    data = b"".join(
        publish_frames(1 + i % 2, f"m{i}".encode() * (i + 1), routing_key=f"k{i}", chunk=3) for i in range(20)
    )
    events = peer.send_raw(data)
    assert [(e.channel, e.method.routing_key, e.body) for e in events] == [
        (1 + i % 2, f"k{i}", f"m{i}".encode() * (i + 1)) for i in range(20)
    ]


def test_empty_body_needs_no_body_frame() -> None:
    peer = opened()
    (event,) = peer.send_raw(publish_frames(1, b""))
    assert event.body == b""


def test_mandatory_flag_reaches_the_node() -> None:
    peer = opened()
    (event,) = peer.send_raw(publish_frames(1, b"x", mandatory=True))
    assert event.method.mandatory is True


def test_publish_split_exactly_at_frame_boundaries() -> None:
    peer = opened()
    data = publish_frames(1, b"abcdef", chunk=2)
    # Method frame, header frame, three bodies: split at every frame end.
    cuts = []
    pos = 0
    while pos < len(data):
        size = int.from_bytes(data[pos + 3 : pos + 7], "big")
        cuts.append(data[pos : pos + size + 8])
        pos += size + 8
    events = []
    for part in cuts:
        events += peer.conn.receive_data(part)
    assert of_type(events, PublishReceived)[0].body == b"abcdef"
