"""Reading a management request: the path's names, the JSON body and its fields (pure
helpers; each refusal is an `ApiError` naming what was wrong).

RabbitMQ's management API takes booleans and numbers either as JSON values or as the
strings rabbitmqadmin sends ("true", "1"), so both are read here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from broker.management.errors import ApiError, bad_request

# The default exchange has no name; URLs call it amq.default (rabbit_mgmt_util:id/2).
DEFAULT_EXCHANGE_ALIAS = "amq.default"


def path_name(raw: str) -> str:
    """A path segment as the name it stands for (%2F is "/": the default vhost)."""
    return unquote(raw)


def exchange_name(raw: str) -> str:
    name = path_name(raw)
    return "" if name == DEFAULT_EXCHANGE_ALIAS else name


def parse_body(raw: bytes) -> dict[str, Any] | ApiError:
    """The body as a JSON object; an empty body is an empty object."""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return bad_request("not_json")
    if not isinstance(value, dict):
        return bad_request("not_json: a JSON object is required")
    return value


def missing_keys(body: Mapping[str, Any], *keys: str) -> ApiError | None:
    """RabbitMQ's refusal for absent mandatory keys: "[{key_missing,a},{key_missing,b}]"."""
    missing = [k for k in keys if k not in body]
    if not missing:
        return None
    return bad_request("[" + ",".join(f"{{key_missing,{k}}}" for k in missing) + "]")


def bool_field(body: Mapping[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise bad_request(f"not_boolean: '{key}' must be true or false, got {json.dumps(value)}")


def int_field(body: Mapping[str, Any], key: str, default: int | None) -> int | None:
    value = body.get(key, default)
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise bad_request(f"not_integer: '{key}' must be an integer, got {json.dumps(value)}")


def str_field(body: Mapping[str, Any], key: str, default: str) -> str:
    value = body.get(key, default)
    if isinstance(value, str):
        return value
    raise bad_request(f"not_string: '{key}' must be a string, got {json.dumps(value)}")


def object_field(body: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key)
    # An empty list is an empty object too: JSON [] and {} are both Erlang's [] to RabbitMQ,
    # and clients send either (pyrabbit2 sends "arguments": []).
    if value is None or value == []:
        return {}
    if isinstance(value, dict):
        return value
    raise bad_request(f"not_object: '{key}' must be a JSON object, got {json.dumps(value)}")


def tags_field(value: Any) -> tuple[str, ...]:
    """User tags as "a,b" (RabbitMQ's form) or a list of names."""
    if isinstance(value, str):
        return tuple(t.strip() for t in value.split(",") if t.strip())
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        return tuple(value)
    raise bad_request(f"not_tags: 'tags' must be a comma-separated string or a list of names, got {json.dumps(value)}")


def refusal_reason(text: str) -> str:
    """An AMQP refusal's text as the management API gives it: without the "NAME - " prefix."""
    head, sep, rest = text.partition(" - ")
    return rest if sep and head.replace("_", "").isupper() else text
