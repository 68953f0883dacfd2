"""AMQP 0-9-1 as RabbitMQ speaks it: frame constants, reply codes, and one record per method.

Pure data, no I/O. The codec (`broker.amqp.codec`) reads each method's `ARGUMENTS`
(the wire domains of its fields, in spec order) to encode and decode it, so this
file is the single place the method catalogue is written down.

Sources: the AMQP 0-9-1 specification (amqp0-9-1.xml) with RabbitMQ's errata and
extensions (basic.nack, confirm.*, exchange.bind/unbind, connection.blocked/
unblocked/update-secret). Field names are the spec's argument names in
snake_case; `global` becomes `global_` because it is a Python keyword, and
`exchange.declare`'s `type` keeps its name. Reserved arguments keep their
historical names (`ticket`, `capabilities`, `insist`, `known_hosts`,
`out_of_band`, `channel_id`, `cluster_id`) so the wire format stays complete.

Wire domains used in `ARGUMENTS`: "octet" (u8), "short" (u16), "long" (u32),
"longlong" (u64), "bit" (packed into octets with neighbouring bits),
"shortstr" (u8 length + UTF-8), "longstr" (u32 length + bytes, kept as `bytes`),
"table" (field table, a `dict`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, TypeVar

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE
# Type (1) + channel (2) + size (4) before the payload, frame-end (1) after it.
FRAME_OVERHEAD = 8
# The spec's floor for frame_max: both peers must accept frames this large before tuning.
FRAME_MIN_SIZE = 4096

# Class ids.
CLASS_CONNECTION = 10
CLASS_CHANNEL = 20
CLASS_EXCHANGE = 40
CLASS_QUEUE = 50
CLASS_BASIC = 60
CLASS_CONFIRM = 85
CLASS_TX = 90

# Reply codes (spec section 1.2 constants plus RabbitMQ's use of them).
REPLY_SUCCESS = 200
CONTENT_TOO_LARGE = 311
NO_ROUTE = 312
NO_CONSUMERS = 313
CONNECTION_FORCED = 320
INVALID_PATH = 402
ACCESS_REFUSED = 403
NOT_FOUND = 404
RESOURCE_LOCKED = 405
PRECONDITION_FAILED = 406
FRAME_ERROR = 501
SYNTAX_ERROR = 502
COMMAND_INVALID = 503
CHANNEL_ERROR = 504
UNEXPECTED_FRAME = 505
RESOURCE_ERROR = 506
NOT_ALLOWED = 530
NOT_IMPLEMENTED = 540
INTERNAL_ERROR = 541

REPLY_NAMES: dict[int, str] = {
    REPLY_SUCCESS: "REPLY_SUCCESS",
    CONTENT_TOO_LARGE: "CONTENT_TOO_LARGE",
    NO_ROUTE: "NO_ROUTE",
    NO_CONSUMERS: "NO_CONSUMERS",
    CONNECTION_FORCED: "CONNECTION_FORCED",
    INVALID_PATH: "INVALID_PATH",
    ACCESS_REFUSED: "ACCESS_REFUSED",
    NOT_FOUND: "NOT_FOUND",
    RESOURCE_LOCKED: "RESOURCE_LOCKED",
    PRECONDITION_FAILED: "PRECONDITION_FAILED",
    FRAME_ERROR: "FRAME_ERROR",
    SYNTAX_ERROR: "SYNTAX_ERROR",
    COMMAND_INVALID: "COMMAND_INVALID",
    CHANNEL_ERROR: "CHANNEL_ERROR",
    UNEXPECTED_FRAME: "UNEXPECTED_FRAME",
    RESOURCE_ERROR: "RESOURCE_ERROR",
    NOT_ALLOWED: "NOT_ALLOWED",
    NOT_IMPLEMENTED: "NOT_IMPLEMENTED",
    INTERNAL_ERROR: "INTERNAL_ERROR",
}

# Codes that close the whole connection (connection.close) rather than one channel.
HARD_ERRORS: frozenset[int] = frozenset(
    {
        CONNECTION_FORCED,
        INVALID_PATH,
        FRAME_ERROR,
        SYNTAX_ERROR,
        COMMAND_INVALID,
        CHANNEL_ERROR,
        UNEXPECTED_FRAME,
        RESOURCE_ERROR,
        NOT_ALLOWED,
        NOT_IMPLEMENTED,
        INTERNAL_ERROR,
    }
)


def reply_text(code: int, detail: str) -> str:
    """RabbitMQ's reply-text shape: "NOT_FOUND - no queue 'x' in vhost '/'"."""
    return f"{REPLY_NAMES[code]} - {detail}"


class Method:
    """Base of every method record. Subclasses are slotted dataclasses; the
    class-level attributes below are filled in by `_method`."""

    __slots__ = ()

    CLASS_ID: ClassVar[int]
    METHOD_ID: ClassVar[int]
    NAME: ClassVar[str]
    # True when the sender waits for a reply method (spec "synchronous" requests).
    SYNCHRONOUS: ClassVar[bool]
    # True when a content header and body frames follow the method frame.
    HAS_CONTENT: ClassVar[bool]
    # Wire domain of each dataclass field, in field (= spec) order.
    ARGUMENTS: ClassVar[tuple[str, ...]]
    # Names of the fields, in the same order as ARGUMENTS.
    FIELD_NAMES: ClassVar[tuple[str, ...]]


METHODS: dict[tuple[int, int], type[Method]] = {}
METHODS_BY_NAME: dict[str, type[Method]] = {}

_M = TypeVar("_M", bound=type[Method])
_DOMAINS = frozenset({"octet", "short", "long", "longlong", "bit", "shortstr", "longstr", "table"})


def _method(
    class_id: int, method_id: int, name: str, arguments: str = "", *, sync: bool = False, content: bool = False
) -> Callable[[_M], _M]:
    """Attach the spec facts to a method record and register it in METHODS."""

    def register(cls: _M) -> _M:
        domains = tuple(arguments.split())
        names = tuple(cls.__dataclass_fields__)  # type: ignore[attr-defined]
        assert len(domains) == len(names), (name, domains, names)
        assert set(domains) <= _DOMAINS, domains
        cls.CLASS_ID = class_id
        cls.METHOD_ID = method_id
        cls.NAME = name
        cls.SYNCHRONOUS = sync
        cls.HAS_CONTENT = content
        cls.ARGUMENTS = domains
        cls.FIELD_NAMES = names
        assert (class_id, method_id) not in METHODS
        METHODS[(class_id, method_id)] = cls
        METHODS_BY_NAME[name] = cls
        return cls

    return register


def _table() -> Any:
    return field(default_factory=dict)


# --- connection (class 10) -------------------------------------------------------------


@_method(10, 10, "connection.start", "octet octet table longstr longstr", sync=True)
@dataclass(slots=True)
class ConnectionStart(Method):
    version_major: int = 0
    version_minor: int = 9
    server_properties: dict[str, Any] = _table()
    mechanisms: bytes = b"PLAIN"
    locales: bytes = b"en_US"


@_method(10, 11, "connection.start-ok", "table shortstr longstr shortstr")
@dataclass(slots=True)
class ConnectionStartOk(Method):
    client_properties: dict[str, Any] = _table()
    mechanism: str = "PLAIN"
    response: bytes = b""
    locale: str = "en_US"


@_method(10, 20, "connection.secure", "longstr", sync=True)
@dataclass(slots=True)
class ConnectionSecure(Method):
    challenge: bytes = b""


@_method(10, 21, "connection.secure-ok", "longstr")
@dataclass(slots=True)
class ConnectionSecureOk(Method):
    response: bytes = b""


@_method(10, 30, "connection.tune", "short long short", sync=True)
@dataclass(slots=True)
class ConnectionTune(Method):
    channel_max: int = 0
    frame_max: int = 0
    heartbeat: int = 0


@_method(10, 31, "connection.tune-ok", "short long short")
@dataclass(slots=True)
class ConnectionTuneOk(Method):
    channel_max: int = 0
    frame_max: int = 0
    heartbeat: int = 0


@_method(10, 40, "connection.open", "shortstr shortstr bit", sync=True)
@dataclass(slots=True)
class ConnectionOpen(Method):
    virtual_host: str = "/"
    capabilities: str = ""
    insist: bool = False


@_method(10, 41, "connection.open-ok", "shortstr")
@dataclass(slots=True)
class ConnectionOpenOk(Method):
    known_hosts: str = ""


@_method(10, 50, "connection.close", "short shortstr short short", sync=True)
@dataclass(slots=True)
class ConnectionClose(Method):
    reply_code: int = 0
    reply_text: str = ""
    class_id: int = 0
    method_id: int = 0


@_method(10, 51, "connection.close-ok")
@dataclass(slots=True)
class ConnectionCloseOk(Method):
    pass


@_method(10, 60, "connection.blocked", "shortstr")
@dataclass(slots=True)
class ConnectionBlocked(Method):
    reason: str = ""


@_method(10, 61, "connection.unblocked")
@dataclass(slots=True)
class ConnectionUnblocked(Method):
    pass


@_method(10, 70, "connection.update-secret", "longstr shortstr", sync=True)
@dataclass(slots=True)
class ConnectionUpdateSecret(Method):
    new_secret: bytes = b""
    reason: str = ""


@_method(10, 71, "connection.update-secret-ok")
@dataclass(slots=True)
class ConnectionUpdateSecretOk(Method):
    pass


# --- channel (class 20) ----------------------------------------------------------------


@_method(20, 10, "channel.open", "shortstr", sync=True)
@dataclass(slots=True)
class ChannelOpen(Method):
    out_of_band: str = ""


@_method(20, 11, "channel.open-ok", "longstr")
@dataclass(slots=True)
class ChannelOpenOk(Method):
    channel_id: bytes = b""


@_method(20, 20, "channel.flow", "bit", sync=True)
@dataclass(slots=True)
class ChannelFlow(Method):
    active: bool = True


@_method(20, 21, "channel.flow-ok", "bit")
@dataclass(slots=True)
class ChannelFlowOk(Method):
    active: bool = True


@_method(20, 40, "channel.close", "short shortstr short short", sync=True)
@dataclass(slots=True)
class ChannelClose(Method):
    reply_code: int = 0
    reply_text: str = ""
    class_id: int = 0
    method_id: int = 0


@_method(20, 41, "channel.close-ok")
@dataclass(slots=True)
class ChannelCloseOk(Method):
    pass


# --- exchange (class 40) ---------------------------------------------------------------


@_method(40, 10, "exchange.declare", "short shortstr shortstr bit bit bit bit bit table", sync=True)
@dataclass(slots=True)
class ExchangeDeclare(Method):
    ticket: int = 0
    exchange: str = ""
    type: str = "direct"
    passive: bool = False
    durable: bool = False
    auto_delete: bool = False
    internal: bool = False
    nowait: bool = False
    arguments: dict[str, Any] = _table()


@_method(40, 11, "exchange.declare-ok")
@dataclass(slots=True)
class ExchangeDeclareOk(Method):
    pass


@_method(40, 20, "exchange.delete", "short shortstr bit bit", sync=True)
@dataclass(slots=True)
class ExchangeDelete(Method):
    ticket: int = 0
    exchange: str = ""
    if_unused: bool = False
    nowait: bool = False


@_method(40, 21, "exchange.delete-ok")
@dataclass(slots=True)
class ExchangeDeleteOk(Method):
    pass


@_method(40, 30, "exchange.bind", "short shortstr shortstr shortstr bit table", sync=True)
@dataclass(slots=True)
class ExchangeBind(Method):
    ticket: int = 0
    destination: str = ""
    source: str = ""
    routing_key: str = ""
    nowait: bool = False
    arguments: dict[str, Any] = _table()


@_method(40, 31, "exchange.bind-ok")
@dataclass(slots=True)
class ExchangeBindOk(Method):
    pass


@_method(40, 40, "exchange.unbind", "short shortstr shortstr shortstr bit table", sync=True)
@dataclass(slots=True)
class ExchangeUnbind(Method):
    ticket: int = 0
    destination: str = ""
    source: str = ""
    routing_key: str = ""
    nowait: bool = False
    arguments: dict[str, Any] = _table()


# 51, not 41: RabbitMQ's extension numbering (the spec never defined exchange.unbind).
@_method(40, 51, "exchange.unbind-ok")
@dataclass(slots=True)
class ExchangeUnbindOk(Method):
    pass


# --- queue (class 50) ------------------------------------------------------------------


@_method(50, 10, "queue.declare", "short shortstr bit bit bit bit bit table", sync=True)
@dataclass(slots=True)
class QueueDeclare(Method):
    ticket: int = 0
    queue: str = ""
    passive: bool = False
    durable: bool = False
    exclusive: bool = False
    auto_delete: bool = False
    nowait: bool = False
    arguments: dict[str, Any] = _table()


@_method(50, 11, "queue.declare-ok", "shortstr long long")
@dataclass(slots=True)
class QueueDeclareOk(Method):
    queue: str = ""
    message_count: int = 0
    consumer_count: int = 0


@_method(50, 20, "queue.bind", "short shortstr shortstr shortstr bit table", sync=True)
@dataclass(slots=True)
class QueueBind(Method):
    ticket: int = 0
    queue: str = ""
    exchange: str = ""
    routing_key: str = ""
    nowait: bool = False
    arguments: dict[str, Any] = _table()


@_method(50, 21, "queue.bind-ok")
@dataclass(slots=True)
class QueueBindOk(Method):
    pass


@_method(50, 30, "queue.purge", "short shortstr bit", sync=True)
@dataclass(slots=True)
class QueuePurge(Method):
    ticket: int = 0
    queue: str = ""
    nowait: bool = False


@_method(50, 31, "queue.purge-ok", "long")
@dataclass(slots=True)
class QueuePurgeOk(Method):
    message_count: int = 0


@_method(50, 40, "queue.delete", "short shortstr bit bit bit", sync=True)
@dataclass(slots=True)
class QueueDelete(Method):
    ticket: int = 0
    queue: str = ""
    if_unused: bool = False
    if_empty: bool = False
    nowait: bool = False


@_method(50, 41, "queue.delete-ok", "long")
@dataclass(slots=True)
class QueueDeleteOk(Method):
    message_count: int = 0


@_method(50, 50, "queue.unbind", "short shortstr shortstr shortstr table", sync=True)
@dataclass(slots=True)
class QueueUnbind(Method):
    ticket: int = 0
    queue: str = ""
    exchange: str = ""
    routing_key: str = ""
    arguments: dict[str, Any] = _table()


@_method(50, 51, "queue.unbind-ok")
@dataclass(slots=True)
class QueueUnbindOk(Method):
    pass


# --- basic (class 60) ------------------------------------------------------------------


@_method(60, 10, "basic.qos", "long short bit", sync=True)
@dataclass(slots=True)
class BasicQos(Method):
    prefetch_size: int = 0
    prefetch_count: int = 0
    global_: bool = False


@_method(60, 11, "basic.qos-ok")
@dataclass(slots=True)
class BasicQosOk(Method):
    pass


@_method(60, 20, "basic.consume", "short shortstr shortstr bit bit bit bit table", sync=True)
@dataclass(slots=True)
class BasicConsume(Method):
    ticket: int = 0
    queue: str = ""
    consumer_tag: str = ""
    no_local: bool = False
    no_ack: bool = False
    exclusive: bool = False
    nowait: bool = False
    arguments: dict[str, Any] = _table()


@_method(60, 21, "basic.consume-ok", "shortstr")
@dataclass(slots=True)
class BasicConsumeOk(Method):
    consumer_tag: str = ""


@_method(60, 30, "basic.cancel", "shortstr bit", sync=True)
@dataclass(slots=True)
class BasicCancel(Method):
    consumer_tag: str = ""
    nowait: bool = False


@_method(60, 31, "basic.cancel-ok", "shortstr")
@dataclass(slots=True)
class BasicCancelOk(Method):
    consumer_tag: str = ""


@_method(60, 40, "basic.publish", "short shortstr shortstr bit bit", content=True)
@dataclass(slots=True)
class BasicPublish(Method):
    ticket: int = 0
    exchange: str = ""
    routing_key: str = ""
    mandatory: bool = False
    immediate: bool = False


@_method(60, 50, "basic.return", "short shortstr shortstr shortstr", content=True)
@dataclass(slots=True)
class BasicReturn(Method):
    reply_code: int = 0
    reply_text: str = ""
    exchange: str = ""
    routing_key: str = ""


@_method(60, 60, "basic.deliver", "shortstr longlong bit shortstr shortstr", content=True)
@dataclass(slots=True)
class BasicDeliver(Method):
    consumer_tag: str = ""
    delivery_tag: int = 0
    redelivered: bool = False
    exchange: str = ""
    routing_key: str = ""


@_method(60, 70, "basic.get", "short shortstr bit", sync=True)
@dataclass(slots=True)
class BasicGet(Method):
    ticket: int = 0
    queue: str = ""
    no_ack: bool = False


@_method(60, 71, "basic.get-ok", "longlong bit shortstr shortstr long", content=True)
@dataclass(slots=True)
class BasicGetOk(Method):
    delivery_tag: int = 0
    redelivered: bool = False
    exchange: str = ""
    routing_key: str = ""
    message_count: int = 0


@_method(60, 72, "basic.get-empty", "shortstr")
@dataclass(slots=True)
class BasicGetEmpty(Method):
    cluster_id: str = ""


@_method(60, 80, "basic.ack", "longlong bit")
@dataclass(slots=True)
class BasicAck(Method):
    delivery_tag: int = 0
    multiple: bool = False


@_method(60, 90, "basic.reject", "longlong bit")
@dataclass(slots=True)
class BasicReject(Method):
    delivery_tag: int = 0
    requeue: bool = True


@_method(60, 100, "basic.recover-async", "bit")
@dataclass(slots=True)
class BasicRecoverAsync(Method):
    requeue: bool = False


@_method(60, 110, "basic.recover", "bit", sync=True)
@dataclass(slots=True)
class BasicRecover(Method):
    requeue: bool = False


@_method(60, 111, "basic.recover-ok")
@dataclass(slots=True)
class BasicRecoverOk(Method):
    pass


@_method(60, 120, "basic.nack", "longlong bit bit")
@dataclass(slots=True)
class BasicNack(Method):
    delivery_tag: int = 0
    multiple: bool = False
    requeue: bool = True


# --- confirm (class 85) ----------------------------------------------------------------


@_method(85, 10, "confirm.select", "bit", sync=True)
@dataclass(slots=True)
class ConfirmSelect(Method):
    nowait: bool = False


@_method(85, 11, "confirm.select-ok")
@dataclass(slots=True)
class ConfirmSelectOk(Method):
    pass


# --- tx (class 90) ---------------------------------------------------------------------


@_method(90, 10, "tx.select", sync=True)
@dataclass(slots=True)
class TxSelect(Method):
    pass


@_method(90, 11, "tx.select-ok")
@dataclass(slots=True)
class TxSelectOk(Method):
    pass


@_method(90, 20, "tx.commit", sync=True)
@dataclass(slots=True)
class TxCommit(Method):
    pass


@_method(90, 21, "tx.commit-ok")
@dataclass(slots=True)
class TxCommitOk(Method):
    pass


@_method(90, 30, "tx.rollback", sync=True)
@dataclass(slots=True)
class TxRollback(Method):
    pass


@_method(90, 31, "tx.rollback-ok")
@dataclass(slots=True)
class TxRollbackOk(Method):
    pass


# --- content properties ----------------------------------------------------------------


@dataclass(slots=True)
class BasicProperties:
    """The basic class's 14 content properties; None means "absent" (flag bit clear).

    `timestamp` is the raw 64-bit seconds value as an int (RabbitMQ keeps it
    as an integer too; a client sending milliseconds must not make us fail).
    """

    content_type: str | None = None
    content_encoding: str | None = None
    headers: dict[str, Any] | None = None
    delivery_mode: int | None = None
    priority: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    expiration: str | None = None
    message_id: str | None = None
    timestamp: int | None = None
    type: str | None = None
    user_id: str | None = None
    app_id: str | None = None
    cluster_id: str | None = None


# (field name, wire domain, flag bit), in spec order: the first property owns bit 15.
BASIC_PROPERTIES: tuple[tuple[str, str, int], ...] = tuple(
    (name, domain, 1 << (15 - i))
    for i, (name, domain) in enumerate(
        (
            ("content_type", "shortstr"),
            ("content_encoding", "shortstr"),
            ("headers", "table"),
            ("delivery_mode", "octet"),
            ("priority", "octet"),
            ("correlation_id", "shortstr"),
            ("reply_to", "shortstr"),
            ("expiration", "shortstr"),
            ("message_id", "shortstr"),
            ("timestamp", "longlong"),
            ("type", "shortstr"),
            ("user_id", "shortstr"),
            ("app_id", "shortstr"),
            ("cluster_id", "shortstr"),
        )
    )
)

# Classes whose methods may carry content; a header frame for any other class is a frame error.
CONTENT_CLASSES: frozenset[int] = frozenset({CLASS_BASIC})
