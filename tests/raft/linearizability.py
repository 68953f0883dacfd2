"""A Wing & Gong linearizability checker for a history of register operations.

Each operation has an invocation and a response time on one logical clock
(response `math.inf` for a write whose outcome is unknown: it may or may not
have taken effect). The search linearizes, one at a time, an operation that
no other pending operation's response precedes, memoizing (done set, value)
states as Lowe's refinement of Wing & Gong does. Registers are independent
(linearizability is local), so a history over several keys is checked key by
key.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Op:
    kind: str  # "read" or "write"
    key: str
    value: Any
    invoke: float
    response: float = math.inf


def check_register(ops: list[Op], initial: Any = None) -> bool:
    ops = sorted(ops, key=lambda o: o.invoke)
    n = len(ops)
    required = 0
    for i, o in enumerate(ops):
        if o.response != math.inf:
            required |= 1 << i
    seen: set[tuple[int, Any]] = set()
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 4 * n + 100))

    def search(done: int, value: Any) -> bool:
        if done & required == required:
            return True
        if (done, value) in seen:
            return False
        seen.add((done, value))
        horizon = min((ops[i].response for i in range(n) if not done >> i & 1), default=math.inf)
        for i in range(n):
            if done >> i & 1:
                continue
            o = ops[i]
            if o.invoke > horizon:
                break  # sorted by invocation: nothing later can go first either
            if o.kind == "read":
                if o.value == value and search(done | 1 << i, value):
                    return True
            elif search(done | 1 << i, o.value):
                return True
        return False

    return search(0, initial)


def check_history(ops: list[Op], initial: Any = None) -> list[str]:
    """Keys whose sub-history is not linearizable."""
    by_key: dict[str, list[Op]] = {}
    for o in ops:
        by_key.setdefault(o.key, []).append(o)
    return [k for k, sub in sorted(by_key.items()) if not check_register(sub, initial)]
