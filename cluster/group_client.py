"""Any node's way into a Raft group it may not lead: propose here, or forward to the leader.

A change to a replicated group (the metadata today, mirrored queues next) may be
asked of any node. The node hands the proposal to its own driver; if it is not
the leader it forwards the proposal over a peer call to the node it believes
leads, which proposes it there (never forwarding further, so a stale hint cannot
make a loop) and answers with the index its entry was applied at. The asking node
then waits until it has applied that index itself and answers with its *own*
result: apply is deterministic and committed entries are the same on every node,
so the result is the leader's, and the caller's reply comes only after the change
is committed *and applied on the node the caller talks to*. A client that
declares a queue on one channel and publishes to it on another therefore never
finds its own declare missing.

Everything is bounded by one deadline (`timeout`, 5 s by default): a node cut off
from the majority refuses the change with `Unavailable` instead of hanging, and
never diverges, since nothing is applied that was not committed.

Retrying is safe only when the proposal cannot have been appended anywhere: a
local `NotLeader`, a `Lost` entry (another entry won its index), or a peer that
could not be reached at all. A forwarded call that fails after it was sent may
have committed: that is answered as `Unavailable` with "outcome unknown", never
retried, so a change is never applied twice.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import trio

from cluster.raft.driver import Applied, Lost, RaftDriver
from cluster.raft.group import ConfChange, NotLeader, Refused
from cluster.transport import PeerTransport, PeerUnreachable, Replied, Undeliverable

log = logging.getLogger("leveret.cluster")

PROPOSE: Final = "raft.propose"
CHANGE_MEMBERSHIP: Final = "raft.change_membership"
DEFAULT_TIMEOUT: Final = 5.0
# How long to wait before asking again when nobody is known to lead (an election is on).
RETRY_PAUSE: Final = 0.05


@dataclass(frozen=True, slots=True)
class Unavailable:
    """The change was not (or not known to be) committed within the deadline."""

    group: str
    reason: str


@dataclass(frozen=True, slots=True)
class NotSent:
    """A peer call that never reached the peer (no link, refused): safe to retry."""

    reason: str


@dataclass(frozen=True, slots=True)
class NoAnswer:
    """A peer call sent but not answered (timeout, link lost, remote error): it may have run."""

    reason: str


class PeerCalls(Protocol):
    """Request/reply to another node; failures are values, never exceptions."""

    async def call(self, node: str, method: str, args: Mapping[str, Any],
                   timeout: float) -> Any | NotSent | NoAnswer: ...


Handler = Callable[[Mapping[str, Any]], Awaitable[Any]]


class GroupClient:
    def __init__(self, driver: RaftDriver, peers: PeerCalls, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.driver = driver
        self.peers = peers
        self.timeout = timeout

    def handlers(self) -> dict[str, Handler]:
        """The peer-call handlers this node serves for other nodes' forwarded changes."""
        return {PROPOSE: self._serve_propose, CHANGE_MEMBERSHIP: self._serve_change}

    async def propose(self, group: str, data: bytes) -> Applied | Refused | Unavailable:
        """Commit `data` to `group` from any node; the result of applying it here."""
        return await self._commit(group, PROPOSE, {"group": group, "data": data},
                                  lambda: self.driver.propose(group, data))

    async def change_membership(self, group: str, change: ConfChange) -> Applied | Refused | Unavailable:
        return await self._commit(group, CHANGE_MEMBERSHIP, {"group": group, "op": change.op, "node": change.node},
                                  lambda: self.driver.change_membership(group, change))

    async def _commit(self, group: str, method: str, args: Mapping[str, Any],
                      local: Callable[[], Awaitable[Applied | NotLeader | Refused | Lost]]
                      ) -> Applied | Refused | Unavailable:
        deadline = trio.current_time() + self.timeout
        with self.driver.watch_results(group) as watch, trio.move_on_at(deadline):
            leader: str | None = None
            while True:
                if leader is None or leader == self.driver.node.id:
                    outcome = await local()
                    if isinstance(outcome, Applied | Refused):
                        return outcome
                    if isinstance(outcome, Lost):
                        if "snapshot" in outcome.reason:
                            return Unavailable(group, f"outcome unknown: {outcome.reason}")
                        leader = None  # another leader's entry won that index: ours was never applied
                    else:
                        leader = outcome.leader
                    if leader is None or leader == self.driver.node.id:
                        await trio.sleep(RETRY_PAUSE)
                    continue
                reply = await self.peers.call(leader, method, args, max(deadline - trio.current_time(), 0.0))
                if isinstance(reply, NotSent):
                    leader = None
                    await trio.sleep(RETRY_PAUSE)
                    continue
                if isinstance(reply, NoAnswer) or not isinstance(reply, Mapping):
                    return Unavailable(group, f"outcome unknown: the leader {leader} did not answer "
                                              f"({reply.reason if isinstance(reply, NoAnswer) else 'bad reply'})")
                if "index" in reply:
                    if args.get("op") == "remove" and args.get("node") == self.driver.node.id:
                        # This node's own removal: the leader stops replicating to it at that
                        # entry, so it would never see the entry applied here. Committed is done.
                        return Applied(group, int(reply["index"]), None)
                    result = await watch.result(int(reply["index"]))
                    if isinstance(result, Lost):
                        return Unavailable(group, result.reason)
                    return result
                if "refused" in reply:
                    return Refused(group, str(reply["refused"]))
                if "unknown" in reply:
                    return Unavailable(group, f"outcome unknown: {reply['unknown']}")
                # Not the leader (any more): follow its hint, or ask our own driver again.
                hint = reply.get("not_leader")
                leader = hint if isinstance(hint, str) and hint != leader else None
                if leader is None:
                    await trio.sleep(RETRY_PAUSE)
        return Unavailable(group, f"not committed within {self.timeout:g} s: no leader with a majority "
                                  "can be reached from this node")

    # ------------------------------------------------------------------ serving other nodes

    async def _serve_propose(self, args: Mapping[str, Any]) -> dict[str, Any]:
        group, data = args.get("group"), args.get("data")
        if not isinstance(group, str) or not isinstance(data, bytes):
            return {"refused": "malformed proposal"}
        return await self._serve(lambda: self.driver.propose(group, data))

    async def _serve_change(self, args: Mapping[str, Any]) -> dict[str, Any]:
        group, op, node = args.get("group"), args.get("op"), args.get("node")
        if not (isinstance(group, str) and isinstance(op, str) and isinstance(node, str)):
            return {"refused": "malformed membership change"}
        if op not in ("add_learner", "add_voter", "promote", "remove"):
            return {"refused": f"unknown membership change {op!r}"}
        return await self._serve(lambda: self.driver.change_membership(group, ConfChange(op, node)))

    async def _serve(self, local: Callable[[], Awaitable[Applied | NotLeader | Refused | Lost]]) -> dict[str, Any]:
        # Bounded like the asker: a leader deposed meanwhile must not hold the call forever.
        with trio.move_on_after(self.timeout):
            outcome = await local()
            if isinstance(outcome, Applied):
                return {"index": outcome.index}
            if isinstance(outcome, NotLeader):
                return {"not_leader": outcome.leader}
            if isinstance(outcome, Refused):
                return {"refused": outcome.reason}
            if "snapshot" in outcome.reason:
                return {"unknown": outcome.reason}
            return {"not_leader": None}  # another entry won the index: ours was never applied
        return {"unknown": f"not committed within {self.timeout:g} s"}


class TransportCalls:
    """`PeerCalls` over a `cluster.transport.PeerTransport`: its call outcomes sorted into
    what forwarding needs to know — answered, surely not carried out (safe to retry), or
    perhaps carried out."""

    def __init__(self, transport: PeerTransport) -> None:
        self.transport = transport

    async def call(self, node: str, method: str, args: Mapping[str, Any],
                   timeout: float) -> Any | NotSent | NoAnswer:
        outcome = await self.transport.call(node, method, dict(args), timeout=timeout)
        if isinstance(outcome, Replied):
            return outcome.value
        if isinstance(outcome, Undeliverable) or (
                isinstance(outcome, PeerUnreachable) and not outcome.maybe_delivered):
            return NotSent(outcome.reason)
        return NoAnswer(str(outcome))
