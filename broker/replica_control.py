"""Operator actions on replicated queues, carried out where they must be: on the queue's
leader. `sync_queue` / `cancel_sync_queue` (a manual-sync mirrored queue's missing
replicas are added, or no longer) and `rebalance_queues` (leadership moved so that every
running node leads about as many replicated queues).

The node `leveretctl` talks to decides and answers with rabbitmqctl's words; the leader
acts, through these peer calls when it is another node:

  "queue.sync"      {"vhost", "name", "cancel": bool}
                    -> {"ok": true, "syncing": bool (cancel: whether a sync was under way)}
                     | {"missing": true, "leader": node or None}
  "queue.transfer"  {"vhost", "name", "target"}
                    -> {"leader": the queue's leader once the transfer ended or timed out}
                     | {"missing": true, "leader": node or None}

A node that no longer leads the queue names the leader it knows of, and that one is
asked instead (at most `ROUNDS` times).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import trio

from broker.clustering import unreachable_text
from broker.node_view import NodeView
from broker.replica_status import queue_rows
from cluster import metadata as md
from cluster.control import EX_UNAVAILABLE, ControlError
from cluster.mirrors import is_replicated, leader_moves, queue_type_of
from cluster.policy import pcre_error
from cluster.raft.group import LEADER
from cluster.transport import PeerTransport, Replied

if TYPE_CHECKING:
    from broker.node import Node

SYNC: Final = "queue.sync"
TRANSFER: Final = "queue.transfer"
CALL_TIMEOUT: Final = 10.0
ROUNDS: Final = 3
# How long a leader waits for a leadership transfer to end, and how often it looks (seconds).
TRANSFER_WAIT: Final = 5.0
TRANSFER_POLL: Final = 0.02

REBALANCE_TYPES: Final = ("all", "classic", "quorum")


# --------------------------------------------------------------------------- the leader's side


def _led_here(node: "Node", vhost: str, name: str) -> md.QueueRecord | dict[str, Any]:
    """The queue's record if this node leads its group, else the `missing` answer."""
    q = node.metadata.queue(vhost, name)
    if q is None or not q.replicated:
        return {"missing": True, "leader": None}
    status = node.driver.status(q.group) if node.driver is not None else None
    if status is None or status.role != LEADER or q.group not in node.mirroring.shells \
            or not node.mirroring.shells[q.group].active:
        return {"missing": True, "leader": NodeView(node).queue_leader_node(q)}
    return q


def sync_here(node: "Node", vhost: str, name: str, cancel: bool) -> dict[str, Any]:
    q = _led_here(node, vhost, name)
    if not isinstance(q, md.QueueRecord):
        return q
    mirroring = node.mirroring
    if not cancel:
        return {"ok": mirroring.request_sync(q.group), "syncing": True}
    syncing = q.group in mirroring.sync_requested
    return {"ok": mirroring.cancel_sync(q.group), "syncing": syncing}


async def transfer_here(node: "Node", vhost: str, name: str, target: str) -> dict[str, Any]:
    q = _led_here(node, vhost, name)
    if not isinstance(q, md.QueueRecord):
        await trio.lowlevel.checkpoint()
        return q
    driver = node.driver
    assert driver is not None
    refused = await driver.transfer_leadership(q.group, target)
    if refused is None:
        # Raft hands over once the target holds the whole log; wait for it (bounded), so
        # the caller can count the leaders as they are after the move.
        # The old leader steps down first and learns its successor a moment later.
        with trio.move_on_after(TRANSFER_WAIT):
            while True:
                status = driver.status(q.group)
                if status is None or status.leader not in (None, node.name):
                    break
                await trio.sleep(TRANSFER_POLL)
    status = driver.status(q.group)
    return {"leader": status.leader if status is not None else None}


def serve_replica_control(node: "Node", transport: PeerTransport) -> None:
    """Answer `queue.sync` and `queue.transfer` (once per process; each call reads the
    running core, and a node without one leads nothing)."""

    def running() -> bool:
        return node.driver is not None and node.app_running

    async def on_sync(src: str, args: Any) -> Any:
        await trio.lowlevel.checkpoint()
        if not running():
            return {"missing": True, "leader": None}
        return sync_here(node, str(args["vhost"]), str(args["name"]), bool(args.get("cancel")))

    async def on_transfer(src: str, args: Any) -> Any:
        if not running():
            await trio.lowlevel.checkpoint()
            return {"missing": True, "leader": None}
        return await transfer_here(node, str(args["vhost"]), str(args["name"]), str(args["target"]))

    transport.on_call(SYNC, on_sync)
    transport.on_call(TRANSFER, on_transfer)


# --------------------------------------------------------------------------- the asking side


async def on_leader(node: "Node", vhost: str, name: str, method: str, args: dict[str, Any]) -> dict[str, Any]:
    """Run `method` on the queue's leader (here, or through a peer call); its answer. A
    leader that cannot be reached is a ControlError with exit code 69."""
    view = NodeView(node)
    q = node.metadata.queue(vhost, name)
    target = view.queue_leader_node(q) if q is not None else node.name
    answer: dict[str, Any] = {"missing": True, "leader": None}
    for _ in range(ROUNDS):
        if target == node.name:
            if method == SYNC:
                await trio.lowlevel.checkpoint()
                answer = sync_here(node, vhost, name, bool(args.get("cancel")))
            else:
                answer = await transfer_here(node, vhost, name, str(args["target"]))
        else:
            outcome = await node.clustering.transport.call(
                target, method, {"vhost": vhost, "name": name, **args}, timeout=CALL_TIMEOUT)
            if not isinstance(outcome, Replied) or not isinstance(outcome.value, Mapping):
                raise ControlError(unreachable_text(target, outcome), EX_UNAVAILABLE)
            answer = dict(outcome.value)
        hint = answer.get("leader")
        if not answer.get("missing") or not isinstance(hint, str) or hint == target:
            return answer
        target = hint
    return answer


async def sync_queue(node: "Node", vhost: str, name: str, *, cancel: bool) -> str | None:
    """sync_queue / cancel_sync_queue: None when done, "not_syncing" when a cancel found
    nothing to stop; refusals as rabbitmqctl 3.10.8 words them (all exit 69)."""
    q = node.metadata.queue(vhost, name)
    if q is None:
        raise ControlError("not_found", EX_UNAVAILABLE)
    if queue_type_of(q.arguments) == "quorum":
        raise ControlError("quorum_queue_not_supported", EX_UNAVAILABLE)
    policy = node.metadata.effective_policy(vhost, name, "queue")
    if not is_replicated("classic", policy.definition if policy is not None else None) or not q.replicated:
        # RabbitMQ: a queue without mirrors has nothing to synchronise, nor to stop.
        if cancel:
            return "not_syncing"
        raise ControlError("not_mirrored", EX_UNAVAILABLE)
    answer = await on_leader(node, vhost, name, SYNC, {"cancel": cancel})
    if answer.get("missing") or not answer.get("ok"):
        raise ControlError(f"queue '{name}' in vhost '{vhost}' has no leader at the moment", EX_UNAVAILABLE)
    if cancel and not answer.get("syncing"):
        return "not_syncing"
    return None


# ------------------------------------------------------------------ rebalance


@dataclass(frozen=True, slots=True)
class NodeLeaders:
    node: str
    quorum: int
    classic: int


def _matches(pattern: str, text: str) -> bool:
    return re.search(pattern, text) is not None


def rebalance_refusal(kind: str, vhost_pattern: str, queue_pattern: str) -> str | None:
    """Why a rebalance request is refused, in rabbitmq-queues' words where it has them."""
    if kind not in REBALANCE_TYPES:
        return f"type {kind} is not supported. Try one of all, classic, quorum."
    for pattern in (vhost_pattern, queue_pattern):
        error = pcre_error(pattern)
        if error is not None:
            return f"invalid regular expression {pattern!r}: {error[0]} at position {error[1]}"
    return None


async def rebalance(node: "Node", kind: str, vhost_pattern: str, queue_pattern: str) -> list[NodeLeaders]:
    """Move leaderships as `cluster.mirrors.leader_moves` plans (each move a Raft leadership
    transfer on the queue's leader, all at once), then count the leaders each running node
    has of the queues concerned: rabbitmq-queues rebalance's summary, in its node order."""
    refused = rebalance_refusal(kind, vhost_pattern, queue_pattern)
    if refused is not None:
        raise ControlError(refused, EX_UNAVAILABLE)
    view = NodeView(node)
    rows = await queue_rows(view, node.clustering.transport, None)
    chosen: dict[str, dict[str, Any]] = {}
    for row in rows:
        q = node.metadata.queue(row["vhost"], row["name"])
        if q is None or not q.replicated or not _matches(vhost_pattern, q.vhost) \
                or not _matches(queue_pattern, q.name):
            continue
        policy = node.metadata.effective_policy(q.vhost, q.name, "queue")
        queue_type = queue_type_of(q.arguments)
        if not is_replicated(queue_type, policy.definition if policy is not None else None):
            continue
        if kind != "all" and queue_type != kind:
            continue
        chosen[f"{q.vhost}\x00{q.name}"] = {**row, "queue_type": queue_type, "replicas": q.replicas}
    running = sorted((node.reachable_nodes() & node.cluster_members()) | {node.name})
    leaders = {key: str(row["home_node"]) for key, row in chosen.items() if row["state"] != "down"}
    moves = leader_moves(leaders, {key: list(chosen[key]["synchronised_nodes"]) for key in leaders}, running,
                         {key: int(chosen[key]["messages"] or 0) for key in leaders})

    async def move(key: str, target: str) -> None:
        vhost, name = key.split("\x00", 1)
        try:
            answer = await on_leader(node, vhost, name, TRANSFER, {"target": target})
        except ControlError:
            return  # its leader went away meanwhile: Raft elects one; the count shows where
        if isinstance(answer.get("leader"), str) and not answer.get("missing"):
            leaders[key] = answer["leader"]

    async with trio.open_nursery() as nursery:
        for key, target in moves:
            nursery.start_soon(move, key, target)
    counts: Counter[tuple[str, str]] = Counter((leaders[k], chosen[k]["queue_type"]) for k in leaders)
    # The running nodes holding a replica of a queue concerned (none without such queues, as
    # rabbitmq-queues prints an empty result), last name first as rabbitmq-queues 3.10.8 lists them.
    holders = {n for row in chosen.values() for n in row["replicas"]} | set(leaders.values())
    return [NodeLeaders(n, counts[(n, "quorum")], counts[(n, "classic")])
            for n in sorted(holders & set(running), reverse=True)]
