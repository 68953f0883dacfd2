"""The trio driver: three nodes over an in-memory transport, on trio's MockClock."""

from __future__ import annotations

import random

import trio
import trio.testing

from cluster.raft.driver import Applied, MemoryNetwork, RaftDriver
from cluster.raft.group import NotLeader, RaftConfig
from cluster.raft.node import RaftNode
from storage.interface import AppendEntries, SetHardState, WriteBatch
from storage.memory_store import MemoryStore


class Counter:
    def __init__(self) -> None:
        self.total = 0

    def apply(self, index: int, data: bytes) -> int:
        self.total += int(data)
        return self.total

    def snapshot(self) -> bytes:
        return str(self.total).encode()

    def restore(self, data: bytes) -> None:
        self.total = int(data)


NODES = ("a", "b", "c")


async def start_cluster(nursery: trio.Nursery, net: MemoryNetwork, stores: dict[str, MemoryStore],
                        writes: list[WriteBatch], groups: tuple[str, ...] = ("q",)) -> dict[str, RaftDriver]:
    drivers = {}
    for i, nid in enumerate(NODES):
        node = RaftNode(nid, RaftConfig(), rng=random.Random(i))
        store = stores[nid]

        async def write(batch: WriteBatch, store: MemoryStore = store) -> None:
            writes.append(batch)
            store.write(batch, sync=True)

        d = RaftDriver(node, store, net.transport(nid), tick_interval=0.01, snapshot_every=20, write=write)
        for g in groups:
            d.add_group(g, Counter(), voters=NODES)
        drivers[nid] = d
        await nursery.start(d.run)
    return drivers


async def leader_of(drivers: dict[str, RaftDriver], group: str) -> RaftDriver:
    while True:
        for d in drivers.values():
            if d.node.is_leader(group):
                return d
        await trio.sleep(0.01)


async def test_propose_read_and_not_leader(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    stores = {n: MemoryStore() for n in NODES}
    writes: list[WriteBatch] = []
    async with trio.open_nursery() as nursery:
        drivers = await start_cluster(nursery, net, stores, writes)
        leader = await leader_of(drivers, "q")
        for i in range(1, 51):
            r = await leader.propose("q", b"2")
            assert r == Applied("q", r.index, 2 * i)
        assert await leader.read("q", lambda sm: sm.total) == 100
        follower = next(d for d in drivers.values() if d is not leader)
        r2 = await follower.propose("q", b"1")
        assert isinstance(r2, NotLeader) and r2.leader == leader.node.id
        assert isinstance(await follower.read("q", lambda sm: sm.total), NotLeader)
        await trio.sleep(1)
        assert all(d.machines["q"].total == 100 for d in drivers.values())
        # Compaction happened (snapshot_every=20).
        assert all(d.node.groups["q"].log.snap_index > 0 for d in drivers.values())
        nursery.cancel_scope.cancel()


async def test_one_write_per_cycle_for_all_groups(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    stores = {n: MemoryStore() for n in NODES}
    writes: list[WriteBatch] = []
    groups = tuple(f"q{i}" for i in range(20))
    async with trio.open_nursery() as nursery:
        drivers = await start_cluster(nursery, net, stores, writes, groups)
        leaders = [await leader_of(drivers, g) for g in groups]
        async with trio.open_nursery() as inner:
            for g, d in zip(groups, leaders):
                inner.start_soon(d.propose, g, b"1")
        # Some write carried entries of several groups at once.
        assert max(len({op.group for op in b.ops if isinstance(op, (AppendEntries, SetHardState))})
                   for b in writes) > 1
        nursery.cancel_scope.cancel()


async def test_restart_restores_from_the_store(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    stores = {n: MemoryStore() for n in NODES}
    writes: list[WriteBatch] = []
    async with trio.open_nursery() as nursery:
        drivers = await start_cluster(nursery, net, stores, writes)
        leader = await leader_of(drivers, "q")
        for _ in range(30):
            await leader.propose("q", b"1")
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    net2 = MemoryNetwork()
    crashed = {n: s.durable_copy() for n, s in stores.items()}
    async with trio.open_nursery() as nursery:
        drivers = await start_cluster(nursery, net2, crashed, [])
        leader = await leader_of(drivers, "q")
        r = await leader.propose("q", b"1")
        assert isinstance(r, Applied) and r.result == 31
        nursery.cancel_scope.cancel()


async def test_a_leader_sends_appends_while_its_own_write_is_under_way(
        autojump_clock: trio.testing.MockClock) -> None:
    """The followers write an entry while the leader's write of it has not finished; it is
    applied once the leader's write is done too."""
    net = MemoryNetwork()
    stores = {n: MemoryStore() for n in NODES}
    gates: dict[str, trio.Event] = {}
    drivers = {}
    async with trio.open_nursery() as nursery:
        for i, nid in enumerate(NODES):
            node = RaftNode(nid, RaftConfig(), rng=random.Random(i))

            async def write(batch: WriteBatch, store: MemoryStore = stores[nid], nid: str = nid) -> None:
                gate = gates.get(nid)
                if gate is not None and any(isinstance(op, AppendEntries) for op in batch.ops):
                    await gate.wait()
                store.write(batch, sync=True)

            d = RaftDriver(node, stores[nid], net.transport(nid), tick_interval=0.01, write=write)
            d.add_group("q", Counter(), voters=NODES)
            drivers[nid] = d
            await nursery.start(d.run)
        leader = await leader_of(drivers, "q")
        assert (await leader.propose("q", b"1")) == Applied("q", 2, 1)  # the term's own entry is 1
        gate = gates[leader.node.id] = trio.Event()
        last = stores[leader.node.id].last_index("q")
        results: list[object] = []

        async def propose() -> None:
            results.append(await leader.propose("q", b"5"))

        nursery.start_soon(propose)
        followers = [n for n in NODES if n != leader.node.id]
        with trio.fail_after(5):
            while not all(stores[n].last_index("q") > last for n in followers):
                await trio.sleep(0.001)
        # Both followers hold it durably; the leader's write has not happened, nothing applied.
        assert stores[leader.node.id].last_index("q") == last and results == []
        gate.set()
        with trio.fail_after(5):
            while not results:
                await trio.sleep(0.001)
        assert results == [Applied("q", last + 1, 6)]
        nursery.cancel_scope.cancel()
