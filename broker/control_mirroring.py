"""Control operations on replicated queues: what a node knows of each queue's replica set,
and manual synchronisation (RabbitMQ's `sync_queue` / `cancel_sync_queue`).

`queue_replicas` answers from the asked node alone: the metadata's replica set and leader,
and the Raft group as this node hosts it (role, term, leader, voters, learners), so a
caller can compare what the metadata wants with what each group has. `sync_queue` and
`cancel_sync_queue` act on the queue's leader; a node that does not lead the queue
refuses, naming the leader it knows, so the caller asks that node.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from cluster.control import EX_UNAVAILABLE, EX_USAGE, ControlError

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

    def _group(self, args: Mapping[str, Any]) -> str:
        vhost = "/" if args.get("vhost") is None else str(args["vhost"])
        name = str(args["name"])
        q = self.node.metadata.queue(vhost, name)
        if q is None:
            raise ControlError(f"Error: queue '{name}' in vhost '{vhost}' does not exist", EX_USAGE)
        if not q.replicated:
            raise ControlError(f"Error: queue '{name}' in vhost '{vhost}' is not mirrored", EX_USAGE)
        return q.group

    def _not_leader(self, group: str) -> ControlError:
        status = self.node.driver.status(group)
        leader = status.leader if status is not None else None
        return ControlError(f"Error: this node does not lead the queue (leader: {leader})", EX_UNAVAILABLE)

    async def op_sync_queue(self, args: Mapping[str, Any]) -> Any:
        group = self._group(args)
        if not self.node.mirroring.request_sync(group):
            raise self._not_leader(group)
        return None

    async def op_cancel_sync_queue(self, args: Mapping[str, Any]) -> Any:
        group = self._group(args)
        if not self.node.mirroring.cancel_sync(group):
            raise self._not_leader(group)
        return None
