"""Dead-lettered copies: x-death history, first-death headers, routing keys, cycles.

The multi-queue sequences reproduce what a RabbitMQ 3.10.8 node produced for the
same chain of queues (measured with pika against scripts/rabbitmq-ref).
"""

from __future__ import annotations

import datetime

from broker.amqp.codec import encode_table
from broker.amqp.spec import BasicProperties
from broker.deadletter import dead_letter, is_cycle, without_cycles
from broker.message import Message

T0 = 1_700_000_000_000
UTC = datetime.timezone.utc


def msg(headers: dict | None = None, expiration: str | None = None, rk: str = "rk", exchange: str = "ex") -> Message:
    props = BasicProperties(headers=headers, expiration=expiration, content_type="text/plain")
    return Message(exchange, rk, props, b"body", persistent=True, priority=3,
                   expiration_ms=None if expiration is None else int(expiration), raw_properties=b"raw", id=42)


def deaths(m: Message) -> list[tuple[str, str, int]]:
    return [(d["queue"], d["reason"], d["count"]) for d in m.properties.headers["x-death"]]


def test_first_death() -> None:
    original = msg(headers={"h": 1, "CC": ["cc1"]}, expiration="60000")
    out = dead_letter(original, "expired", "q1", "dlx", None, T0 + 999)
    copy = out.message
    h = copy.properties.headers
    assert h["x-death"] == [
        {
            "count": 1,
            "reason": "expired",
            "queue": "q1",
            "time": datetime.datetime.fromtimestamp(T0 // 1000, tz=UTC),
            "exchange": "ex",
            "routing-keys": ["rk", "cc1"],
            "original-expiration": "60000",
        }
    ]
    assert (h["x-first-death-reason"], h["x-first-death-queue"], h["x-first-death-exchange"]) == ("expired", "q1", "ex")
    assert h["h"] == 1 and h["CC"] == ["cc1"]
    assert list(h) == sorted(h)  # rabbit_misc:set_table_value keeps tables sorted
    # The per-message TTL is gone so the message does not expire again.
    assert copy.properties.expiration is None and copy.expiration_ms is None
    assert copy.exchange == "dlx"
    assert out.routing_keys == ("rk", "cc1")
    # Body shared, not copied; other properties kept; re-encoding needed.
    assert copy.body is original.body
    assert copy.properties.content_type == "text/plain"
    assert (copy.persistent, copy.priority, copy.id, copy.raw_properties) == (True, 3, 42, None)
    # The original is untouched (it may still sit in other queues).
    assert original.properties.headers == {"h": 1, "CC": ["cc1"]}
    assert original.properties.expiration == "60000"


def test_dead_letter_routing_key_replaces_keys_and_drops_cc() -> None:
    out = dead_letter(msg(headers={"CC": ["cc1"], "BCC": ["secret"]}), "rejected", "q1", "dlx", "dead", T0)
    assert out.routing_keys == ("dead",)
    assert out.message.routing_key == "dead"
    h = out.message.properties.headers
    assert "CC" not in h and "BCC" not in h
    assert h["x-death"][0]["routing-keys"] == ["rk", "cc1"]
    assert "original-expiration" not in h["x-death"][0]


def test_original_keys_include_bcc_but_bcc_never_travels() -> None:
    out = dead_letter(msg(headers={"CC": ["c"], "BCC": ["b"]}), "maxlen", "q1", "dlx", None, T0)
    assert out.routing_keys == ("rk", "c", "b")
    assert "BCC" not in out.message.properties.headers
    assert out.message.properties.headers["x-death"][0]["routing-keys"] == ["rk", "c"]


def test_same_queue_and_reason_increments_count_and_keeps_first_values() -> None:
    m1 = dead_letter(msg(expiration="5"), "expired", "q1", "dlx", None, T0).message
    # Republished elsewhere, dies again in q1 for the same reason.
    m1r = Message("other-ex", "rk2", m1.properties, m1.body)
    m2 = dead_letter(m1r, "expired", "q1", "dlx", None, T0 + 60_000).message
    [entry] = m2.properties.headers["x-death"]
    assert entry["count"] == 2
    # RabbitMQ types the count as long ('l'); typed clients (Java) read it as Long.
    assert encode_table({"count": entry["count"]})[4:] == b"\x05count" + b"l" + (2).to_bytes(8, "big")
    [first] = m1.properties.headers["x-death"]
    assert encode_table({"count": first["count"]})[4:] == b"\x05count" + b"l" + (1).to_bytes(8, "big")
    assert entry["exchange"] == "ex"  # the first death's values stay
    assert entry["time"] == datetime.datetime.fromtimestamp(T0 // 1000, tz=UTC)
    assert entry["original-expiration"] == "5"
    assert list(entry) == sorted(entry)
    assert m2.properties.headers["x-first-death-exchange"] == "ex"


def test_chain_matches_rabbitmq_3_10_order() -> None:
    # Queues a, b expire (TTL), c and d reject: RabbitMQ 3.10.8 showed d, b, a, c.
    m = msg(rk="lvq-a", exchange="")
    for queue, reason, next_key in [("a", "expired", "b"), ("b", "expired", "c"),
                                    ("c", "rejected", "d"), ("d", "rejected", "e")]:
        m = dead_letter(m, reason, queue, "", next_key, T0).message
    assert deaths(m) == [("d", "rejected", 1), ("b", "expired", 1), ("a", "expired", 1), ("c", "rejected", 1)]
    assert m.properties.headers["x-first-death-queue"] == "a"
    # Republished into a with those headers: then a and b expire again -> b2, d, c, a2.
    m = Message("", "lvq-a", m.properties, m.body)
    m = dead_letter(m, "expired", "a", "", "b", T0).message
    m = dead_letter(m, "expired", "b", "", "c", T0).message
    assert deaths(m) == [("b", "expired", 2), ("d", "rejected", 1), ("c", "rejected", 1), ("a", "expired", 2)]


def test_legacy_duplicate_entries_are_grouped_with_their_count() -> None:
    legacy = [
        {"queue": "q1", "reason": "expired"},
        {"queue": "q2", "reason": "expired", "count": 4},
        {"queue": "q1", "reason": "expired"},
    ]
    m = dead_letter(msg(headers={"x-death": legacy}), "rejected", "q3", "dlx", None, T0).message
    got = m.properties.headers["x-death"]
    assert [(d["queue"], d["reason"], d["count"]) for d in got] == [
        ("q3", "rejected", 1), ("q2", "expired", 4), ("q1", "expired", 2)
    ]
    assert "x-first-death-queue" not in m.properties.headers  # only set when x-death was absent


def test_invalid_x_death_is_reset() -> None:
    m = dead_letter(msg(headers={"x-death": "garbage"}), "expired", "q1", "dlx", None, T0).message
    assert deaths(m) == [("q1", "expired", 1)]


def test_cycle_without_rejection_is_dropped() -> None:
    # q1 dead-letters expired messages back to itself.
    m = dead_letter(msg(), "expired", "q1", "dlx", None, T0).message
    assert is_cycle(m, "q1")
    assert not is_cycle(m, "q2")
    assert without_cycles("expired", m, ["q1", "q2"]) == ["q2"]
    # A rejection is the client's decision: never treated as a cycle.
    r = dead_letter(msg(), "rejected", "q1", "dlx", None, T0).message
    assert without_cycles("rejected", r, ["q1"]) == ["q1"]
    assert not is_cycle(r, "q1")


def test_cycle_broken_by_a_rejection_on_the_way() -> None:
    m = msg()
    m = dead_letter(m, "expired", "q1", "", "q2", T0).message
    m = dead_letter(m, "rejected", "q2", "", "q1", T0).message
    m = dead_letter(m, "expired", "q1", "", "q2", T0).message
    # Most recent first: q1/expired(2), q2/rejected... going back to q2 passes a rejection.
    assert not is_cycle(m, "q2")
    m2 = dead_letter(msg(), "expired", "q1", "", "q2", T0).message
    m2 = dead_letter(m2, "expired", "q2", "", "q1", T0).message
    assert is_cycle(m2, "q1") and is_cycle(m2, "q2")
    assert without_cycles("maxlen", m2, ["q1", "q3"]) == ["q3"]
