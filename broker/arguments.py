"""Queue arguments: validating `queue.declare` / `basic.consume` arguments and per-message
expiration with RabbitMQ's exact errors, and combining arguments with policies into the
effective `QueueSettings` a queue runs with.

Pure: values in, `Refusal` values or settings out.

Validation follows RabbitMQ 3.10 (`rabbit_amqqueue:declare_args/0`,
`consume_args/0` and their `check_*` functions). RabbitMQ formats the failing
check's error term with Erlang's `~p`, so the texts here reproduce that
rendering: atoms bare, strings in double quotes, tuples as `{a,b}`::

    PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue 'q' in vhost '/': {max_value_exceeded,256}

Field-table values arrive as Python values (the codec drops the AMQP type tag),
so the AMQP type named in an error is inferred from the Python type: str/bytes
are `longstr`, bool is `bool`, float is `double`, dict `table`, list `array`,
None `void`. Unknown `x-` arguments (and non-`x-` ones) are accepted and ignored,
as RabbitMQ does.

`x-queue-type`: "classic" and "quorum" are accepted. Every Leveret queue is
already a replicated log whose replica count comes from policy, so a quorum
queue is served as such a queue. Its delivery limit (x-delivery-limit, policy key
`delivery-limit`) is kept in `QueueSettings.delivery_limit` and enforced by
`broker.queue` for quorum queues only; at-most-once/at-least-once dead-lettering
is not implemented. RabbitMQ 3.10.8 does not validate x-delivery-limit at all
(measured: -1, "abc" and true are all accepted for a quorum queue); rabbit_fifo
then compares the count with the value in Erlang term order, where every number
sorts below any non-number, so an integer limits (a negative one as much as 0)
and anything else does not. `QueueSettings.effective` keeps only integers for
the same outcome. What RabbitMQ
refuses for a quorum queue is refused here too, with its texts: a server-named,
auto-delete, exclusive or non-durable one, x-max-priority and x-queue-mode
(`check_quorum_declare`), and a consumer under global qos (the session). "stream" is
refused with RabbitMQ's own text for an unsupported type, since non-destructive
offset consumption does not exist here.

Combination with policies follows `rabbit_amqqueue_process:process_args_policy/1`
and `rabbit_queue_type_util:args_policy_lookup/3`: when both the argument and the
policy set a key, the lower value wins for expires, message-ttl, max-length and
max-length-bytes and delivery-limit; the argument wins for dead-letter-exchange,
dead-letter-routing-key, overflow and queue-mode. An operator policy merges with
the user policy by taking the lower value of the numeric limits
(`rabbit_policy:merge_policy_value/3`). x-max-priority and
x-single-active-consumer come from arguments only (3.10 has no policy keys for
them).

`Refusal` here has the same shape as `cluster.metadata.Refusal` (code, text);
`text` is the full reply text ("PRECONDITION_FAILED - ...").
"""

from __future__ import annotations

import datetime
import decimal
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

from broker.amqp.spec import ACCESS_REFUSED, PRECONDITION_FAILED, reply_text

# rabbit_misc:check_expiry/1 in RabbitMQ 3.10: ten years in milliseconds (measured
# against 3.10.8: 315360000000 is accepted, one more is {value_too_large,_}).
MAX_EXPIRY_MS = 315_360_000_000
MAX_SUPPORTED_PRIORITY = 255

OVERFLOW_DROP_HEAD = "drop-head"
OVERFLOW_REJECT_PUBLISH = "reject-publish"
OVERFLOW_REJECT_PUBLISH_DLX = "reject-publish-dlx"
OVERFLOW_MODES = (OVERFLOW_DROP_HEAD, OVERFLOW_REJECT_PUBLISH, OVERFLOW_REJECT_PUBLISH_DLX)
QUEUE_MODES = ("default", "lazy")
KNOWN_QUEUE_TYPES = ("classic", "quorum", "stream")
SERVED_QUEUE_TYPES = ("classic", "quorum")


@dataclass(frozen=True, slots=True)
class Refusal:
    """An AMQP error as a value: reply code and full reply text."""

    code: int
    text: str


# --- Erlang ~p rendering of the error terms -------------------------------------------


class _Atom(str):
    """An Erlang atom: printed bare by `_erl`."""


def _erl(term: Any) -> str:
    if isinstance(term, _Atom):
        return str(term)
    if isinstance(term, bool):
        return "true" if term else "false"
    if isinstance(term, int):
        return str(term)
    if isinstance(term, str):
        escaped = term.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(term, tuple):
        return "{" + ",".join(_erl(t) for t in term) + "}"
    raise AssertionError(f"no Erlang rendering for {term!r}")


def amqp_type_name(value: Any) -> str:
    """The AMQP field type a decoded table value most likely had (RabbitMQ's type atom)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        # Clients (pika, RabbitMQ's own writer, our codec) send 'I' when it fits, else 'l'.
        return "signedint" if -(2**31) <= value < 2**31 else "long"
    if isinstance(value, str):
        return "longstr"
    if isinstance(value, (bytes, bytearray)):
        return "binary"
    if isinstance(value, float):
        return "double"
    if isinstance(value, decimal.Decimal):
        return "decimal"
    if isinstance(value, datetime.datetime):
        return "timestamp"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, (list, tuple)):
        return "array"
    if value is None:
        return "void"
    return "longstr"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_text(value: Any) -> str | None:
    """A longstr argument's text; the codec gives longstr as str ('x' byte arrays are bytes,
    which RabbitMQ refuses where it wants a string)."""
    return value if isinstance(value, str) else None


def queue_resource(queue: str, vhost: str) -> str:
    """rabbit_misc:rs/1 for a queue."""
    return f"queue '{queue}' in vhost '{vhost}'"


# --- the checks: each returns None (ok) or the Erlang error term -----------------------

_Check = Callable[[Any, Mapping[str, Any]], Any]


def _check_int(value: Any, _args: Mapping[str, Any]) -> Any:
    if _is_int(value):
        return None
    return f"expected integer, got {amqp_type_name(value)}"


def _check_non_neg_int(value: Any, args: Mapping[str, Any]) -> Any:
    error = _check_int(value, args)
    if error is not None:
        return error
    return None if value >= 0 else (_Atom("value_negative"), value)


def _check_expiry(value: int) -> Any:
    if value > MAX_EXPIRY_MS:
        return (_Atom("value_too_large"), value)
    if value < 0:
        return (_Atom("value_negative"), value)
    return None


def _check_expires(value: Any, args: Mapping[str, Any]) -> Any:
    error = _check_int(value, args)
    if error is not None:
        return error
    if value == 0:
        return (_Atom("value_zero"), value)
    return _check_expiry(value)


def _check_message_ttl(value: Any, args: Mapping[str, Any]) -> Any:
    error = _check_int(value, args)
    if error is not None:
        return error
    return _check_expiry(value)


def _check_max_priority(value: Any, args: Mapping[str, Any]) -> Any:
    error = _check_non_neg_int(value, args)
    if error is not None:
        return error
    if value > MAX_SUPPORTED_PRIORITY:
        return (_Atom("max_value_exceeded"), value)
    return None


def _check_bool(value: Any, _args: Mapping[str, Any]) -> Any:
    if isinstance(value, bool):
        return None
    return (_Atom("unacceptable_type"), _Atom(amqp_type_name(value)))


def _check_dlx_name(value: Any, _args: Mapping[str, Any]) -> Any:
    if _as_text(value) is not None:
        return None
    return (_Atom("unacceptable_type"), _Atom(amqp_type_name(value)))


def _check_dlx_routing_key(value: Any, args: Mapping[str, Any]) -> Any:
    if _as_text(value) is None:
        return (_Atom("unacceptable_type"), _Atom(amqp_type_name(value)))
    if "x-dead-letter-exchange" not in args:
        return _Atom("routing_key_but_no_dlx_defined")
    return None


def _check_overflow(value: Any, _args: Mapping[str, Any]) -> Any:
    text = _as_text(value)
    if text is None:
        return (_Atom("unacceptable_type"), _Atom(amqp_type_name(value)))
    return None if text in OVERFLOW_MODES else _Atom("invalid_overflow")


def _check_queue_mode(value: Any, _args: Mapping[str, Any]) -> Any:
    text = _as_text(value)
    if text is None:
        return (_Atom("unacceptable_type"), _Atom(amqp_type_name(value)))
    return None if text in QUEUE_MODES else f"unsupported queue mode '{text}'"


def _check_queue_type(value: Any, _args: Mapping[str, Any]) -> Any:
    text = _as_text(value)
    if text is None:
        return (_Atom("unacceptable_type"), _Atom(amqp_type_name(value)))
    # "stream" is a type RabbitMQ knows but Leveret does not serve (see module docstring).
    return None if text in SERVED_QUEUE_TYPES else f"unsupported queue type '{text}'"


def _check_initial_group_size(value: Any, args: Mapping[str, Any]) -> Any:
    error = _check_non_neg_int(value, args)
    if error is not None:
        return error
    return (_Atom("value_zero"), value) if value == 0 else None


# In RabbitMQ's order: the first failing argument in this order is the one reported.
DECLARE_CHECKS: tuple[tuple[str, _Check], ...] = (
    ("x-expires", _check_expires),
    ("x-message-ttl", _check_message_ttl),
    ("x-dead-letter-exchange", _check_dlx_name),
    ("x-dead-letter-routing-key", _check_dlx_routing_key),
    ("x-max-length", _check_non_neg_int),
    ("x-max-length-bytes", _check_non_neg_int),
    ("x-max-in-memory-length", _check_non_neg_int),
    ("x-max-in-memory-bytes", _check_non_neg_int),
    ("x-max-priority", _check_max_priority),
    ("x-overflow", _check_overflow),
    ("x-queue-mode", _check_queue_mode),
    ("x-single-active-consumer", _check_bool),
    ("x-queue-type", _check_queue_type),
    ("x-quorum-initial-group-size", _check_initial_group_size),
)

CONSUME_CHECKS: tuple[tuple[str, _Check], ...] = (
    ("x-priority", _check_int),
    ("x-cancel-on-ha-failover", _check_bool),
)


def _refuse(detail: str) -> Refusal:
    return Refusal(PRECONDITION_FAILED, reply_text(PRECONDITION_FAILED, detail))


# rabbit_quorum_queue's arguments that a quorum queue refuses outright, whatever their value.
QUORUM_INVALID_ARGUMENTS = ("x-max-priority", "x-queue-mode")
# The queue type as RabbitMQ 3.10.8 names it in its refusals (the module, printed with ~tp).
_QUORUM_TYPE_NAME = "rabbit_quorum_queue"


def is_quorum(arguments: Mapping[str, Any] | None) -> bool:
    return arguments is not None and _as_text(arguments.get("x-queue-type")) == "quorum"


def server_named_refusal(arguments: Mapping[str, Any] | None) -> Refusal | None:
    """rabbit_channel checks `is_server_named_allowed` before anything else about an
    empty queue name: a quorum queue must be named by its client."""
    if is_quorum(arguments):
        return _refuse(f"Cannot declare a server-named queue for type {_QUORUM_TYPE_NAME}")
    return None


def check_quorum_declare(
    queue: str, vhost: str, arguments: Mapping[str, Any] | None, *, durable: bool, exclusive: bool, auto_delete: bool
) -> Refusal | None:
    """rabbit_quorum_queue:declare/2's checks on a new quorum queue, in its order: the
    arguments it refuses (the first one in the client's table), then auto-delete, an
    exclusive owner, and a non-durable queue. They run after the generic argument
    checks, which skip QUORUM_INVALID_ARGUMENTS for a quorum queue (so a malformed
    x-max-priority is reported as refused by the queue type, as RabbitMQ does)."""
    if not is_quorum(arguments):
        return None
    assert arguments is not None
    resource = queue_resource(queue, vhost)
    for key in arguments:
        if key in QUORUM_INVALID_ARGUMENTS:
            return _refuse(f"invalid arg '{key}' for {resource} of queue type {_QUORUM_TYPE_NAME}")
    for refused, prop in ((auto_delete, "auto-delete"), (exclusive, "exclusive-owner"), (not durable, "non-durable")):
        if refused:
            return _refuse(f"invalid property '{prop}' for {resource}")
    return None


def _check_arguments(
    queue: str, vhost: str, arguments: Mapping[str, Any] | None, checks: tuple[tuple[str, _Check], ...]
) -> Refusal | None:
    if not arguments:
        return None
    skipped = QUORUM_INVALID_ARGUMENTS if is_quorum(arguments) else ()
    for key, check in checks:
        if key not in arguments or key in skipped:
            continue
        error = check(arguments[key], arguments)
        if error is not None:
            return _refuse(f"invalid arg '{key}' for {queue_resource(queue, vhost)}: {_erl(error)}")
    return None


def check_declare_arguments(queue: str, vhost: str, arguments: Mapping[str, Any] | None) -> Refusal | None:
    """None if `queue.declare` may use these arguments, else RabbitMQ's 406 refusal.

    rabbit_channel resolves x-dead-letter-exchange as an exchange name before the
    queue checks run, so a non-string one fails first, with the channel's wording.
    (The channel also needs read permission on the queue and write permission on
    that exchange; that is the channel's business.)
    """
    if arguments and "x-dead-letter-exchange" in arguments:
        dlx = arguments["x-dead-letter-exchange"]
        if not isinstance(dlx, str):
            return _refuse(
                f"invalid type '{amqp_type_name(dlx)}' for arg 'x-dead-letter-exchange' "
                f"in {queue_resource(queue, vhost)}"
            )
    return _check_arguments(queue, vhost, arguments, DECLARE_CHECKS)


def check_consume_arguments(queue: str, vhost: str, arguments: Mapping[str, Any] | None) -> Refusal | None:
    """None if `basic.consume` may use these arguments, else RabbitMQ's 406 refusal."""
    return _check_arguments(queue, vhost, arguments, CONSUME_CHECKS)


def exclusive_use_refusal(queue: str, vhost: str) -> Refusal:
    """basic.consume on a queue held by an exclusive consumer (or exclusive on a used queue)."""
    return Refusal(ACCESS_REFUSED, reply_text(ACCESS_REFUSED, f"{queue_resource(queue, vhost)} in exclusive use"))


# --- per-message expiration --------------------------------------------------------------


def _erlang_to_integer(text: str) -> tuple[int, str] | None:
    """string:to_integer/1: optional sign then digits; the rest is returned as leftover."""
    i = 0
    if i < len(text) and text[i] in "+-":
        i += 1
    start = i
    while i < len(text) and "0" <= text[i] <= "9":
        i += 1
    if i == start:
        return None
    return int(text[:i]), text[i:]


def parse_expiration(expiration: str | bytes | None) -> int | None | Refusal:
    """The `expiration` property as milliseconds (None when absent), or the publish refusal.

    rabbit_basic:parse_expiration/1 and rabbit_channel:check_expiration_header/1:
    "PRECONDITION_FAILED - invalid expiration 'abc': no_integer".
    """
    if expiration is None:
        return None
    text = expiration.decode("utf-8", "replace") if isinstance(expiration, (bytes, bytearray)) else expiration
    parsed = _erlang_to_integer(text)
    error: Any
    if parsed is None:
        error = _Atom("no_integer")
    else:
        value, leftover = parsed
        error = (_Atom("leftover_string"), leftover) if leftover else _check_expiry(value)
        if error is None:
            return value
    detail = f"invalid expiration '{text}': {_erl(error)}"
    return _refuse(detail)


# --- effective settings -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """What one queue runs with: its arguments combined with the policies that apply to it."""

    message_ttl_ms: int | None = None
    expires_ms: int | None = None
    max_length: int | None = None
    max_length_bytes: int | None = None
    overflow: str = OVERFLOW_DROP_HEAD
    dead_letter_exchange: str | None = None
    dead_letter_routing_key: str | None = None
    # 0 means "not a priority queue" (RabbitMQ with x-max-priority absent, or 0, keeps one level).
    max_priority: int = 0
    single_active_consumer: bool = False
    queue_mode: str = "default"
    queue_type: str = "classic"
    # Quorum queues: returns after which a message is dead-lettered (reason delivery_limit)
    # instead of requeued; None for no limit. Ignored by classic queues, as RabbitMQ's are.
    delivery_limit: int | None = None

    @classmethod
    def effective(
        cls,
        arguments: Mapping[str, Any] | None,
        policy: Mapping[str, Any] | None = None,
        operator_policy: Mapping[str, Any] | None = None,
    ) -> QueueSettings:
        """Combine validated declare arguments with a policy definition (and operator policy)."""
        args = arguments or {}
        merged_policy = _merge_operator_policy(policy or {}, operator_policy or {})

        def lookup(name: str, resolve: Callable[[Any, Any], Any]) -> Any:
            arg = args.get("x-" + name)
            pol = merged_policy.get(name)
            if arg is None:
                return pol
            if pol is None:
                return arg
            return resolve(pol, arg)

        def lower(pol: Any, arg: Any) -> Any:
            return min(pol, arg)

        def argument(_pol: Any, arg: Any) -> Any:
            return arg

        dlx = lookup("dead-letter-exchange", argument)
        # Only an integer limits (see the module docstring); a non-integer argument is as
        # if absent, which is also what Erlang's min/2 makes of it beside a policy's number.
        arg_limit = args.get("x-delivery-limit")
        pol_limit = merged_policy.get("delivery-limit")
        limits = [v for v in (arg_limit, pol_limit) if _is_int(v)]
        dlrk = lookup("dead-letter-routing-key", argument)
        overflow = lookup("overflow", argument)
        mode = lookup("queue-mode", argument)
        max_priority = args.get("x-max-priority")
        sac = args.get("x-single-active-consumer")
        queue_type = args.get("x-queue-type")
        return cls(
            message_ttl_ms=lookup("message-ttl", lower),
            expires_ms=lookup("expires", lower),
            max_length=lookup("max-length", lower),
            max_length_bytes=lookup("max-length-bytes", lower),
            overflow=_as_text(overflow) or OVERFLOW_DROP_HEAD,
            dead_letter_exchange=_as_text(dlx),
            dead_letter_routing_key=_as_text(dlrk),
            max_priority=min(max_priority, MAX_SUPPORTED_PRIORITY) if _is_int(max_priority) else 0,
            single_active_consumer=sac is True,
            queue_mode=_as_text(mode) or "default",
            queue_type=_as_text(queue_type) or "classic",
            delivery_limit=min(limits) if limits else None,
        )

    def to_wire(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> QueueSettings:
        return replace(cls(), **{k: v for k, v in data.items() if k in cls.__slots__})


# rabbit_policy:merge_policy_value/3: keys an operator policy may cap, lower value wins.
# (delivery-limit too: measured against 3.10.8, an operator policy of 1 beats an argument of 3.)
_OPERATOR_MIN_KEYS = ("expires", "message-ttl", "max-length", "max-length-bytes", "delivery-limit")


def _merge_operator_policy(policy: Mapping[str, Any], operator_policy: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(policy)
    for key in _OPERATOR_MIN_KEYS:
        op = operator_policy.get(key)
        if op is None:
            continue
        mine = merged.get(key)
        merged[key] = op if mine is None else min(mine, op)
    return merged
