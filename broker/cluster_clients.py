"""The cluster's connections, channels and consumers, from any node.

A connection and its channels live on the node the client connected to; a consumer lives
in its queue's leader, on its queue's node, even when its connection is on another (the
leader then serves it through a `ConsumerProxy`, `broker.remote_queue`). So every node
answers `node.clients` with its connections and channels and the consumers of the queues
it leads; the asking node gathers every member's answer (all at once, each within
`CALL_TIMEOUT`: a member that does not answer is left out, and the listing goes on) and
`merge` joins them: each row gets the `node` its connection is on, and a consumer whose
connection is on another node than its queue takes its channel's items (connection name,
peer, user, prefetch) from that node's channel row. A consumer whose connection's node
did not answer is left out, with that node's connections.

`connection.close` closes a connection on the node it is on, as `DELETE
/api/connections/{name}` asks on any node.

Wire:  "node.clients"      {}  -> {"connections": [row], "channels": [row], "consumers": [row]}
                                  (NodeView's rows; consumers `led_consumer_rows`)
       "connection.close"  {"name": name, "reason": text}  -> {"closed": bool}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import trio

from broker.node_view import NodeView, plain
from cluster.transport import PeerTransport, Replied

if TYPE_CHECKING:
    from broker.node import Node

NODE_CLIENTS: Final = "node.clients"
CLOSE_CONNECTION: Final = "connection.close"
# How long a listing waits for a member's rows (seconds): a slower member is left out.
CALL_TIMEOUT: Final = 3.0
# The items of a consumer's row its channel's row gives (consumer item <- channel item).
CHANNEL_ITEMS: Final = (("channel_pid", "pid"), ("connection_name", "connection_name"),
                        ("peer_host", "peer_host"), ("peer_port", "peer_port"), ("user", "user"),
                        ("prefetch_count", "prefetch_count"))


@dataclass(frozen=True, slots=True)
class Clients:
    """The rows of the members heard from, each with the `node` its connection is on, and the
    members asked that did not answer within CALL_TIMEOUT (left out)."""

    connections: list[dict[str, Any]] = field(default_factory=list)
    channels: list[dict[str, Any]] = field(default_factory=list)
    consumers: list[dict[str, Any]] = field(default_factory=list)
    unanswered: list[str] = field(default_factory=list)


def own_clients(view: NodeView) -> dict[str, Any]:
    """This node's answer to `node.clients` (client properties made plain for the wire)."""
    return {
        "connections": [{**row, "client_properties": plain(row["client_properties"])}
                        for row in view.connection_rows()],
        "channels": view.channel_rows(),
        "consumers": view.led_consumer_rows(),
    }


def merge(answers: Mapping[str, Mapping[str, Any]]) -> Clients:
    """The members' answers (by node) as one listing, in node order (pure)."""
    out = Clients()
    channels: dict[tuple[str, str, int], Mapping[str, Any]] = {}
    for node in sorted(answers):
        answer = answers[node]
        out.connections.extend({**row, "node": node} for row in answer.get("connections") or ())
        for row in answer.get("channels") or ():
            out.channels.append({**row, "node": node})
            channels[(node, str(row["connection"]), int(row["number"]))] = row
    for node in sorted(answers):
        for row in answers[node].get("consumers") or ():
            where = str(row.get("node") or node)
            if where == node:
                out.consumers.append({**row, "node": node})
                continue
            channel = channels.get((where, str(row.get("connection")), int(row["channel_number"])))
            if channel is None:
                continue  # its node did not answer, or the channel closed meanwhile
            out.consumers.append({**row, **{mine: channel[theirs] for mine, theirs in CHANNEL_ITEMS},
                                  "node": where})
    return out


async def gather(node: "Node", transport: PeerTransport) -> Clients:
    """This node's rows and those of every member reachable that answers within CALL_TIMEOUT."""
    answers: dict[str, Mapping[str, Any]] = {node.name: own_clients(NodeView(node))}

    async def ask(target: str) -> None:
        outcome = await transport.call(target, NODE_CLIENTS, {}, timeout=CALL_TIMEOUT)
        if isinstance(outcome, Replied) and _well_formed(outcome.value):
            answers[target] = outcome.value

    reachable = node.reachable_nodes()
    asked = sorted(t for t in node.cluster_members() - {node.name} if t in reachable)
    async with trio.open_nursery() as nursery:
        for target in asked:
            nursery.start_soon(ask, target)
    merged = merge(answers)
    merged.unanswered.extend(t for t in asked if t not in answers)
    return merged


def _well_formed(value: Any) -> bool:
    return isinstance(value, Mapping) and all(isinstance(value.get(key), list)
                                              for key in ("connections", "channels", "consumers"))


async def close_connection(node: "Node", transport: PeerTransport, where: str, name: str, reason: str) -> bool:
    """Close the connection `name` on node `where` (320 CONNECTION_FORCED with `reason`):
    whether it was there to close (False too when `where` does not answer)."""
    if where == node.name:
        await trio.lowlevel.checkpoint()
        return NodeView(node).close_connection(name, reason)
    outcome = await transport.call(where, CLOSE_CONNECTION, {"name": name, "reason": reason}, timeout=CALL_TIMEOUT)
    return isinstance(outcome, Replied) and isinstance(outcome.value, Mapping) and outcome.value.get("closed") is True


def serve_clients(node: "Node", transport: PeerTransport) -> None:
    """Answer `node.clients` and `connection.close` (once per process; each call reads the
    running core: a node without one has no clients)."""

    async def clients(src: str, args: Any) -> Any:
        await trio.lowlevel.checkpoint()
        if node.driver is None:
            return {"connections": [], "channels": [], "consumers": []}
        return own_clients(NodeView(node))

    async def close(src: str, args: Any) -> Any:
        if not isinstance(args, Mapping) or not isinstance(args.get("name"), str):
            raise ValueError('connection.close takes {"name": name, "reason": text}')
        await trio.lowlevel.checkpoint()
        return {"closed": NodeView(node).close_connection(args["name"], str(args.get("reason") or ""))}

    transport.on_call(NODE_CLIENTS, clients)
    transport.on_call(CLOSE_CONNECTION, close)
