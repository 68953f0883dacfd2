"""Raft core benchmark: `python -m cluster.raft.bench` prints the figures of docs/performance.md.

Figures (a benchmark run by hand, never a timed test):
1. simulation seeds per second (cluster.raft.sim, default fault mix);
2. proposals committed per second for one 3-node group, in process, with
   several proposals batched per driver cycle;
3. the same spread over 1,000 groups on the same 3 nodes;
4. idle cost of 1,000 idle groups on 3 nodes: CPU seconds per second and
   peer bytes per second (msgpack-encoded PeerBatches), with quiescence on
   and off.

The in-process harness is a synchronous driver: each cycle every node ticks
(if due), steps what it received, writes its Ready's batch to a MemoryStore
(one write per node per cycle), "sends" its PeerBatches (msgpack-encoded to
count bytes, delivered next cycle) and applies. No sockets and no fsync: the
figures are the core's cost, not the disk's.
"""

from __future__ import annotations

import argparse
import random
import time

import msgpack

from storage.memory_store import MemoryStore

from .group import Proposed, RaftConfig
from .messages import PeerBatch
from .node import RaftNode
from .sim import SimConfig, run_seed

IDS = ("n1", "n2", "n3")


class Harness:
    def __init__(self, groups: int, cfg: RaftConfig, encode: bool = True) -> None:
        self.nodes = {i: RaftNode(i, cfg, rng=random.Random(k)) for k, i in enumerate(IDS)}
        self.stores = {i: MemoryStore() for i in IDS}
        self.inbox: dict[str, list[PeerBatch]] = {i: [] for i in IDS}
        self.encode = encode
        self.bytes = 0
        self.frames = 0
        self.committed = 0
        self.groups = [f"q{k}" for k in range(groups)]
        for g in self.groups:
            for n in self.nodes.values():
                n.create_group(g, IDS)
        # Spread leaders evenly, as placement would.
        for k, g in enumerate(self.groups):
            self.nodes[IDS[k % 3]].campaign(g)
        for _ in range(50):
            self.cycle(tick=False)
        for _ in range(cfg.election_ticks * 3):
            self.cycle(tick=True)

    def leader(self, g: str) -> RaftNode:
        for n in self.nodes.values():
            if n.is_leader(g):
                return n
        raise RuntimeError(f"no leader for {g}")

    def cycle(self, tick: bool) -> None:
        for i, node in self.nodes.items():
            inbox, self.inbox[i] = self.inbox[i], []
            for b in inbox:
                node.step(b)
            if tick:
                node.tick()
            rd = node.ready()
            if rd is None:
                continue
            if rd.batch.ops:
                self.stores[i].write(rd.batch, sync=True)
            for b in rd.messages:
                if self.encode:
                    wire = msgpack.packb(b.to_wire())
                    self.bytes += len(wire)
                    b = PeerBatch.from_wire(msgpack.unpackb(wire))
                self.frames += 1
                self.inbox[b.dst].append(b)
            for entries in rd.committed.values():
                if i == "n1":
                    self.committed += sum(1 for e in entries if e.data[:1] == b"\x00")
            node.advance(rd)


def seeds_per_second(n: int) -> float:
    t = time.perf_counter()
    for s in range(n):
        run_seed(s, SimConfig())
    return n / (time.perf_counter() - t)


def throughput(groups: int, per_cycle: int, seconds: float) -> float:
    cfg = RaftConfig(max_inflight=256, max_append_entries=4096)
    h = Harness(groups, cfg, encode=True)
    leaders = {g: h.leader(g) for g in h.groups}
    payload = b"x" * 64
    start_committed = h.committed
    t0 = time.perf_counter()
    cycles = 0
    while time.perf_counter() - t0 < seconds:
        for k in range(per_cycle):
            g = h.groups[(cycles * per_cycle + k) % groups]
            r = leaders[g].propose(g, payload)
            assert isinstance(r, Proposed)
        h.cycle(tick=cycles % 20 == 0)
        cycles += 1
    for _ in range(5):
        h.cycle(tick=False)
    return (h.committed - start_committed) / (time.perf_counter() - t0)


def idle(groups: int, quiesce: bool, ticks_per_second: float, seconds: float) -> tuple[float, float, int]:
    cfg = RaftConfig(quiesce=quiesce)
    h = Harness(groups, cfg, encode=True)
    for _ in range(cfg.quiesce_after_ticks + cfg.election_ticks * 2):
        h.cycle(tick=True)
    ticks = int(seconds * ticks_per_second)
    b0 = h.bytes
    c0 = time.process_time()
    for _ in range(ticks):
        h.cycle(tick=True)
    cpu = time.process_time() - c0
    active = sum(len(n.active) for n in h.nodes.values())
    return cpu / seconds, (h.bytes - b0) / seconds, active


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m cluster.raft.bench")
    p.add_argument("--seeds", type=int, default=200)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--tick", type=float, default=0.05, help="tick interval in seconds for the idle figures")
    a = p.parse_args(argv)
    print(f"simulation: {seeds_per_second(a.seeds):.1f} seeds/s (default fault mix, one core)")
    for per in (1, 16, 256):
        print(f"1 group x 3 nodes, {per:>3} proposals/cycle: {throughput(1, per, a.seconds):,.0f} commits/s")
    for per in (1000, 4000):
        print(f"1000 groups x 3 nodes, {per} proposals/cycle: {throughput(1000, per, a.seconds):,.0f} commits/s")
    for q in (True, False):
        cpu, bps, active = idle(1000, q, 1 / a.tick, a.seconds * 4)
        print(f"1000 idle groups x 3 nodes, quiescence {'on ' if q else 'off'}: "
              f"{cpu * 100:.2f}% of a core, {bps:,.0f} peer bytes/s, {active} groups still ticking")


if __name__ == "__main__":
    main()
