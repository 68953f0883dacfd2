"""Policy definitions: parsing and validation, with RabbitMQ 3.10's messages.

Pure: JSON text or a decoded mapping in, a `PolicyInvalid` (what `rabbitmqctl
set_policy` prints after "Validation failed") or the definition out. Which
policy applies to which queue or exchange (pattern, apply-to, priority) is
`cluster.metadata.MetadataState.effective_policy`; what the keys do to a queue
is `broker.arguments.QueueSettings.effective`.

The validators follow rabbit_policies:validate_policy0/2 (the queue and
exchange keys) and rabbit_mirror_queue_misc:validate_policy/1 (the ha-* keys).
RabbitMQ renders the offending value with Erlang's `~p`, so a JSON string
"x" is shown as <<"x">>, and reports the first failing key. Keys are checked in
sorted order, the way RabbitMQ's key list arrives from its JSON decoder.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from cluster.nesting import ELIDED, MAX_TABLE_DEPTH, is_container

# RabbitMQ 3.10's own apply-to values, plus the per-queue-type ones later versions added
# (the metadata state understands them).
APPLY_TO: Final = ("queues", "exchanges", "all")
APPLY_TO_EXTENDED: Final = APPLY_TO + ("classic_queues", "quorum_queues", "streams")

HA_KEYS: Final = ("ha-mode", "ha-params", "ha-sync-mode", "ha-sync-batch-size",
                  "ha-promote-on-shutdown", "ha-promote-on-failure")


@dataclass(frozen=True, slots=True)
class PolicyInvalid:
    """Why a policy was refused: the text after "Validation failed\\n\\n" (or a JSON error)."""

    text: str
    validation: bool = True  # False: the definition was not even JSON

    def message(self) -> str:
        return f"Validation failed\n\n{self.text}\n" if self.validation else self.text


def erlang_repr(value: Any, depth: int = 1) -> str:
    """A decoded JSON value as Erlang's ~p shows it (jsx decodes strings to binaries);
    `...` past the nesting bound, as a definition may nest deeper than the stack."""
    if is_container(value) and depth > MAX_TABLE_DEPTH:
        return ELIDED
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return '<<"' + value.replace("\\", "\\\\").replace('"', '\\"') + '">>'
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ",".join(erlang_repr(v, depth + 1) for v in value) + "]"
    if isinstance(value, Mapping):
        return "#{" + ",".join(f"{erlang_repr(k)} => {erlang_repr(v, depth + 1)}" for k, v in value.items()) + "}"
    return repr(value)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _non_negative(what: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if _is_int(v) and v >= 0 else f"{erlang_repr(v)} is not a valid {what}"
    return check


def _positive(what: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if _is_int(v) and v >= 1 else f"{erlang_repr(v)} is not a valid {what}"
    return check


def _text(what: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if isinstance(v, str) else f"{erlang_repr(v)} is not a valid {what}"
    return check


def _one_of(values: tuple[Any, ...], template: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if (isinstance(v, (str, int)) and not isinstance(v, bool) and v in values) \
            else template.format(erlang_repr(v))
    return check


# rabbit_policies:validate_policy0/2, key by key.
_QUEUE_AND_EXCHANGE_KEYS: Final[dict[str, Callable[[Any], str | None]]] = {
    "alternate-exchange": _text("alternate exchange name"),
    "dead-letter-exchange": _text("dead letter exchange name"),
    "dead-letter-routing-key": _text("dead letter routing key"),
    "message-ttl": _non_negative("message TTL"),
    "expires": _positive("queue expiry"),
    "max-length": _non_negative("maximum length"),
    "max-length-bytes": _non_negative("maximum length in bytes"),
    "max-in-memory-length": _non_negative("maximum memory limit"),
    "max-in-memory-bytes": _non_negative("maximum memory in bytes limit"),
    "delivery-limit": _non_negative("delivery limit"),
    "queue-mode": _one_of(("default", "lazy"), "{} is not a valid queue-mode value"),
    "queue-version": _one_of((1, 2), "{} is not a valid classic queue version"),
    "overflow": _one_of(("drop-head", "reject-publish", "reject-publish-dlx"), "{} is not a valid overflow value"),
    "queue-master-locator": _one_of(("min-masters", "client-local", "random"),
                                    "{} invalid queue-master-locator value"),
    "queue-leader-locator": _one_of(("client-local", "balanced"), "{} invalid queue-leader-locator value"),
    "dead-letter-strategy": _one_of(("at-most-once", "at-least-once"), "{} is not a valid dead letter strategy"),
    "max-age": _text("max age"),
    "stream-max-segment-size-bytes": _non_negative("segment size"),
    "initial-cluster-size": _positive("initial cluster size"),
}

KNOWN_KEYS: Final = frozenset(_QUEUE_AND_EXCHANGE_KEYS) | frozenset(HA_KEYS)


def _validate_ha(definition: Mapping[str, Any]) -> str | None:
    """rabbit_mirror_queue_misc:validate_policy/1."""
    mode = definition.get("ha-mode")
    if mode is None:
        # RabbitMQ's check covers every ha-* key, whatever its message names.
        if any(k in definition for k in HA_KEYS if k != "ha-mode"):
            return "ha-mode must be specified to specify ha-params, ha-sync-mode or ha-promote-on-shutdown"
        return None
    params = definition.get("ha-params")
    if mode == "all":
        if params is not None:
            return 'ha-mode="all" does not take parameters'
    elif mode == "exactly":
        if params is None:
            return 'ha-mode="exactly" takes an integer, none given'
        if not _is_int(params) or params < 1:
            return f'ha-mode="exactly" takes an integer, {erlang_repr(params)} given'
    elif mode == "nodes":
        if params is None:
            return 'ha-mode="nodes" takes a list, none given'
        if not isinstance(params, list):
            return f'ha-mode="nodes" takes a list, {erlang_repr(params)} given'
        if not params:
            return 'ha-mode="nodes" list must be non-empty'
        not_strings = [p for p in params if not isinstance(p, str)]
        if not_strings:
            return f'ha-mode="nodes" takes a list of strings, {erlang_repr(not_strings)} was not a string'
    else:
        return f"{erlang_repr(mode)} is not a valid ha-mode value"
    sync = definition.get("ha-sync-mode")
    if sync is not None and sync not in ("manual", "automatic"):
        return f'ha-sync-mode must be "manual" or "automatic", got {erlang_repr(sync)}'
    batch = definition.get("ha-sync-batch-size")
    if batch is not None and not (_is_int(batch) and batch > 0):
        return f"ha-sync-batch-size takes an integer greater than 0, {erlang_repr(batch)} given"
    for key in ("ha-promote-on-shutdown", "ha-promote-on-failure"):
        value = definition.get(key)
        if value is not None and value not in ("always", "when-synced"):
            return f'{key} must be "always" or "when-synced", got {erlang_repr(value)}'
    return None


def validate_definition(definition: Any) -> PolicyInvalid | None:
    """None if `definition` (decoded JSON) is an acceptable policy definition."""
    if not isinstance(definition, Mapping):
        return PolicyInvalid(f"the definition must be a JSON object, got {erlang_repr(definition)}")
    if not definition:
        return PolicyInvalid("no policy provided")
    unknown = sorted((k, v) for k, v in definition.items() if k not in KNOWN_KEYS)
    if unknown:
        listed = ",".join(f"{{{erlang_repr(k)},{erlang_repr(v)}}}" for k, v in unknown)
        return PolicyInvalid(f"[{listed}] are not recognised policy settings")
    for key in sorted(definition):
        check = _QUEUE_AND_EXCHANGE_KEYS.get(key)
        if check is not None and (problem := check(definition[key])):
            return PolicyInvalid(problem)
    problem = _validate_ha(definition)
    return PolicyInvalid(problem) if problem else None


def parse_definition(text: str) -> dict[str, Any] | PolicyInvalid:
    """The JSON text `rabbitmqctl set_policy` takes, decoded and validated."""
    try:
        definition = json.loads(text)
    except ValueError as exc:
        return PolicyInvalid(f"JSON decoding error. Reason: {exc}", validation=False)
    return validate_definition(definition) or definition


# Python's `re` and Erlang's PCRE word their errors differently; the common ones in PCRE's words.
_PCRE_WORDING: Final = (
    ("missing ), unterminated subpattern", "missing )"),
    ("unbalanced parenthesis", "unmatched parentheses"),
    ("unterminated character set", "missing terminating ] for character class"),
    ("nothing to repeat", "nothing to repeat"),
    ("multiple repeat", "nothing to repeat"),
)


def pcre_error(pattern: str) -> tuple[str, int] | None:
    """Why `pattern` is not a regular expression, as PCRE (Erlang's `re`) words it and the
    offset it reports; None if it compiles."""
    try:
        re.compile(pattern)
    except re.error as exc:
        text = exc.msg
        for python, pcre in _PCRE_WORDING:
            if text.startswith(python):
                text = pcre
                break
        unterminated = text in ("missing )", "missing terminating ] for character class")
        return text, len(pattern) if unterminated else (exc.pos or 0)
    return None


def pattern_problem(pattern: str) -> str | None:
    """rabbit_policy's pattern check: None, or the text RabbitMQ prints."""
    error = pcre_error(pattern)
    if error is None:
        return None
    return f'pattern should be regular expression but is invalid: {{"{error[0]}",{error[1]}}}'


def apply_to_problem(apply_to: str) -> str | None:
    if apply_to in APPLY_TO_EXTENDED:
        return None
    return f"apply-to '{apply_to}' unrecognised; should be 'queues', 'exchanges' or 'all'"


def validate_policy(pattern: str, apply_to: str, definition: Any) -> PolicyInvalid | None:
    """Everything `set_policy` checks before the policy is stored. RabbitMQ reports every
    failing part, one line each: the definition, then apply-to, then the pattern."""
    invalid = validate_definition(definition)
    problems = [invalid.text] if invalid else []
    problems += [p for p in (apply_to_problem(apply_to), pattern_problem(pattern)) if p]
    return PolicyInvalid("\n".join(problems)) if problems else None
