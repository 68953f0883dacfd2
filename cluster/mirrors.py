"""Replica planning: which nodes hold a queue's Raft group, and who leads it.

Pure and deterministic: the cluster's members, which of them run, the queue's replicas
today and its policy in; the replica set it should have out. The engine (which hosts the
groups, changes their membership one server at a time, and transfers leadership) calls
`plan_replicas` whenever a queue is declared, a policy changes, or a node joins, leaves,
stays down past the re-placement delay, or is forgotten; and `leader_moves` for
`leveretctl rebalance_queues`. See docs/mirroring.md for the rules as users see them.

The rules follow RabbitMQ 3.10's mirror modes (rabbit_mirror_queue_mode_all / _exactly /
_nodes) and quorum queue placement (rabbit_quorum_queue), with these differences, each
because a Leveret replica is a Raft voter and not a process that exists only while its
node runs:

- `all` and `nodes` place a replica on a member that is down, where RabbitMQ waits for it
  to start: the voter catches up from the log (or the queue's rows) when it returns.
- `exactly` keeps a replica on a node that is down until the node has been down longer
  than the re-placement delay (`lost`); RabbitMQ re-places at once. A replica re-placed
  too eagerly costs a full copy of the queue each time a node restarts.
- `exactly` fills from the least-loaded running nodes (fewest replicas, then name), where
  RabbitMQ shuffles: every node computes the same plan.
- a new quorum queue takes its first replicas among running members (home first, then the
  least-loaded), where RabbitMQ 3.10 picks at random among all cluster nodes.

A queue none of whose replicas is still a cluster member (its nodes were forgotten) gets
an empty plan: there is no copy of it left, which the engine must handle (RabbitMQ
deletes such queues when their nodes are forgotten), rather than a fresh empty replica
that would pretend to be the queue.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

# rabbit.quorum_cluster_size's default in RabbitMQ 3.10 (`application:get_env(rabbit,
# quorum_cluster_size)` on 3.10.8 answers {ok,3}).
DEFAULT_QUORUM_GROUP_SIZE: Final = 3
# rabbit_mirror_queue_misc: a mirrored queue whose policy names no ha-sync-mode syncs
# new mirrors only when asked (`rabbitmqctl sync_queue`).
DEFAULT_SYNC_MODE: Final = "manual"
SYNC_MODES: Final = ("automatic", "manual")


@dataclass(frozen=True, slots=True)
class ReplicaPlan:
    members: tuple[str, ...]      # desired replica set, the leader-to-be first if new
    sync_mode: str                # "automatic" | "manual"  (quorum: always "automatic")
    kind: str                     # "classic" (policy-mirrored or plain) | "quorum"

    @property
    def leader(self) -> str | None:
        """The node that should lead: the first member (None for an empty plan)."""
        return self.members[0] if self.members else None


def queue_type_of(arguments: Mapping[str, Any] | None) -> str:
    """"quorum" or "classic", from a queue's declare arguments."""
    t = (arguments or {}).get("x-queue-type")
    if isinstance(t, bytes):
        t = t.decode("utf-8", "replace")
    return "quorum" if t == "quorum" else "classic"


def is_replicated(queue_type: str, policy: Mapping[str, Any] | None) -> bool:
    """A quorum queue, or a classic queue under a policy with ha-mode, is a Raft group of
    its own; any other queue has one replica that writes its rows directly."""
    return queue_type == "quorum" or bool(policy) and "ha-mode" in policy  # type: ignore[operator]


def sync_mode_of(queue_type: str, policy: Mapping[str, Any] | None) -> str:
    """How new replicas catch up: a quorum queue's always do; a mirrored queue's as its
    ha-sync-mode says (RabbitMQ's default: manual)."""
    if queue_type == "quorum":
        return "automatic"
    sync = (policy or {}).get("ha-sync-mode")
    return sync if sync in SYNC_MODES else DEFAULT_SYNC_MODE


def plan_replicas(*, queue_type: str, arguments: Mapping[str, Any],
                  policy: Mapping[str, Any] | None, members: Collection[str],
                  running: Collection[str], current: Sequence[str], leader: str | None,
                  home: str, replica_counts: Mapping[str, int],
                  lost: Collection[str] = (),
                  synchronised: Collection[str] = ()) -> ReplicaPlan:
    """The replica set a queue should have now.

    `members` are the cluster's members, `running` those reachable now, `current` the
    queue's replicas today (empty for a new queue), `leader` its leader if known, `home`
    the running member chosen (by `cluster.placement.choose_home`) to lead a new queue,
    `replica_counts` the replicas each node holds, `lost` the nodes down longer than the
    re-placement delay, `synchronised` the replicas other than the leader that hold every
    committed entry (only `ha-mode: nodes` reads it: the leader of a queue whose policy no
    longer lists its node gives way only to a synchronised listed replica).
    """
    cluster = frozenset(members)
    up = frozenset(running) & cluster
    if queue_type == "quorum":
        return ReplicaPlan(_quorum(arguments, cluster, up, current, leader, home, replica_counts),
                           "automatic", "quorum")
    policy = policy or {}
    sync_mode = sync_mode_of(queue_type, policy)
    mode, params = policy.get("ha-mode"), policy.get("ha-params")
    if mode == "all":
        chosen = _all(cluster, current, leader, home)
    elif mode == "exactly" and _is_count(params):
        chosen = _exactly(params, cluster, up, current, leader, home, replica_counts, frozenset(lost))
    elif mode == "nodes" and isinstance(params, list) and params:
        chosen = _nodes(params, cluster, up, current, leader, home, replica_counts, frozenset(synchronised))
    else:
        # Not mirrored (or a definition cluster.policy would have refused): one replica.
        anchor = _anchor(cluster, current, leader, home)
        chosen = (anchor,) if anchor is not None else ()
    return ReplicaPlan(chosen, sync_mode, "classic")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _survivors(cluster: frozenset[str], current: Sequence[str], leader: str | None) -> list[str]:
    """The queue's replicas still in the cluster, the leader first, without repeats."""
    ordered = ([leader] if leader is not None else []) + list(current)
    return _unique(n for n in ordered if n in cluster)


def _anchor(cluster: frozenset[str], current: Sequence[str], leader: str | None, home: str) -> str | None:
    """Who leads: the leader if still a member; else (leader unknown, e.g. its node is
    down) the first surviving replica, where the queue's data is; a new queue's home.
    None when every replica of an existing queue has been forgotten."""
    survivors = _survivors(cluster, current, leader)
    if survivors:
        return survivors[0]
    return home if not current else None


def _unique(nodes: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(nodes))


def _least_loaded(candidates: Iterable[str], replica_counts: Mapping[str, int]) -> list[str]:
    """Fewest replicas first; ties by name, so every node computes the same order."""
    return sorted(set(candidates), key=lambda n: (replica_counts.get(n, 0), n))


def _ordered(anchor: str, keep: Iterable[str], current: Sequence[str], added: Iterable[str]) -> tuple[str, ...]:
    """The anchor first, then kept replicas in their current order, then additions in the
    order they were chosen: a stable order, so a plan that changes nothing compares equal."""
    kept = set(keep)
    return tuple(_unique([anchor] + [n for n in current if n in kept] + sorted(kept - set(current))
                         + list(added)))


def _all(cluster: frozenset[str], current: Sequence[str], leader: str | None, home: str) -> tuple[str, ...]:
    anchor = _anchor(cluster, current, leader, home)
    if anchor is None:
        return ()
    return _ordered(anchor, cluster & set(current), current, sorted(cluster - set(current)))


def _exactly(count: int, cluster: frozenset[str], up: frozenset[str], current: Sequence[str],
             leader: str | None, home: str, replica_counts: Mapping[str, int],
             lost: frozenset[str]) -> tuple[str, ...]:
    anchor = _anchor(cluster, current, leader, home)
    if anchor is None:
        return ()
    survivors = _survivors(cluster, current, leader)
    kept = [n for n in survivors if n not in lost or n == leader]
    if not kept:
        # Every replica is on a lost node: nothing to copy a new replica from, so keep
        # them and wait (re-placing them all would be a new, empty queue).
        kept = survivors or [anchor]
    anchor = kept[0]
    if len(kept) > count:
        # Too many (the policy asked for fewer): keep the leader, then running replicas
        # before ones on nodes that are down, each in current order.
        rest = kept[1:]
        rest = [n for n in rest if n in up] + [n for n in rest if n not in up]
        kept = [anchor] + rest[:count - 1]
    candidates = _least_loaded(up - set(kept) - lost, replica_counts)
    added = candidates[:max(0, count - len(kept))]
    return _ordered(anchor, kept, current, added)


def _nodes(listed: Sequence[Any], cluster: frozenset[str], up: frozenset[str], current: Sequence[str],
           leader: str | None, home: str, replica_counts: Mapping[str, int],
           synchronised: frozenset[str]) -> tuple[str, ...]:
    """rabbit_mirror_queue_mode_nodes: the listed nodes that are members. A leader on a
    node the list leaves out stays (RabbitMQ keeps the master so as not to lose messages)
    until one of the listed replicas is synchronised, which then takes over. If no listed
    node is a member, the queue keeps the replicas it has (a new one lives on its home)."""
    wanted = sorted({n for n in listed if isinstance(n, str)} & cluster)
    anchor = _anchor(cluster, current, leader, home)
    if anchor is None:
        return ()
    if not wanted:
        survivors = _survivors(cluster, current, leader)
        return _ordered(anchor, survivors, current, ()) if survivors else (anchor,)
    if not current:
        # A new queue is empty, so RabbitMQ's end state (the master migrates to a listed
        # node as soon as a listed mirror has synchronised) is reached at once: led by its
        # home if listed, else by the least-loaded running listed node. With no listed node
        # running, the home leads (RabbitMQ's "keep the master alive") beside the listed.
        running_wanted = [n for n in wanted if n in up]
        if home in wanted:
            first = home
        elif running_wanted:
            first = _least_loaded(running_wanted, replica_counts)[0]
        else:
            first = home
        return tuple(_unique([first] + wanted))
    if anchor in wanted:
        return _ordered(anchor, set(wanted) & set(current), current, [n for n in wanted if n not in current])
    successors = [n for n in wanted if n in synchronised and n in up and n in current]
    if successors:
        # The old leader hands over to a synchronised listed replica and leaves the group.
        first = successors[0]
        return _ordered(first, set(wanted) & set(current), current, [n for n in wanted if n not in current])
    return _ordered(anchor, set(wanted) & set(current), current, [n for n in wanted if n not in current])


def quorum_group_size(arguments: Mapping[str, Any]) -> int:
    """x-quorum-initial-group-size, else RabbitMQ 3.10's default. The declaration checks
    (broker.arguments) refuse a value that is not a positive integer before any plan."""
    size = arguments.get("x-quorum-initial-group-size")
    return size if _is_count(size) else DEFAULT_QUORUM_GROUP_SIZE


def _quorum(arguments: Mapping[str, Any], cluster: frozenset[str], up: frozenset[str],
            current: Sequence[str], leader: str | None, home: str,
            replica_counts: Mapping[str, int]) -> tuple[str, ...]:
    """A quorum queue's members are chosen once, at declaration; after that they change
    only when an operator asks (add_member / delete_member, engine-side) or a member is
    forgotten. Its ha-* policy keys do not apply (RabbitMQ ignores them for quorum queues)."""
    if current:
        anchor = _anchor(cluster, current, leader, home)
        if anchor is None:
            return ()
        return _ordered(anchor, set(current) & cluster, current, ())
    size = quorum_group_size(arguments)
    others = _least_loaded(up - {home}, replica_counts)
    return tuple([home] + others[:size - 1])


def leader_moves(leaders: Mapping[str, str], members: Mapping[str, Sequence[str]],
                 running: Collection[str],
                 lengths: Mapping[str, int] | None = None) -> list[tuple[str, str]]:
    """`rebalance_queues`: (queue, new leader) pairs, in the order to make them, that even
    out how many queues each running node leads.

    RabbitMQ's rabbit_amqqueue:rebalance takes, from a node leading more than its share,
    the shortest queue first, moves it to the replica node leading the fewest queues and
    never moves a queue twice. Here likewise, with two guards that make every move an
    improvement: a queue moves only to a running node among its own members that leads at
    least two fewer queues than its current leader's node (so the spread between the
    busiest and idlest node never grows, and the plan ends), and the busiest node is
    relieved first (ties by name). Queues led by a node that is down are left alone (Raft
    elects their leader), as are queues with no other running member. `lengths` (messages
    per queue) orders a node's queues shortest first, as RabbitMQ does; without it, by name.
    """
    up = frozenset(running)
    size = (lengths or {}).get
    by_node: dict[str, list[str]] = {n: [] for n in up}
    for queue in sorted(leaders, key=lambda q: (size(q, 0), q)):
        if leaders[queue] in up:
            by_node[leaders[queue]].append(queue)
    moved: set[str] = set()
    moves: list[tuple[str, str]] = []
    # Each move takes a queue that never moves again, so at most len(leaders) rounds.
    for _ in range(len(leaders)):
        move = _next_move(by_node, members, up, moved)
        if move is None:
            break
        queue, source, target = move
        by_node[source].remove(queue)
        by_node[target].append(queue)
        moved.add(queue)
        moves.append((queue, target))
    return moves


def _next_move(by_node: Mapping[str, list[str]], members: Mapping[str, Sequence[str]],
               up: frozenset[str], moved: set[str]) -> tuple[str, str, str] | None:
    for source in sorted(by_node, key=lambda n: (-len(by_node[n]), n)):
        load = len(by_node[source])
        for queue in by_node[source]:
            if queue in moved:
                continue
            targets = [n for n in members.get(queue, ()) if n in up and n != source
                       and len(by_node[n]) + 2 <= load]
            if targets:
                target = min(targets, key=lambda n: (len(by_node[n]), n))
                return queue, source, target
    return None


# RabbitMQ prints a pid as <node.creation.id.serial>. Leveret has no processes: a queue's
# replica is named by its node and a number derived from the queue's identity, with a
# constant creation of 1 and serial of 0, so the same replica always prints the same.
def queue_ident(vhost: str, name: str) -> int:
    """A queue's number in its pids: CRC-32 of its vhost and name (length-prefixed, so
    ("a", "bc") and ("ab", "c") differ). Stable across nodes, restarts and versions."""
    key = f"{len(vhost)}:{vhost}/{name}".encode("utf-8", "surrogatepass")
    return zlib.crc32(key)


def pid_text(node: str, ident: int | tuple[str, str]) -> str:
    """A replica's pid as `rabbitmqctl list_queues pid slave_pids` prints one:
    `<leveret@n1.1.<ident>.0>`; `ident` is a number or a queue's (vhost, name)."""
    number = queue_ident(*ident) if isinstance(ident, tuple) else ident
    return f"<{node}.1.{number}.0>"
