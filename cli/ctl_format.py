"""How `leveretctl` prints values: rabbitmqctl's table cells and its JSON formatter.

Table cells follow rabbitmqctl 3.10: booleans as true/false, lists as
`[a, b]`, argument tables as Erlang proplists `[{"x-max-length",10}]`, maps as
`[{node, running}]`. The JSON formatter prints one object per line between
`[` and `]`, each line after the first starting with a comma, exactly as
rabbitmqctl does; argument tables stay [key, type, value] triples.

Every renderer of nested values is bounded: a table or array deeper than
`MAX_TABLE_DEPTH` (or one the node already elided) prints as `...`, as Erlang's
`~P` does, so no value can run a listing out of stack.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping, Sequence
from typing import Any

from cluster.nesting import ELIDED, MAX_TABLE_DEPTH, is_container


def _erlang_value(value: Any, depth: int = 1) -> str:
    if is_container(value) and depth > MAX_TABLE_DEPTH:
        return ELIDED
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if value is None:
        return "undefined"
    if isinstance(value, list):
        return "[" + ",".join(_erlang_value(v, depth + 1) for v in value) + "]"
    return str(value)


def is_typed_table(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(t, list) and len(t) == 3 and isinstance(t[0], str) and isinstance(t[1], str) for t in value)


def _elided(kind: str, value: Any, depth: int) -> bool:
    """A table or array the node elided, or one deeper than this side renders."""
    return kind in ("table", "array") and (not isinstance(value, list) or depth > MAX_TABLE_DEPTH)


def _typed_cell(kind: str, value: Any, depth: int) -> str:
    """One typed value (at level `depth`) as rabbitmqctl's table shows it (an Erlang term)."""
    if _elided(kind, value, depth):
        return ELIDED
    if kind == "table":
        return typed_table_cell(value, depth)
    if kind == "array":
        return "[" + ",".join(_typed_cell(k, v, depth + 1) for k, v in value) + "]"
    if kind == "binary":
        return f"<<{json.dumps(value, ensure_ascii=False)}>>"
    if kind == "decimal":
        return "{" + ",".join(str(v) for v in value) + "}"
    return _erlang_value(value, depth)


def typed_table_cell(rows: list[list[Any]], depth: int = 1) -> str:
    """[[key, type, value]] as rabbitmqctl's table shows an argument table: [{"k",v}]."""
    return "[" + ",".join(f"{{{json.dumps(key, ensure_ascii=False)},{_typed_cell(kind, value, depth + 1)}}}"
                          for key, kind, value in rows) + "]"


def _typed_json(kind: str, value: Any, depth: int) -> Any:
    """One typed value as rabbitmqctl's JSON shows it: a void is "undefined", a decimal
    [scale, unscaled], and an array an object from element type to value (so elements of
    the same type collapse to the last one, as rabbitmqctl's map does)."""
    if _elided(kind, value, depth):
        return ELIDED
    if kind == "table":
        return typed_table_json(value, depth)
    if kind == "array":
        return {k: _typed_json(k, v, depth + 1) for k, v in value}
    if kind == "void":
        return "undefined"
    return value


def typed_table_json(rows: list[list[Any]], depth: int = 1) -> list[list[Any]]:
    return [[key, kind, _typed_json(kind, value, depth + 1)] for key, kind, value in rows]


def cell(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if key in ("arguments", "client_properties") and is_typed_table(value):
        return typed_table_cell(value)
    if key == "protocol" and isinstance(value, list):
        return "{" + ",".join(str(v) for v in value) + "}"  # an Erlang tuple: {0,9,1}
    if isinstance(value, Mapping):
        return "[" + ", ".join(f"{{{k}, {v}}}" for k, v in value.items()) + "]"
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def table_lines(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], headers: bool) -> list[str]:
    if not rows:
        return []
    lines = ["\t".join(columns)] if headers else []
    lines += ["\t".join(cell(c, row.get(c)) for c in columns) for row in rows]
    return lines


def csv_lines(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> list[str]:
    """rabbitmqctl's CSV formatter: the header row always (-q, -s change nothing), every
    field quoted with quotes doubled, cells as the table shows them; nothing for no rows."""
    if not rows:
        return []

    def quoted(text: str) -> str:
        return '"' + text.replace('"', '""') + '"'

    return [",".join(quoted(c) for c in columns)] + [
        ",".join(quoted(cell(c, row.get(c))) for c in columns) for row in rows]


def address_json(host: str) -> Any:
    """An IP address as rabbitmqctl's JSON shows a connection's host and peer_host: Erlang's
    address tuple, [127,0,0,1] (eight 16-bit groups for IPv6); anything else as it is."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv4Address):
        return list(address.packed)
    packed = address.packed
    return [int.from_bytes(packed[i:i + 2], "big") for i in range(0, 16, 2)]


def json_rows(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, streamed: bool = False) -> str:
    # Commands that stream their rows (list_queues, list_exchanges, ...) open the array
    # before knowing there are none, so an empty answer is "[\n]"; the others print "[]".
    if not rows:
        return "[\n]" if streamed else "[]"
    def field(column: str) -> Any:
        value = row.get(column)
        if column in ("arguments", "client_properties") and is_typed_table(value):
            return typed_table_json(value)
        if column in ("host", "peer_host") and isinstance(value, str):
            return address_json(value)
        return value

    encoded = []
    for row in rows:
        encoded.append(json.dumps({c: field(c) for c in columns}, ensure_ascii=False, separators=(",", ":")))
    return "[\n" + "\n,".join(encoded) + "\n]"


def json_value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# The DEC special graphics set that rabbitmq-queues' table formatter draws its borders in
# (it prints them even to a pipe): ESC ( 0 switches to it, ESC ( B back to ASCII.
_LINES_ON, _LINES_OFF = "\x1b(0", "\x1b(B"
_BOLD, _PLAIN = "\x1b[1m", "\x1b[0m"


def box_lines(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A table as rabbitmq-queues 3.10.8 prints one (rebalance's summary): line-drawing
    borders, a bold header row, every row ruled off, cells left-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def rule(left: str, middle: str, right: str) -> str:
        return _LINES_ON + left + middle.join("q" * (w + 2) for w in widths) + right + _LINES_OFF

    bar = _LINES_ON + "x" + _LINES_OFF

    def line(values: Sequence[str], bold: bool) -> str:
        shown = [(f"{_BOLD}{v}{_PLAIN}" if bold else v) + " " * (w - len(v)) for v, w in zip(values, widths)]
        return bar + "".join(f" {v} {bar}" for v in shown)

    out = [rule("l", "w", "k"), line(headers, True)]
    for row in cells:
        out += [rule("t", "n", "u"), line(row, False)]
    out.append(rule("m", "v", "j"))
    return out
