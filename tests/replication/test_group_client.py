"""Forwarded proposals: any node commits through the leader and answers once applied locally.

Three (or four) Raft drivers in one process over `MemoryNetwork`, peer calls routed in
process with the same partitions, on trio's MockClock: deterministic."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import trio
import trio.testing

from cluster.group_client import GroupClient, NoAnswer, NotSent, Unavailable
from cluster.raft.driver import Applied, MemoryNetwork, RaftDriver
from cluster.raft.group import ConfChange, RaftConfig, Refused
from cluster.raft.node import RaftNode
from storage.interface import WriteBatch
from storage.memory_store import MemoryStore

GROUP = "metadata"


class Journal:
    """A state machine whose result is the journal's length after the entry."""

    def __init__(self) -> None:
        self.items: list[bytes] = []

    def apply(self, index: int, data: bytes) -> int:
        self.items.append(data)
        return len(self.items)

    def snapshot(self) -> bytes:
        return b"\0".join(self.items)

    def restore(self, data: bytes) -> None:
        self.items = data.split(b"\0") if data else []


class InProcessPeers:
    """Peer calls between the clients of one test, cut by the network's partitions."""

    def __init__(self, net: MemoryNetwork, me: str, clients: dict[str, GroupClient]) -> None:
        self.net, self.me, self.clients = net, me, clients
        self.calls = 0

    async def call(self, node: str, method: str, args: Mapping[str, Any], timeout: float) -> Any:
        self.calls += 1
        if node in self.net.down or self.me in self.net.down or node not in self.clients:
            return NotSent(f"{node} unreachable")
        with trio.move_on_after(timeout):
            return await self.clients[node].handlers()[method](args)
        return NoAnswer("timed out")


async def start(nursery: trio.Nursery, names: tuple[str, ...], voters: tuple[str, ...]
                ) -> tuple[MemoryNetwork, dict[str, RaftDriver], dict[str, GroupClient]]:
    net = MemoryNetwork()
    drivers: dict[str, RaftDriver] = {}
    clients: dict[str, GroupClient] = {}
    for i, name in enumerate(names):
        store = MemoryStore()

        async def write(batch: WriteBatch, store: MemoryStore = store) -> None:
            # In the loop, not a thread: the mock clock would jump while a thread writes.
            store.write(batch, sync=True)

        driver = RaftDriver(RaftNode(name, RaftConfig(), rng=random.Random(i)), store, net.transport(name),
                            tick_interval=0.01, write=write)
        driver.add_group(GROUP, Journal(), voters=voters if name in voters else ())
        drivers[name] = driver
        clients[name] = GroupClient(driver, InProcessPeers(net, name, clients), timeout=5.0)
        await nursery.start(driver.run)
    return net, drivers, clients


async def leader(drivers: dict[str, RaftDriver]) -> str:
    while True:
        for name, d in drivers.items():
            if d.node.is_leader(GROUP):
                return name
        await trio.sleep(0.01)


def journal(driver: RaftDriver) -> list[bytes]:
    return driver.machines[GROUP].items  # type: ignore[attr-defined]


async def test_a_follower_forwards_and_answers_after_applying_locally(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net, drivers, clients = await start(nursery, ("a", "b", "c"), ("a", "b", "c"))
        lead = await leader(drivers)
        follower = next(n for n in drivers if n != lead)
        for i in range(20):
            outcome = await clients[follower].propose(GROUP, b"x%d" % i)
            assert isinstance(outcome, Applied) and outcome.result == i + 1
            # Applied on the asking node before the answer, not only on the leader.
            assert journal(drivers[follower])[-1] == b"x%d" % i
        assert clients[follower].peers.calls == 20  # type: ignore[attr-defined]
        nursery.cancel_scope.cancel()


async def test_a_node_cut_off_from_the_majority_refuses_within_the_deadline(
        autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net, drivers, clients = await start(nursery, ("a", "b", "c"), ("a", "b", "c"))
        lead = await leader(drivers)
        assert isinstance(await clients[lead].propose(GROUP, b"before"), Applied)
        # The leader itself is cut off: its entry can never commit.
        net.down.add(lead)
        started = trio.current_time()
        outcome = await clients[lead].propose(GROUP, b"stranded")
        assert isinstance(outcome, Unavailable) and "not committed within 5 s" in outcome.reason
        assert trio.current_time() - started <= 5.0 + 0.1
        # The majority goes on, through either of its nodes.
        rest = [n for n in drivers if n != lead]
        assert isinstance(await clients[rest[0]].propose(GROUP, b"majority"), Applied)
        net.down.clear()
        await trio.sleep(2)
        logs = {n: journal(d) for n, d in drivers.items()}
        assert logs[rest[0]] == logs[rest[1]] == logs[lead] == [b"before", b"majority"]
        nursery.cancel_scope.cancel()


async def test_a_partitioned_follower_refuses_then_catches_up(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net, drivers, clients = await start(nursery, ("a", "b", "c"), ("a", "b", "c"))
        lead = await leader(drivers)
        follower = next(n for n in drivers if n != lead)
        net.down.add(follower)
        assert isinstance(await clients[follower].propose(GROUP, b"lost"), Unavailable)
        assert isinstance(await clients[lead].propose(GROUP, b"kept"), Applied)
        net.down.clear()
        await trio.sleep(2)
        assert journal(drivers[follower]) == [b"kept"]
        nursery.cancel_scope.cancel()


async def test_a_new_node_joins_as_learner_then_voter_from_any_member(
        autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net, drivers, clients = await start(nursery, ("a", "b", "c", "d"), ("a", "b", "c"))
        lead = await leader(drivers)
        for i in range(30):
            assert isinstance(await clients[lead].propose(GROUP, b"%d" % i), Applied)
        follower = next(n for n in ("a", "b", "c") if n != lead)
        assert isinstance(await clients[follower].change_membership(GROUP, ConfChange("add_learner", "d")), Applied)
        for _ in range(100):
            outcome = await clients[follower].change_membership(GROUP, ConfChange("promote", "d"))
            if isinstance(outcome, Applied):
                break
            assert isinstance(outcome, Refused) and "caught up" in outcome.reason
            await trio.sleep(0.05)
        else:
            raise AssertionError("the learner never caught up")
        status = drivers[lead].node.status(GROUP)
        assert status.voters == {"a", "b", "c", "d"} and not status.learners
        assert journal(drivers["d"]) == journal(drivers[lead])
        # The new voter forwards like any other member.
        outcome = await clients["d"].propose(GROUP, b"from d")
        assert isinstance(outcome, Applied) and journal(drivers["d"])[-1] == b"from d"
        nursery.cancel_scope.cancel()


async def test_a_malformed_forward_is_refused_not_applied(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net, drivers, clients = await start(nursery, ("a", "b", "c"), ("a", "b", "c"))
        lead = await leader(drivers)
        handlers = clients[lead].handlers()
        assert "refused" in await handlers["raft.propose"]({"group": GROUP, "data": "not bytes"})
        assert "refused" in await handlers["raft.change_membership"]({"group": GROUP, "op": "explode", "node": "x"})
        await trio.sleep(1)
        assert journal(drivers[lead]) == []
        nursery.cancel_scope.cancel()
