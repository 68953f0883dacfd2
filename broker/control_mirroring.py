"""`queue_replicas`: what the asked node alone knows of each queue's replica set — the
metadata's replica set and leader, and the Raft group as this node hosts it (role, term,
leader, voters, learners) — so a caller (tests, an operator debugging) can compare what
the metadata wants with what each group has. (`sync_queue` / `cancel_sync_queue` are
`broker/replica_control.py`'s: they act on the leader wherever it is.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from broker.node import Node

Op = Callable[[Mapping[str, Any]], Awaitable[Any]]


class MirroringControl:
    def __init__(self, node: "Node") -> None:
        self.node = node

    def methods(self) -> dict[str, Op]:
        return {name[3:]: getattr(self, name) for name in dir(self) if name.startswith("op_")}

    async def op_queue_replicas(self, args: Mapping[str, Any]) -> Any:
        node = self.node
        vhost = "/" if args.get("vhost") is None else str(args["vhost"])
        rows = []
        for q in node.metadata.queues(vhost):
            row: dict[str, Any] = {"name": q.name, "group": q.group, "replicas": list(q.replicas),
                                   "node": q.node, "hosted": False}
            status = node.driver.status(q.group) if q.group else None
            if status is not None:
                row.update(hosted=True, role=status.role, term=status.term, leader=status.leader,
                           voters=sorted(status.voters), learners=sorted(status.learners),
                           sync_requested=q.group in node.mirroring.sync_requested)
            rows.append(row)
        return rows
