"""Queue/consume argument validation, per-message expiration and policy combination.

The expected texts were read off a RabbitMQ 3.10.8 node (pika client, which sends
Python ints as 'I' signedint when they fit) — see scripts/rabbitmq-ref.
"""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from broker.arguments import (
    MAX_EXPIRY_MS,
    QueueSettings,
    Refusal,
    check_consume_arguments,
    check_declare_arguments,
    exclusive_use_refusal,
    parse_expiration,
)

PREFIX = "PRECONDITION_FAILED - invalid arg "
Q = "for queue 'q' in vhost '/'"

DECLARE_CASES = [
    ({"x-message-ttl": "abc"}, f"'x-message-ttl' {Q}: \"expected integer, got longstr\""),
    ({"x-message-ttl": b"abc"}, f"'x-message-ttl' {Q}: \"expected integer, got binary\""),
    ({"x-message-ttl": True}, f"'x-message-ttl' {Q}: \"expected integer, got bool\""),
    ({"x-message-ttl": -1}, f"'x-message-ttl' {Q}: {{value_negative,-1}}"),
    ({"x-message-ttl": 2**40}, f"'x-message-ttl' {Q}: {{value_too_large,1099511627776}}"),
    ({"x-message-ttl": MAX_EXPIRY_MS + 1}, f"'x-message-ttl' {Q}: {{value_too_large,315360000001}}"),
    ({"x-expires": 0}, f"'x-expires' {Q}: {{value_zero,0}}"),
    ({"x-expires": -5}, f"'x-expires' {Q}: {{value_negative,-5}}"),
    ({"x-expires": 2**40}, f"'x-expires' {Q}: {{value_too_large,1099511627776}}"),
    ({"x-max-length": -1}, f"'x-max-length' {Q}: {{value_negative,-1}}"),
    ({"x-max-length": {"a": 1}}, f"'x-max-length' {Q}: \"expected integer, got table\""),
    ({"x-max-length": [1]}, f"'x-max-length' {Q}: \"expected integer, got array\""),
    ({"x-max-length": None}, f"'x-max-length' {Q}: \"expected integer, got void\""),
    ({"x-max-length-bytes": -3}, f"'x-max-length-bytes' {Q}: {{value_negative,-3}}"),
    ({"x-max-priority": 256}, f"'x-max-priority' {Q}: {{max_value_exceeded,256}}"),
    ({"x-max-priority": "a"}, f"'x-max-priority' {Q}: \"expected integer, got longstr\""),
    ({"x-dead-letter-routing-key": "k"}, f"'x-dead-letter-routing-key' {Q}: routing_key_but_no_dlx_defined"),
    (
        {"x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": 5},
        f"'x-dead-letter-routing-key' {Q}: {{unacceptable_type,signedint}}",
    ),
    ({"x-overflow": "nope"}, f"'x-overflow' {Q}: invalid_overflow"),
    ({"x-overflow": 3}, f"'x-overflow' {Q}: {{unacceptable_type,signedint}}"),
    ({"x-queue-mode": "fast"}, f"'x-queue-mode' {Q}: \"unsupported queue mode 'fast'\""),
    ({"x-queue-type": "weird"}, f"'x-queue-type' {Q}: \"unsupported queue type 'weird'\""),
    ({"x-queue-type": "stream"}, f"'x-queue-type' {Q}: \"unsupported queue type 'stream'\""),
    ({"x-single-active-consumer": "yes"}, f"'x-single-active-consumer' {Q}: {{unacceptable_type,longstr}}"),
    ({"x-single-active-consumer": 1}, f"'x-single-active-consumer' {Q}: {{unacceptable_type,signedint}}"),
    ({"x-single-active-consumer": 2**40}, f"'x-single-active-consumer' {Q}: {{unacceptable_type,long}}"),
]


@pytest.mark.parametrize(("arguments", "detail"), DECLARE_CASES)
def test_declare_refusals_match_rabbitmq(arguments: dict, detail: str) -> None:
    assert check_declare_arguments("q", "/", arguments) == Refusal(406, PREFIX + detail)


def test_dead_letter_exchange_type_is_checked_first_with_the_channel_wording() -> None:
    refusal = check_declare_arguments("q", "/", {"x-expires": 0, "x-dead-letter-exchange": 5})
    assert refusal == Refusal(
        406, "PRECONDITION_FAILED - invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue 'q' in vhost '/'"
    )


def test_first_failing_argument_in_rabbitmq_order_is_reported() -> None:
    refusal = check_declare_arguments("q", "/", {"x-max-priority": 300, "x-expires": 0})
    assert refusal is not None and "'x-expires'" in refusal.text


@pytest.mark.parametrize(
    "arguments",
    [
        None,
        {},
        {"x-unknown": "whatever", "plain": 1},
        {"x-message-ttl": 0, "x-expires": 1, "x-max-length": 0, "x-max-length-bytes": 0},
        {"x-message-ttl": MAX_EXPIRY_MS, "x-expires": MAX_EXPIRY_MS, "x-max-priority": 255},
        {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "rk"},
        {"x-overflow": "reject-publish-dlx", "x-queue-mode": "lazy", "x-single-active-consumer": True},
        {"x-queue-type": "classic"},
        {"x-queue-type": "quorum"},
    ],
)
def test_accepted_declare_arguments(arguments: dict | None) -> None:
    assert check_declare_arguments("q", "/", arguments) is None


def test_consume_arguments() -> None:
    assert check_consume_arguments("q", "/", {"x-priority": 10}) is None
    assert check_consume_arguments("q", "/", {"x-priority": "high"}) == Refusal(
        406, "PRECONDITION_FAILED - invalid arg 'x-priority' for queue 'q' in vhost '/': \"expected integer, got longstr\""
    )
    assert check_consume_arguments("q", "/", {"x-cancel-on-ha-failover": 1}) == Refusal(
        406,
        "PRECONDITION_FAILED - invalid arg 'x-cancel-on-ha-failover' for queue 'q' in vhost '/': "
        "{unacceptable_type,signedint}",
    )


def test_exclusive_use_text() -> None:
    assert exclusive_use_refusal("q", "/") == Refusal(403, "ACCESS_REFUSED - queue 'q' in vhost '/' in exclusive use")


@pytest.mark.parametrize(
    ("expiration", "detail"),
    [
        ("abc", "'abc': no_integer"),
        ("", "'': no_integer"),
        (" 5", "' 5': no_integer"),
        ("10x", "'10x': {leftover_string,\"x\"}"),
        ("5 ", "'5 ': {leftover_string,\" \"}"),
        ("-1", "'-1': {value_negative,-1}"),
        ("315360000001", "'315360000001': {value_too_large,315360000001}"),
    ],
)
def test_invalid_expiration(expiration: str, detail: str) -> None:
    assert parse_expiration(expiration) == Refusal(406, "PRECONDITION_FAILED - invalid expiration " + detail)


def test_valid_expiration() -> None:
    assert parse_expiration(None) is None
    assert parse_expiration("0") == 0
    assert parse_expiration("+5") == 5
    assert parse_expiration(b"60000") == 60000
    assert parse_expiration("4294967296") == 4294967296


@given(st.integers(0, MAX_EXPIRY_MS))
def test_any_expiry_in_range_parses(n: int) -> None:
    assert parse_expiration(str(n)) == n


def test_settings_from_arguments_alone() -> None:
    s = QueueSettings.effective(
        {
            "x-message-ttl": 100,
            "x-expires": 2000,
            "x-max-length": 5,
            "x-max-length-bytes": 50,
            "x-overflow": "reject-publish",
            "x-dead-letter-exchange": "dlx",
            "x-dead-letter-routing-key": "dead",
            "x-max-priority": 10,
            "x-single-active-consumer": True,
            "x-queue-mode": "lazy",
        }
    )
    assert s == QueueSettings(100, 2000, 5, 50, "reject-publish", "dlx", "dead", 10, True, "lazy", "classic")


def test_policy_alone_applies() -> None:
    s = QueueSettings.effective({}, {"message-ttl": 7, "max-length": 3, "overflow": "reject-publish-dlx",
                                     "dead-letter-exchange": "p-dlx"})
    assert (s.message_ttl_ms, s.max_length, s.overflow, s.dead_letter_exchange) == (7, 3, "reject-publish-dlx", "p-dlx")


def test_lower_value_wins_for_limits_and_argument_wins_for_the_rest() -> None:
    args = {
        "x-message-ttl": 100,
        "x-expires": 1000,
        "x-max-length": 10,
        "x-max-length-bytes": 5,
        "x-overflow": "drop-head",
        "x-dead-letter-exchange": "arg-dlx",
        "x-dead-letter-routing-key": "arg-rk",
        "x-queue-mode": "default",
    }
    policy = {
        "message-ttl": 50,
        "expires": 5000,
        "max-length": 20,
        "max-length-bytes": 2,
        "overflow": "reject-publish",
        "dead-letter-exchange": "pol-dlx",
        "dead-letter-routing-key": "pol-rk",
        "queue-mode": "lazy",
        "max-priority": 5,  # not a 3.10 policy key: ignored
    }
    s = QueueSettings.effective(args, policy)
    assert s.message_ttl_ms == 50
    assert s.expires_ms == 1000
    assert s.max_length == 10
    assert s.max_length_bytes == 2
    assert s.overflow == "drop-head"
    assert s.dead_letter_exchange == "arg-dlx"
    assert s.dead_letter_routing_key == "arg-rk"
    assert s.queue_mode == "default"
    assert s.max_priority == 0


def test_operator_policy_caps_the_user_policy() -> None:
    s = QueueSettings.effective({"x-max-length": 100}, {"max-length": 50}, {"max-length": 10, "message-ttl": 9})
    assert (s.max_length, s.message_ttl_ms) == (10, 9)
    s = QueueSettings.effective({"x-max-length": 5}, {"max-length": 50}, {"max-length": 10})
    assert s.max_length == 5


@given(
    st.one_of(st.none(), st.integers(0, 100)),
    st.one_of(st.none(), st.integers(0, 100)),
)
def test_limit_combination_is_the_minimum_of_what_is_set(arg: int | None, pol: int | None) -> None:
    s = QueueSettings.effective({} if arg is None else {"x-max-length": arg}, {} if pol is None else {"max-length": pol})
    present = [v for v in (arg, pol) if v is not None]
    assert s.max_length == (min(present) if present else None)


def test_settings_wire_round_trip() -> None:
    s = QueueSettings.effective({"x-message-ttl": 3, "x-dead-letter-exchange": "d", "x-max-priority": 4})
    assert QueueSettings.from_wire(s.to_wire()) == s
