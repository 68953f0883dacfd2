"""Password hashing compatible with RabbitMQ's definitions, and login decisions."""

from __future__ import annotations

import base64
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker import auth


@dataclass
class User:  # the shape cluster/metadata.py's UserRecord has
    name: str
    password_hash: str
    hashing_algorithm: str | None
    tags: object = ()


# Known vectors. The SHA-256 one is the worked example of RabbitMQ's passwords guide
# (salt 908DC60A, password "test12"); the MD5 one is from the rabbitmq-discuss post that
# first described the scheme (salt CAD5089B, "simon"); the last is guest/guest as
# exported in a RabbitMQ 3.0.4 definitions file (MD5, no hashing_algorithm field).
KNOWN = [
    ("kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR", auth.HASHING_SHA256, "test12"),
    ("ytUIm8s3AnKsXQjptplKFytfVxI=", auth.HASHING_MD5, "simon"),
    ("AsYO2ESs62RcsxNVyxKaR5DGxVI=", None, "guest"),
]


@pytest.mark.parametrize(("password_hash", "algorithm", "password"), KNOWN)
def test_known_rabbitmq_hashes_verify(password_hash: str, algorithm: str | None, password: str) -> None:
    assert auth.check_password(password_hash, algorithm, password)
    assert not auth.check_password(password_hash, algorithm, password + "x")
    assert not auth.check_password(password_hash, algorithm, password.upper())


def test_hash_password_reproduces_documented_sha256_example() -> None:
    assert auth.hash_password("test12", salt=bytes.fromhex("908DC60A")) == KNOWN[0][0]


def test_hash_password_reproduces_md5_example() -> None:
    assert auth.hash_password("simon", salt=bytes.fromhex("CAD5089B"), algorithm=auth.HASHING_MD5) == KNOWN[1][0]


def test_sha512_layout_and_verification() -> None:
    h = auth.hash_password("s3cret", salt=b"\x01\x02\x03\x04", algorithm=auth.HASHING_SHA512)
    raw = base64.b64decode(h)
    assert raw[:4] == b"\x01\x02\x03\x04" and len(raw) == 4 + 64
    assert auth.check_password(h, auth.HASHING_SHA512, "s3cret")
    # the algorithm is part of the record: the same bytes do not verify as sha256
    assert not auth.check_password(h, auth.HASHING_SHA256, "s3cret")


def test_random_salt_differs_each_time() -> None:
    a, b = auth.hash_password("same"), auth.hash_password("same")
    assert a != b
    assert auth.check_password(a, auth.DEFAULT_HASHING, "same") and auth.check_password(b, auth.DEFAULT_HASHING, "same")


@pytest.mark.parametrize("bad", ["", "!!!notbase64", "AAAA", base64.b64encode(b"1234").decode()])
def test_empty_or_malformed_hash_never_verifies(bad: str) -> None:
    assert not auth.check_password(bad, auth.HASHING_SHA256, "")
    assert not auth.check_password(bad, auth.HASHING_SHA256, "anything")


def test_unknown_algorithm_is_an_error() -> None:
    with pytest.raises(auth.UnknownHashingAlgorithm):
        auth.check_password(KNOWN[0][0], "rabbit_password_hashing_sha3", "test12")
    assert not auth.is_known_hashing_algorithm("bcrypt")
    assert auth.is_known_hashing_algorithm(None)


@given(st.text(), st.binary(min_size=4, max_size=4), st.sampled_from(sorted(auth._DIGESTS)))
def test_hash_then_check_round_trips(password: str, salt: bytes, algorithm: str) -> None:
    h = auth.hash_password(password, salt=salt, algorithm=algorithm)
    assert auth.check_password(h, algorithm, password)
    assert not auth.check_password(h, algorithm, password + "\0")


GUEST = User("guest", auth.hash_password("guest"), auth.HASHING_SHA256, ("administrator",))


def test_login_succeeds_from_loopback() -> None:
    out = auth.authenticate(GUEST, "guest", "guest", mechanism="PLAIN", local_address="127.0.0.1", loopback_users=["guest"])
    assert out == auth.Authenticated("guest", ("administrator",))


def test_guest_refused_from_remote_address_with_rabbitmq_texts() -> None:
    out = auth.authenticate(GUEST, "guest", "guest", mechanism="PLAIN", local_address="10.0.0.5", loopback_users=["guest"])
    assert isinstance(out, auth.LoginRefused)
    assert out.log_message == "PLAIN login refused: user 'guest' can only connect via localhost"
    assert out.reply_code == 403
    assert out.reply_text == (
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile."
    )


def test_empty_loopback_users_lets_guest_in_remotely() -> None:
    out = auth.authenticate(GUEST, "guest", "guest", mechanism="AMQPLAIN", local_address="10.0.0.5", loopback_users=[])
    assert isinstance(out, auth.Authenticated)


def test_other_users_are_not_loopback_restricted_by_default() -> None:
    alice = User("alice", auth.hash_password("pw"), auth.HASHING_SHA256, "monitoring, management")
    out = auth.authenticate(alice, "alice", "pw", mechanism="PLAIN", local_address="192.0.2.1", loopback_users=["guest"])
    assert out == auth.Authenticated("alice", ("monitoring", "management"))


def test_wrong_password_and_unknown_user_are_indistinguishable_to_the_client() -> None:
    wrong = auth.authenticate(GUEST, "guest", "nope", mechanism="PLAIN", local_address="127.0.0.1", loopback_users=["guest"])
    unknown = auth.authenticate(None, "bob", "x", mechanism="PLAIN", local_address="127.0.0.1", loopback_users=[])
    assert isinstance(wrong, auth.LoginRefused) and isinstance(unknown, auth.LoginRefused)
    assert wrong.log_message == "PLAIN login refused: user 'guest' - invalid credentials"
    assert unknown.log_message == "PLAIN login refused: user 'bob' - invalid credentials"
    assert wrong.reply_text == unknown.reply_text


def test_bad_credentials_checked_before_loopback() -> None:
    out = auth.authenticate(GUEST, "guest", "nope", mechanism="PLAIN", local_address="10.0.0.5", loopback_users=["guest"])
    assert isinstance(out, auth.LoginRefused) and out.log_message.endswith("invalid credentials")


def test_blank_password_refused_even_if_hash_matches() -> None:
    blank = User("b", auth.hash_password(""), auth.HASHING_SHA256)
    out = auth.authenticate(blank, "b", "", mechanism="PLAIN", local_address="127.0.0.1", loopback_users=[])
    assert isinstance(out, auth.LoginRefused)
    assert "attempted to log in with a blank password" in out.log_message


def test_cleared_password_never_logs_in() -> None:
    cleared = User("c", "", auth.HASHING_SHA256)
    out = auth.authenticate(cleared, "c", "anything", mechanism="PLAIN", local_address="127.0.0.1", loopback_users=[])
    assert isinstance(out, auth.LoginRefused)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1", True),
        ("127.255.3.4", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("::ffff:127.9.9.9", True),
        ("::ffff:10.0.0.1", False),
        ("128.0.0.1", False),
        ("10.0.0.1", False),
        ("0.0.0.0", False),
        ("::", False),
        ("::2", False),
        ("fe80::1%eth0", False),
        ("localhost", False),  # a name, not an address: never resolved here
        ("", False),
    ],
)
def test_is_loopback(address: str, expected: bool) -> None:
    assert auth.is_loopback(address) is expected
