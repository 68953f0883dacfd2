"""`list_queues` across the cluster: each queue's row as its leader sees it.

Only a queue's leader knows its contents (the counts, consumers, memory of the queue it
serves) and which of its followers have caught up (the Raft progress of its group). The
node `leveretctl` talks to builds every row from its own metadata, then asks each other
node leading some of the queues for those queues' live items, with one peer call per
node (`queue.replica_status`, all of them at once). A node that no longer leads a queue
answers with the leader it knows of, and that node is asked in turn (at most
`ROUNDS` times, so a queue changing leaders under the listing cannot keep it waiting).
A queue whose leader cannot be reached keeps the row this node made, with state `down`,
as RabbitMQ lists a queue on an unreachable node.

Wire:  "queue.replica_status"  {"queues": [[vhost, name], ...],
                                 "history": {"msg" | "lengths": [end_ms, incr_ms, count]}}  (optional)
       -> [{item: value, ..., "counters": {counter: n}, "rates": {name: per second},
            "history": {name: [value at each time, newest first]}}   (when asked)
           | {"missing": true, "leader": node or None}, ...]
          in order.

The rates are the leader's (`broker.queue_rates`: only the node counting a queue's
messages can sample them); a leader that sends none (not sampled yet) leaves them 0.0.
So is the history of the counters ("msg") and lengths ("lengths") a chart asks for; it
travels only when asked (a listing without charts does not pay for it).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import trio

from broker.management.rates import MESSAGE_STATS, QUEUE_TOTALS, SampleRange
from broker.node_view import NodeView
from cluster import metadata as md
from cluster.transport import PeerTransport, Replied

if TYPE_CHECKING:
    from broker.node import Node

REPLICA_STATUS: Final = "queue.replica_status"
# How long the listing waits for one node's answer (seconds), and how many times it
# follows a node's word that another node leads a queue now.
CALL_TIMEOUT: Final = 5.0
ROUNDS: Final = 3

# The row items only a queue's leader knows; the others come from the metadata, which
# every node holds.
LEADER_ITEMS: Final = (
    "messages", "messages_ready", "messages_unacknowledged", "messages_ready_ram",
    "messages_unacknowledged_ram", "messages_ram", "messages_paged_out", "messages_persistent",
    "message_bytes_persistent", "message_bytes", "message_bytes_ready", "message_bytes_unacknowledged",
    "message_bytes_ram", "message_bytes_paged_out", "head_message_timestamp", "consumers",
    "consumer_utilisation", "consumer_capacity", "memory", "exclusive_consumer_pid", "exclusive_consumer_tag",
    "state", "pid", "slave_pids", "synchronised_slave_pids", "leader", "members", "online", "home_node",
    "synchronised_nodes", "follower_nodes", "replica_followers",
)
# Not a row item: the queue's running message counters (`QueueCounters` fields), which the
# management API's message_stats show. A leader answers with them; the row carries them
# under this key once its leader answered (None before).
COUNTERS: Final = "counters"
# Not a row item either: the rates of those counters and of the queue's lengths, as the
# leader's node sampled them (`QueueRates.rates`; empty where nothing was sampled).
RATES: Final = "rates"
# Nor this: the past values a chart asked for, by name (`QueueRates.values`; absent when no
# chart was asked for, empty when the leader has no samples or did not answer).
HISTORY: Final = "history"
# The names each chart group covers ("msg": message_stats counters, "lengths": queue lengths).
HISTORY_GROUPS: Final = {"msg": MESSAGE_STATS, "lengths": QUEUE_TOTALS}

Ranges = Mapping[str, SampleRange]


def history_of(view: NodeView, vhost: str, name: str, ranges: Ranges) -> dict[str, list[int]]:
    """A queue led here: its past values for each chart group asked for in `ranges`."""
    out: dict[str, list[int]] = {}
    for group, at in ranges.items():
        out.update(view.queue_history(vhost, name, HISTORY_GROUPS[group], at))
    return out


def ranges_wire(ranges: Ranges) -> dict[str, list[int]]:
    return {group: at.wire() for group, at in ranges.items()}


def ranges_from_wire(value: Any) -> dict[str, SampleRange]:
    """The chart ranges another node asked for (those well formed, of known groups)."""
    if not isinstance(value, Mapping):
        return {}
    out = {}
    for group, wire in value.items():
        at = SampleRange.from_wire(wire)
        if group in HISTORY_GROUPS and at is not None:
            out[str(group)] = at
    return out


def leader_items(view: NodeView, vhost: str, name: str, ranges: Ranges | None = None) -> dict[str, Any]:
    """On any node: the live items of a queue this node leads, or `{"missing": True,
    "leader": ...}` naming the node it believes leads it (None if the queue is unknown)."""
    q = view.metadata.queue(vhost, name)
    if q is None:
        return {"missing": True, "leader": None}
    if view.leader(vhost, name) is None:
        return {"missing": True, "leader": view.queue_leader_node(q)}
    row = view.queue_row(q)
    items = {**{key: row[key] for key in LEADER_ITEMS}, COUNTERS: counters_of(view, vhost, name),
             RATES: view.queue_rates(vhost, name)}
    if ranges:
        items[HISTORY] = history_of(view, vhost, name, ranges)
    return items


def counters_of(view: NodeView, vhost: str, name: str) -> dict[str, int] | None:
    """A queue led here: its `QueueCounters` as a plain map (None if it has no leader here)."""
    counters = view.queue_counters(vhost, name)
    return dataclasses.asdict(counters) if counters is not None else None


async def queue_rows(view: NodeView, transport: PeerTransport, vhost: str | None) -> list[dict[str, Any]]:
    """Every queue of `vhost` (all vhosts for None), each with its leader's live items."""
    records = [q for v in ([vhost] if vhost is not None else [v.name for v in view.metadata.vhosts()])
               for q in view.metadata.queues(v)]
    return await rows_of(view, transport, records)


def _own_row(view: NodeView, q: md.QueueRecord, ranges: Ranges | None = None) -> dict[str, Any]:
    row = {**view.queue_row(q), COUNTERS: counters_of(view, q.vhost, q.name),
           RATES: view.queue_rates(q.vhost, q.name)}
    if ranges:
        row[HISTORY] = history_of(view, q.vhost, q.name, ranges)
    return row


async def rows_of(view: NodeView, transport: PeerTransport, records: Sequence[md.QueueRecord],
                  ranges: Ranges | None = None) -> list[dict[str, Any]]:
    """The rows of `records`, each with its leader's live items (and `COUNTERS`, `RATES`, and
    `HISTORY` when `ranges` asks for charts), in order."""
    node = view.node
    rows = [_own_row(view, q, ranges) for q in records]
    request_extra = {"history": ranges_wire(ranges)} if ranges else {}
    ask: dict[str, list[int]] = defaultdict(list)
    for i, q in enumerate(records):
        if view.leader(q.vhost, q.name) is None:
            ask[view.queue_leader_node(q)].append(i)
    asked: set[tuple[str, int]] = set()
    for _ in range(ROUNDS):
        ask = {n: [i for i in indexes if (n, i) not in asked] for n, indexes in ask.items() if n != node.name}
        ask = {n: indexes for n, indexes in ask.items() if indexes}
        if not ask:
            break
        asked |= {(n, i) for n, indexes in ask.items() for i in indexes}
        retry: dict[str, list[int]] = defaultdict(list)

        async def one(target: str, indexes: Sequence[int]) -> None:
            outcome = await transport.call(
                target, REPLICA_STATUS, {"queues": [[rows[i]["vhost"], rows[i]["name"]] for i in indexes],
                                         **request_extra},
                timeout=CALL_TIMEOUT)
            if not isinstance(outcome, Replied) or not isinstance(outcome.value, list) \
                    or len(outcome.value) != len(indexes):
                return  # unreachable or not answering: the rows stay as this node sees them
            for i, answer in zip(indexes, outcome.value):
                if not isinstance(answer, Mapping):
                    continue
                if answer.get("missing"):
                    hint = answer.get("leader")
                    if isinstance(hint, str) and hint != target:
                        retry[hint].append(i)
                    continue
                rows[i].update({k: answer[k] for k in (*LEADER_ITEMS, COUNTERS, RATES, HISTORY) if k in answer})

        async with trio.open_nursery() as nursery:
            for target, indexes in ask.items():
                nursery.start_soon(one, target, indexes)
        # Elected here while the listing ran: this node's own row is now the leader's.
        for i in retry.pop(node.name, []):
            rows[i] = _own_row(view, records[i], ranges)
        ask = retry
    return rows


def serve_replica_status(node: "Node", transport: PeerTransport) -> None:
    """Answer `queue.replica_status` on this node's transport (once per process; the
    running core is read at each call, and a node without one leads nothing)."""

    async def handle(src: str, args: Any) -> Any:
        if not isinstance(args, Mapping) or not isinstance(args.get("queues"), list):
            raise ValueError("queue.replica_status takes {\"queues\": [[vhost, name], ...]}")
        queues = args["queues"]
        if node.driver is None or not node.app_running:
            await trio.lowlevel.checkpoint()
            return [{"missing": True, "leader": None} for _ in queues]
        view = NodeView(node)
        ranges = ranges_from_wire(args.get("history"))
        await trio.lowlevel.checkpoint()
        return [leader_items(view, str(vhost), str(name), ranges) for vhost, name in queues]

    transport.on_call(REPLICA_STATUS, handle)
