"""Where a new queue's leader lives: RabbitMQ's queue master locators.

`client-local` (RabbitMQ's default) puts the queue on the node the declaring client is
connected to; `min-masters` on the running node that leads the fewest queues (ties go
to the lowest-named node, so every node would pick the same); `random` on any running
node. Only running nodes are candidates: a queue homed on a node that is down would be
unusable from its first moment. RabbitMQ's deprecated `balanced` (= min-masters) and
its `client-local` fallback for anything unknown are kept, so a policy or argument
written for RabbitMQ places queues the same way here.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import Final

LOCATORS: Final = ("client-local", "min-masters", "random", "balanced")


def choose_home(locator: str | None, local: str, running: Iterable[str], leaders: Mapping[str, int],
                rng: random.Random) -> str:
    """The node to home a new queue on. `leaders` counts the queues each node leads."""
    candidates = sorted(set(running) | {local})
    if locator in ("min-masters", "balanced"):
        return min(candidates, key=lambda n: (leaders.get(n, 0), n))
    if locator == "random":
        return rng.choice(candidates)
    return local
