"""Users and what they may do: password hashing, login, vhost/resource/topic permissions, loopback-only users.

This is RabbitMQ's internal auth backend (rabbit_auth_backend_internal,
rabbit_access_control, the permission checks in rabbit_channel) as a pure
module: it takes user and permission records as plain values and answers with
a decision, or with a refusal value carrying RabbitMQ's reply code and exact
reply text. It does no I/O and keeps no state beyond a cache of compiled
regular expressions.

Password hashes are RabbitMQ's: base64(salt(4 bytes) + H(salt + utf8(password)))
with H chosen by the record's hashing algorithm, so hashes exported from a
RabbitMQ definitions file verify here and the reverse. A record without an
algorithm is a pre-3.6 one and uses MD5, as RabbitMQ assumes.

Permission regexes are matched the way RabbitMQ calls `re:run(Name, Regex,
[{capture, none}])`: unanchored (a search, not a full match), so "^$" is what
grants nothing, "" is treated as "^$", and ".*" grants everything. The default
exchange "" is checked under the name "amq.default".

Which operation needs which permission follows rabbit_channel exactly (the
`checks_for_*` functions below), including its order, which decides which
refusal a client sees when several checks would fail.

Loopback: RabbitMQ checks the socket's *local* address (rabbit_net:is_loopback
on the socket uses sockname), so a client reaching a loopback listener is
local. Callers pass that address; for a loopback connection the peer address
is loopback too.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import ipaddress
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

from cluster.logtext import peer_text

# --------------------------------------------------------------------------
# The records we read: cluster/metadata.py's UserRecord, Permission, TopicPermission
# (or anything shaped like them); only the fields used here.


class UserLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def password_hash(self) -> str: ...
    @property
    def hashing_algorithm(self) -> str | None: ...
    @property
    def tags(self) -> object: ...  # names, or RabbitMQ's comma-separated string


class PermissionLike(Protocol):
    @property
    def configure(self) -> str: ...
    @property
    def write(self) -> str: ...
    @property
    def read(self) -> str: ...


class TopicPermissionLike(Protocol):
    @property
    def write(self) -> str: ...
    @property
    def read(self) -> str: ...


# --------------------------------------------------------------------------
# Refusals: AMQP errors as values.

ACCESS_REFUSED = 403
NOT_ALLOWED = 530


@dataclass(frozen=True, slots=True)
class AccessRefused:
    """A refused operation: reply code and reply text exactly as RabbitMQ sends them."""

    reply_code: int
    reply_text: str


def _access_refused(explanation: str) -> AccessRefused:
    return AccessRefused(ACCESS_REFUSED, f"ACCESS_REFUSED - {explanation}")


# --------------------------------------------------------------------------
# Password hashing.

HASHING_SHA256 = "rabbit_password_hashing_sha256"
HASHING_SHA512 = "rabbit_password_hashing_sha512"
HASHING_MD5 = "rabbit_password_hashing_md5"
DEFAULT_HASHING = HASHING_SHA256

_DIGESTS = {HASHING_SHA256: "sha256", HASHING_SHA512: "sha512", HASHING_MD5: "md5"}
_SALT_LEN = 4


class UnknownHashingAlgorithm(ValueError):
    pass


def _digest_name(algorithm: str | None) -> str:
    # A record without an algorithm predates RabbitMQ 3.6 and is MD5 (rabbit_password:hashing_mod(undefined)).
    if not algorithm:
        return "md5"
    try:
        return _DIGESTS[algorithm]
    except KeyError:
        raise UnknownHashingAlgorithm(f"unknown password hashing algorithm '{algorithm}'") from None


def is_known_hashing_algorithm(algorithm: str | None) -> bool:
    return not algorithm or algorithm in _DIGESTS


def hash_password(password: str, salt: bytes | None = None, algorithm: str = DEFAULT_HASHING) -> str:
    """The base64 password hash RabbitMQ stores and exports for `password`."""
    if salt is None:
        salt = os.urandom(_SALT_LEN)
    assert len(salt) == _SALT_LEN, "RabbitMQ salts are exactly 4 bytes"
    digest = hashlib.new(_digest_name(algorithm), salt + password.encode("utf-8")).digest()
    return base64.b64encode(salt + digest).decode("ascii")


def check_password(password_hash: str, algorithm: str | None, password: str) -> bool:
    """Whether `password` matches `password_hash`; an empty or malformed hash never matches."""
    if not password_hash:
        return False
    try:
        decoded = base64.b64decode(password_hash, validate=True)
    except (binascii.Error, ValueError):
        return False
    if len(decoded) <= _SALT_LEN:
        return False
    salt, expected = decoded[:_SALT_LEN], decoded[_SALT_LEN:]
    actual = hashlib.new(_digest_name(algorithm), salt + password.encode("utf-8")).digest()
    return hmac.compare_digest(actual, expected)


# --------------------------------------------------------------------------
# Login.


@dataclass(frozen=True, slots=True)
class Authenticated:
    username: str
    tags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LoginRefused:
    """A refused login.

    `log_message` is what RabbitMQ logs ("PLAIN login refused: user 'u' - invalid
    credentials"), the user name in it escaped and bounded (`peer_text`). The client never sees the reason: if it announced the
    `authentication_failure_close` capability it gets connection.close with
    `reply_code`/`reply_text`; otherwise RabbitMQ just closes the socket.
    """

    username: str
    log_message: str
    reply_code: int
    reply_text: str


def user_tags(user: UserLike) -> tuple[str, ...]:
    tags = user.tags
    if isinstance(tags, str):  # definitions exported by RabbitMQ < 3.10 hold "administrator,monitoring"
        return tuple(t.strip() for t in tags.split(",") if t.strip())
    return tuple(str(t) for t in tags)  # type: ignore[attr-defined]


def _login_refused(username: str, mechanism: str, reason: str) -> LoginRefused:
    return LoginRefused(
        username=username,
        log_message=f"{mechanism} login refused: {reason}",
        reply_code=ACCESS_REFUSED,
        reply_text=(
            f"ACCESS_REFUSED - Login was refused using authentication mechanism {mechanism}. "
            "For details see the broker logfile."
        ),
    )


def authenticate(
    user: UserLike | None,
    username: str,
    password: str,
    *,
    mechanism: str,
    local_address: str,
    loopback_users: Iterable[str],
) -> Authenticated | LoginRefused:
    """Check a username/password login the way rabbit_reader's auth phase does.

    `user` is the record for `username`, or None if there is none. Order as in
    RabbitMQ: blank password, then credentials (an unknown user and a wrong
    password give the same refusal), then the loopback restriction. The name in
    the log message is escaped and bounded: whoever opened the socket chose it.
    """
    shown = peer_text(username)
    if password == "":
        return _login_refused(
            username,
            mechanism,
            f"user '{shown}' attempted to log in with a blank password, which is prohibited by the "
            "internal authN backend. To use TLS/x509 certificate-based authentication, see the "
            "rabbitmq_auth_mechanism_ssl plugin and configure the client to use the EXTERNAL "
            "authentication mechanism. Alternatively change the password for the user to be non-blank.",
        )
    if user is None or not check_password(user.password_hash, user.hashing_algorithm, password):
        return _login_refused(username, mechanism, f"user '{shown}' - invalid credentials")
    if not is_loopback(local_address) and username in set(loopback_users):
        return _login_refused(username, mechanism, f"user '{shown}' can only connect via localhost")
    return Authenticated(username=user.name, tags=user_tags(user))


def is_loopback(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """127.0.0.0/8, ::1 and IPv4-mapped ::ffff:127.x.y.z, as rabbit_net:is_loopback/1."""
    if isinstance(address, str):
        text = address.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        text = text.split("%", 1)[0]  # IPv6 zone id, as in "fe80::1%eth0"
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            return False
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is not None:
            return mapped in _LOOPBACK_V4
        return address == _LOOPBACK_V6
    return address in _LOOPBACK_V4


_LOOPBACK_V4 = ipaddress.ip_network("127.0.0.0/8")
_LOOPBACK_V6 = ipaddress.IPv6Address("::1")


# --------------------------------------------------------------------------
# Vhost and resource permissions.


class Access(enum.StrEnum):
    CONFIGURE = "configure"
    WRITE = "write"
    READ = "read"


class Kind(enum.StrEnum):
    QUEUE = "queue"
    EXCHANGE = "exchange"


@dataclass(frozen=True, slots=True)
class Resource:
    vhost: str
    kind: Kind
    name: str

    def describe(self) -> str:
        """rabbit_misc:rs/1: "queue 'q' in vhost '/'"."""
        return f"{self.kind} '{self.name}' in vhost '{self.vhost}'"


@dataclass(frozen=True, slots=True)
class Check:
    resource: Resource
    access: Access


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str] | None:
    # An empty permission is a synonym for "^$" (rabbit_auth_backend_internal).
    try:
        return re.compile(pattern if pattern != "" else "^$")
    except re.error:
        return None


def permission_regex_error(pattern: str) -> str | None:
    """Why `pattern` cannot be stored as a permission, or None if it can (for set_permissions)."""
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"invalid regular expression '{pattern}': {exc}"
    return None


def regex_grants(pattern: str, name: str) -> bool:
    """re:run semantics: an unanchored search; an invalid pattern grants nothing."""
    compiled = _compiled(pattern)
    return compiled is not None and compiled.search(name) is not None


def _effective_name(resource: Resource) -> str:
    # rabbit_access_control checks the default exchange under the name "amq.default".
    if resource.kind is Kind.EXCHANGE and resource.name == "":
        return "amq.default"
    return resource.name


def check_vhost_access(
    username: str, vhost: str, *, vhost_exists: bool, permission: PermissionLike | None
) -> AccessRefused | None:
    """connection.open: a user may open a vhost that exists and where it has any permission record."""
    if vhost_exists and permission is not None:
        return None
    return AccessRefused(NOT_ALLOWED, f"NOT_ALLOWED - access to vhost '{vhost}' refused for user '{username}'")


def check_resource_access(
    username: str, permission: PermissionLike | None, resource: Resource, access: Access
) -> AccessRefused | None:
    """One permission check; `permission` is the user's record for `resource.vhost`, or None."""
    name = _effective_name(resource)
    if permission is not None and regex_grants(getattr(permission, access.value), name):
        return None
    shown = Resource(resource.vhost, resource.kind, name)
    # RabbitMQ 3.10's text (rabbit_access_control) does not name the permission; 3.11+ does.
    return _access_refused(f"access to {shown.describe()} refused for user '{username}'")


def check_all(username: str, permission: PermissionLike | None, checks: Iterable[Check]) -> AccessRefused | None:
    """The first refusal among `checks`, in order, or None if all pass."""
    for check in checks:
        refused = check_resource_access(username, permission, check.resource, check.access)
        if refused is not None:
            return refused
    return None


# Which AMQP operation needs which permission (rabbit_channel.erl), in RabbitMQ's order.


def checks_for_publish(vhost: str, exchange: str) -> tuple[Check, ...]:
    return (Check(Resource(vhost, Kind.EXCHANGE, exchange), Access.WRITE),)


def checks_for_consume(vhost: str, queue: str) -> tuple[Check, ...]:
    """basic.consume and basic.get."""
    return (Check(Resource(vhost, Kind.QUEUE, queue), Access.READ),)


checks_for_get = checks_for_consume


def checks_for_queue_purge(vhost: str, queue: str) -> tuple[Check, ...]:
    return (Check(Resource(vhost, Kind.QUEUE, queue), Access.READ),)


def checks_for_queue_declare(
    vhost: str, queue: str, *, passive: bool, creates: bool, dead_letter_exchange: str | None = None
) -> tuple[Check, ...]:
    """A passive declare needs nothing. Declaring a queue that does not exist yet
    with a dead-letter exchange also needs read on the queue and write on the DLX."""
    if passive:
        return ()
    q = Resource(vhost, Kind.QUEUE, queue)
    checks = [Check(q, Access.CONFIGURE)]
    if creates and dead_letter_exchange is not None:
        checks += [Check(q, Access.READ), Check(Resource(vhost, Kind.EXCHANGE, dead_letter_exchange), Access.WRITE)]
    return tuple(checks)


def checks_for_queue_delete(vhost: str, queue: str) -> tuple[Check, ...]:
    return (Check(Resource(vhost, Kind.QUEUE, queue), Access.CONFIGURE),)


def checks_for_exchange_declare(
    vhost: str, exchange: str, *, passive: bool, creates: bool, alternate_exchange: str | None = None
) -> tuple[Check, ...]:
    """As queue.declare, with the alternate exchange in the DLX's place."""
    if passive:
        return ()
    x = Resource(vhost, Kind.EXCHANGE, exchange)
    checks = [Check(x, Access.CONFIGURE)]
    if creates and alternate_exchange is not None:
        checks += [Check(x, Access.READ), Check(Resource(vhost, Kind.EXCHANGE, alternate_exchange), Access.WRITE)]
    return tuple(checks)


def checks_for_exchange_delete(vhost: str, exchange: str) -> tuple[Check, ...]:
    return (Check(Resource(vhost, Kind.EXCHANGE, exchange), Access.CONFIGURE),)


def checks_for_bind(vhost: str, source: str, destination_kind: Kind, destination: str) -> tuple[Check, ...]:
    """queue.bind/unbind and exchange.bind/unbind: write on the destination, then read on the source."""
    return (
        Check(Resource(vhost, destination_kind, destination), Access.WRITE),
        Check(Resource(vhost, Kind.EXCHANGE, source), Access.READ),
    )


checks_for_unbind = checks_for_bind


def default_exchange_refusal(exchange: str) -> AccessRefused | None:
    """Declaring, deleting or binding the default exchange is refused before any permission check."""
    if exchange == "":
        return _access_refused("operation not permitted on the default exchange")
    return None


# --------------------------------------------------------------------------
# Topic permissions: a second regex on routing keys for topic exchanges.


def expand_topic_permission(pattern: str, variables: Mapping[str, str]) -> str:
    """Replace "{name}" by its value; plain text substitution, values are not regex-escaped (as RabbitMQ)."""
    for key, value in variables.items():
        pattern = pattern.replace("{" + key + "}", value)
    return pattern


def topic_variables(username: str, vhost: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """{username} and {vhost}, plus protocol context such as MQTT's {client_id}; ours win on a clash."""
    variables = dict(extra or {})
    variables.update(username=username, vhost=vhost)
    return variables


def check_topic_access(
    username: str,
    topic_permission: TopicPermissionLike | None,
    *,
    vhost: str,
    exchange: str,
    exchange_type: str,
    routing_key: str,
    access: Access,
    context: Mapping[str, str] | None = None,
) -> AccessRefused | None:
    """Topic authorisation for one routing key.

    Applies only to topic exchanges. `topic_permission` is the user's record for
    (vhost, exchange); without one, everything is allowed (RabbitMQ's default).
    Publishing needs write for every routing key (the message's own plus CC/BCC);
    binding needs read for the binding key.
    """
    assert access is not Access.CONFIGURE, "topic permissions are write or read"
    if exchange_type != "topic" or topic_permission is None:
        return None
    pattern = getattr(topic_permission, access.value)
    expanded = expand_topic_permission(pattern, topic_variables(username, vhost, context))
    if regex_grants(expanded, routing_key):
        return None
    return _access_refused(
        f"access to topic '{routing_key}' in exchange '{exchange}' in vhost '{vhost}' "
        f"refused for user '{username}'"
    )


def check_publish_topics(
    username: str,
    topic_permission: TopicPermissionLike | None,
    *,
    vhost: str,
    exchange: str,
    exchange_type: str,
    routing_keys: Sequence[str],
    context: Mapping[str, str] | None = None,
) -> AccessRefused | None:
    for key in routing_keys:
        refused = check_topic_access(
            username,
            topic_permission,
            vhost=vhost,
            exchange=exchange,
            exchange_type=exchange_type,
            routing_key=key,
            access=Access.WRITE,
            context=context,
        )
        if refused is not None:
            return refused
    return None
