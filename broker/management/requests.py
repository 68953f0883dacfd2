"""Reading a management request: the path's names, the JSON body and its fields (pure
helpers; each refusal is an `ApiError` naming what was wrong).

RabbitMQ's management API takes booleans and numbers either as JSON values or as the
strings rabbitmqadmin sends ("true", "1"), so both are read here.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from broker.amqp import spec
from broker.management.errors import ApiError, bad_request
from cluster.nesting import MAX_TABLE_DEPTH, too_deep
from cluster.policy import pcre_error

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
    except RecursionError:
        return bad_request("not_json: nested too deeply")
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


def object_field(body: Mapping[str, Any], key: str, depth: int = MAX_TABLE_DEPTH) -> dict[str, Any]:
    """A JSON object field nesting at most `depth` levels (itself the first)."""
    value = body.get(key)
    # An empty list is an empty object too: JSON [] and {} are both Erlang's [] to RabbitMQ,
    # and clients send either (pyrabbit2 sends "arguments": []).
    if value is None or value == []:
        return {}
    if isinstance(value, dict):
        # Held to the bound the AMQP codec holds a declare's arguments and a message's headers to.
        if too_deep(value, depth):
            raise bad_request(f"'{key}' is nested too deeply (more than {depth} levels)")
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


def check_regexes(patterns: list[str]) -> None:
    for pattern in patterns:
        error = pcre_error(pattern)
        if error is not None:
            raise bad_request(f"invalid regular expression '{pattern}': {error[0]}")


def check_base64(key: str, value: str) -> None:
    try:
        base64.b64decode(value, validate=True)
    except binascii.Error:
        raise bad_request(f"'{key}' is not base64") from None


def payload_field(body: Mapping[str, Any]) -> bytes:
    payload = str_field(body, "payload", "")
    encoding = str_field(body, "payload_encoding", "string")
    if encoding == "string":
        return payload.encode("utf-8")
    if encoding == "base64":
        try:
            return base64.b64decode(payload, validate=True)
        except binascii.Error:
            raise bad_request("'payload' is not base64") from None
    raise bad_request(f"'payload_encoding' must be string or base64, got {json.dumps(encoding)}")


_TEXT_PROPERTIES = ("content_type", "content_encoding", "correlation_id", "reply_to", "expiration", "message_id",
                    "type", "user_id", "app_id", "cluster_id")
_OCTET_PROPERTIES = ("delivery_mode", "priority")


def properties_field(raw: Mapping[str, Any], username: str) -> spec.BasicProperties:
    """Message properties from the publish body's "properties" object, each checked by name."""
    fields: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _TEXT_PROPERTIES:
            fields[key] = str_field(raw, key, "")
        elif key in _OCTET_PROPERTIES:
            number = int_field(raw, key, None)
            if number is None or not 0 <= number <= 255:
                raise bad_request(f"property '{key}' must be an integer from 0 to 255, got {json.dumps(value)}")
            fields[key] = number
        elif key == "timestamp":
            fields[key] = int_field(raw, key, None)
        elif key == "headers":
            fields[key] = object_field(raw, key)
        else:
            raise bad_request(f"unknown message property '{key}'")
    if fields.get("user_id") not in (None, username):
        raise bad_request(f"406 PRECONDITION_FAILED - user_id property set to '{fields['user_id']}' but "
                          f"authenticated user was '{username}'")
    return spec.BasicProperties(**fields)
