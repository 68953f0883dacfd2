"""A key-value store replicated by the simulated Raft groups, driven by concurrent clients,
checked for linearizability; and a deliberately broken read path the checker must catch.

Clients send each operation to a node that believes it leads, as a client holding a stale
leader hint would: nodes pause and resume unaware that a newer leader took over, so
deposed leaders are asked too."""

from __future__ import annotations

import math
import random
from dataclasses import asdict
from types import ModuleType

import msgpack
import pytest

from cluster.raft.group import Proposed, ReadState
from cluster.raft.sim import Sim, SimConfig
from storage.interface import LogEntry

from .linearizability import Op, check_history, check_register


class KVMachine:
    def __init__(self) -> None:
        self.data: dict[str, int] = {}

    def apply(self, index: int, payload: bytes) -> None:
        key, value = msgpack.unpackb(payload)
        self.data[key] = value

    def snapshot(self) -> bytes:
        return msgpack.packb(self.data)

    def restore(self, data: bytes) -> None:
        self.data = dict(msgpack.unpackb(data))


KEYS = ("x", "y")


class KVClients:
    """Clients issuing one operation at a time each; records invocations and responses."""

    def __init__(self, sim: Sim, clients: int, broken_reads: bool) -> None:
        self.sim = sim
        self.rng = random.Random(sim.seed * 7 + 1)
        self.broken = broken_reads
        self.clock = 0
        self.busy: set[int] = set()
        self.clients = clients
        self.history: list[Op] = []
        self.next_value = 0
        self.writes: dict[tuple[str, int], tuple[int, int, str, int, int, int]] = {}  # (node, index) → ...
        self.reads: dict[object, tuple[int, str, str, int, int]] = {}
        self.waiting_reads: list[tuple[int, str, str, int, int, int]] = []
        sim.step_hooks.append(self.step)
        sim.apply_hooks.append(self.applied)
        sim.read_hooks.append(self.read_state)

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def incarnation(self, node: str) -> int:
        n = self.sim.nodes[node]
        return n.incarnation if n.up else -1

    def step(self) -> None:
        sim = self.sim
        # Operations on a crashed node: a write's outcome is unknown, a read simply never returned.
        for (node, index), (client, term, key, value, inv, inc) in list(self.writes.items()):
            if self.incarnation(node) != inc:
                del self.writes[(node, index)]
                self.history.append(Op("write", key, value, inv))
                self.busy.discard(client)
        for ctx, (client, node, key, inv, inc) in list(self.reads.items()):
            if self.incarnation(node) != inc:
                del self.reads[ctx]
                self.busy.discard(client)
        for item in list(self.waiting_reads):
            client, node, key, index, inv, inc = item
            if self.incarnation(node) != inc:
                self.waiting_reads.remove(item)
                self.busy.discard(client)
        if not sim.faults:
            return
        for client in range(self.clients):
            if client in self.busy or self.rng.random() < 0.5:
                continue
            key = self.rng.choice(KEYS)
            if self.rng.random() < 0.5:
                leader = sim.client_leader("g1", self.rng)
                if leader is None:
                    continue
                self.next_value += 1
                inv = self.tick()
                r = leader.raft.propose("g1", msgpack.packb([key, self.next_value]))
                if isinstance(r, Proposed):
                    self.busy.add(client)
                    self.writes[(leader.id, r.index)] = (client, r.term, key, self.next_value, inv,
                                                        leader.incarnation)
            elif self.broken:
                # Broken on purpose: any replica answers from its local state, no ReadIndex.
                up = sim.up_nodes()
                if not up:
                    continue
                node = self.rng.choice(up)
                sm = node.machines.get("g1")
                if sm is None:
                    continue
                inv = self.tick()
                self.history.append(Op("read", key, sm.data.get(key), inv, self.tick()))
            else:
                leader = sim.client_leader("g1", self.rng)
                if leader is None:
                    continue
                inv = self.tick()
                ctx = ("kv", client, inv)
                if leader.raft.read_index("g1", ctx) is None:
                    self.busy.add(client)
                    self.reads[ctx] = (client, leader.id, key, inv, leader.incarnation)

    def applied(self, node: str, gid: str, e: LogEntry, result: object) -> None:
        w = self.writes.pop((node, e.index), None)
        if w is not None:
            client, term, key, value, inv, inc = w
            self.busy.discard(client)
            if term == e.term:
                self.history.append(Op("write", key, value, inv, self.tick()))
            # else: another entry won the index, so this write never took effect
        self.serve_reads()

    def read_state(self, node: str, rs: ReadState) -> None:
        r = self.reads.pop(rs.ctx, None)
        if r is None:
            return
        client, rnode, key, inv, inc = r
        if not rs.ok:
            self.busy.discard(client)
            return
        self.waiting_reads.append((client, rnode, key, rs.index, inv, inc))
        self.serve_reads()

    def serve_reads(self) -> None:
        for item in list(self.waiting_reads):
            client, node, key, index, inv, inc = item
            n = self.sim.nodes[node]
            if n.up and n.applied.get("g1", 0) >= index:
                self.waiting_reads.remove(item)
                self.busy.discard(client)
                self.history.append(Op("read", key, n.machines["g1"].data.get(key), inv, self.tick()))

    def finish(self) -> None:
        for (_, _), (_, _, key, value, inv, _) in self.writes.items():
            self.history.append(Op("write", key, value, inv))


CONFIG = SimConfig(nodes=3, groups=1, steps=150, crash=0.02, partition=0.04, membership=0.0, read=0.0,
                   propose=0.0, snapshot_every=10, pause=0.03)


def run_kv(seed: int, broken: bool, sim_module: ModuleType | None = None) -> tuple[list[str], list[Op]]:
    """One seed of KV clients; `sim_module` is a mutant core's sim (its own checks' failures end
    the run early, and the history so far is still checked)."""
    if sim_module is None:
        sim = Sim(seed, CONFIG, machine=KVMachine)
    else:
        sim = sim_module.Sim(seed, sim_module.SimConfig(**asdict(CONFIG)), machine=KVMachine)
    clients = KVClients(sim, 4, broken)
    try:
        for _ in range(CONFIG.steps):
            sim.step()
        sim.heal()
        for _ in range(60):
            sim.step()
    except AssertionError:
        if sim_module is None:
            raise
    clients.finish()
    return check_history(clients.history), clients.history


@pytest.mark.parametrize("block", range(4))
def test_kv_is_linearizable(block: int) -> None:
    ops_checked = 0
    for seed in range(block * 25, block * 25 + 25):
        bad, history = run_kv(seed, broken=False)
        assert not bad, (
            f"KV history not linearizable for keys {bad} (seed {seed}, ReadIndex reads)\n"
            f"reproduce: python -c 'from tests.raft.test_linearizability import run_kv; print(run_kv({seed}, False))'"
        )
        ops_checked += sum(1 for o in history if o.kind == "read" and o.response != math.inf)
    assert ops_checked > 200  # the clients really did read


def test_checker_catches_reads_from_any_replica() -> None:
    caught = [seed for seed in range(30) if run_kv(seed, broken=True)[0]]
    assert len(caught) >= 5, f"the broken read path went unnoticed (caught in seeds {caught})"


def test_checker_catches_a_core_reading_without_a_quorum() -> None:
    # Reads go to deposed leaders too, so a core serving ReadIndex without a quorum's
    # confirmation yields histories no sequential order explains.
    from .mutants import mutant_sim

    sim_module = mutant_sim("read-without-quorum")
    caught = [seed for seed in range(10) if run_kv(seed, broken=False, sim_module=sim_module)[0]]
    assert len(caught) >= 3, f"reads without a quorum went unnoticed (caught in seeds {caught})"


def test_checker_on_small_histories() -> None:
    w1 = Op("write", "k", 1, 1, 2)
    assert check_register([w1, Op("read", "k", 1, 3, 4)])
    assert not check_register([w1, Op("read", "k", None, 3, 4)])  # stale read after the write returned
    assert check_register([Op("write", "k", 1, 1, 5), Op("read", "k", None, 2, 3)])  # concurrent
    # A write of unknown outcome may have happened...
    assert check_register([Op("write", "k", 1, 1), Op("read", "k", 1, 3, 4)])
    # ...or not; but not both, once observed.
    assert not check_register([Op("write", "k", 1, 1), Op("read", "k", 1, 3, 4), Op("read", "k", None, 5, 6)])
    # Two sequential writes cannot be seen in the opposite order.
    h = [Op("write", "k", 1, 1, 2), Op("write", "k", 2, 3, 4), Op("read", "k", 2, 5, 6), Op("read", "k", 1, 7, 8)]
    assert not check_register(h)
    assert check_history([Op("write", "a", 1, 1, 2), Op("read", "b", None, 3, 4)]) == []
