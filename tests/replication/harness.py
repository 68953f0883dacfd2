"""Raft drivers in one process over `MemoryNetwork`, with peer calls routed in process and
cut by the same partitions, on trio's MockClock: deterministic cluster tests."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import trio

from cluster.group_client import GroupClient, NoAnswer, NotSent
from cluster.raft.driver import MemoryNetwork, RaftDriver
from cluster.raft.group import RaftConfig
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


