"""How deep field-table values may nest, and how that is measured without recursion.

AMQP field tables and arrays nest without limit on the wire, a few octets per level,
while everything that walks them here (the codec, equality, the CLI's renderers,
msgpack) recurses: a value a few hundred levels deep ran a listing out of stack
(issue 12, item 6). So there is one bound, `MAX_TABLE_DEPTH`, far above any real use
(RabbitMQ's own x-death is three levels) and far below Python's stack:

- values arriving from peers are refused beyond it where they enter: the AMQP codec
  answers 502 SYNTAX_ERROR, an imported definitions document is refused;
- renderers stop at it and print `ELIDED` in place of what is deeper (Erlang's `~P`
  prints the same "..."), so a value stored before the bound still lists.

It lives in `cluster/`, the lowest layer both the broker's codec and the metadata's
renderers import.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Levels of tables and arrays, the outermost table (arguments, headers) being the first.
MAX_TABLE_DEPTH = 100

# What a renderer shows in place of a table or array nested deeper than the bound.
ELIDED = "..."


def is_container(value: Any) -> bool:
    """A field value that holds others (a table or an array)."""
    return isinstance(value, (Mapping, list, tuple))


def nesting_depth(value: Any) -> int:
    """Levels of tables and arrays in `value` (0 for a scalar), found without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if not is_container(item):
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, Mapping) else item))
    return deepest


def too_deep(value: Any, limit: int = MAX_TABLE_DEPTH) -> bool:
    return nesting_depth(value) > limit
