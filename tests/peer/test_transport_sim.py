"""PeerTransport over a simulated network: the test owns the clock (trio's MockClock, autojump)
and the links (memory stream pairs that delay, stall across partitions and break on demand).

Each node is a `PeerTransport` whose dials go through `SimNetwork`, which runs the target's
real peer-port code (`cluster.peerport.serve_connection`: handshake, purpose dispatch,
refusal log) on the other end of a memory stream pair. A partition stalls writes in the cut
direction (as TCP does while its packets are dropped) and makes new dials hang; healing lets
the stalled bytes through. Delays are drawn per write from the seed, so different links
reorder against each other while each link keeps its order, as TCP does.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from cluster.logtext import RefusalLog
from cluster import peer
from cluster.peer import Purpose, RefusalKind
from cluster.peerport import serve_connection
from cluster.raft.messages import Heartbeat, InstallSnapshot, PeerBatch
from storage.interface import Snapshot
from cluster.transport import (
    CallTimedOut,
    PeerTransport,
    PeerUnreachable,
    RemoteFailure,
    Replied,
    Undeliverable,
)

COOKIE = "SIMULATEDCOOKIESIMUL"


class SimNetwork:
    def __init__(self, nursery: trio.Nursery, seed: int, max_delay: float = 0.0) -> None:
        self.nursery = nursery
        self.rng = random.Random(seed)
        self.max_delay = max_delay
        self.nodes: dict[str, tuple[PeerTransport, str]] = {}
        self.blocked: set[tuple[str, str]] = set()  # (from, to): bytes from `from` do not reach `to`
        self.changed = trio.Event()
        self.streams: dict[frozenset[str], list[trio.abc.Stream]] = defaultdict(list)
        self.refusals: dict[str, RefusalLog] = {}  # each node's peer port has its own

    def add(self, name: str, cookie: str = COOKIE, **options: Any) -> PeerTransport:
        options.setdefault("rng", random.Random(self.rng.random()))
        transport = PeerTransport(name, cookie, **options)
        self.nodes[name] = (transport, cookie)
        self.refusals[name] = RefusalLog(logging.getLogger("leveret.peer"))
        return transport

    def dial(self, src: str, dst: str) -> Any:
        async def dial(local_address: str | None) -> trio.abc.Stream:
            while (src, dst) in self.blocked or (dst, src) in self.blocked:
                await self.wait_change()  # a SYN into a partition: the dialler's timeout decides
            if dst not in self.nodes:
                raise ConnectionRefusedError(111, "Connection refused")
            left, right = trio.testing.memory_stream_pair()
            connector, acceptor = SimStream(self, left, src, dst), SimStream(self, right, dst, src)
            self.streams[frozenset((src, dst))] += [connector, acceptor]
            target, cookie = self.nodes[dst]
            self.nursery.start_soon(partial(serve_connection, {Purpose.PEER: target.serve_inbound}, self.refusals[dst],
                                            acceptor, cookie=cookie, node_name=dst))
            return connector

        return dial

    def connect_all(self) -> None:
        for name, (transport, _) in self.nodes.items():
            transport.set_peers({other: self.dial(name, other) for other in self.nodes if other != name})

    async def wait_change(self) -> None:
        await self.changed.wait()

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def partition(self, a: str, b: str, *, one_way: bool = False) -> None:
        self.blocked.add((a, b))
        if not one_way:
            self.blocked.add((b, a))
        self._changed()

    def heal(self) -> None:
        self.blocked.clear()
        self._changed()

    def cut(self, a: str, b: str) -> None:
        """Every live link between a and b breaks at once (a reset connection)."""
        for stream in self.streams.pop(frozenset((a, b)), []):
            stream.broken = True
        self._changed()


class SimStream(trio.abc.Stream):
    def __init__(self, net: SimNetwork, inner: trio.abc.Stream, src: str, dst: str) -> None:
        self.net, self.inner, self.src, self.dst = net, inner, src, dst
        self.broken = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        while (self.src, self.dst) in self.net.blocked and not self.broken:
            await self.net.wait_change()
        if self.net.max_delay:
            await trio.sleep(self.net.rng.uniform(0, self.net.max_delay))
        if self.broken:
            await trio.aclose_forcefully(self.inner)
            raise trio.BrokenResourceError("connection reset (simulated)")
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        while True:
            if self.broken:
                await trio.aclose_forcefully(self.inner)
                raise trio.BrokenResourceError("connection reset (simulated)")
            with trio.move_on_after(0.05):  # look at `broken` again now and then
                return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


def batch(src: str, dst: str, n: int) -> PeerBatch:
    return PeerBatch(src, dst, 7, (Heartbeat("g", n, src, dst, commit=n),))


class Recorder:
    """Everything a node received: casts by sender in order, calls by sender, Raft batches."""

    def __init__(self, transport: PeerTransport) -> None:
        self.casts: dict[str, list[Any]] = defaultdict(list)
        self.calls: dict[str, list[Any]] = defaultdict(list)
        transport.on_cast("note", lambda src, payload: self.casts[src].append(payload))

        async def echo(src: str, args: Any) -> Any:
            self.calls[src].append(args)
            if args == "fail":
                raise ValueError("asked to fail")
            return {"from": transport.name, "args": args}

        transport.on_call("echo", echo)


async def until(predicate: Any, timeout: float = 60.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


async def start(nursery: trio.Nursery, net: SimNetwork) -> None:
    net.connect_all()
    for transport, _ in net.nodes.values():
        await nursery.start(transport.run)


async def test_casts_calls_and_raft_batches_between_three_nodes(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = SimNetwork(nursery, seed=1, max_delay=0.02)
        nodes = {name: net.add(name) for name in ("a@h", "b@h", "c@h")}
        recorders = {name: Recorder(t) for name, t in nodes.items()}
        await start(nursery, net)
        for i in range(20):
            for src, t in nodes.items():
                for dst in nodes:
                    if dst != src:
                        assert t.cast(dst, "note", i) is None
                        t.send(batch(src, dst, i))
            await trio.sleep(net.rng.uniform(0, 0.01))
        assert await nodes["a@h"].call("b@h", "echo", [1, "x"]) == Replied({"from": "b@h", "args": [1, "x"]})
        failed = await nodes["c@h"].call("a@h", "echo", "fail")
        assert failed == RemoteFailure("a@h", "echo", "ValueError: asked to fail")
        unknown = await nodes["c@h"].call("a@h", "nope", None)
        assert unknown == RemoteFailure("a@h", "nope", "node 'a@h' has no handler for 'nope'")
        await until(lambda: all(len(r.casts[s]) == 20 for n, r in recorders.items() for s in nodes if s != n))
        for name, recorder in recorders.items():
            for src in nodes:
                if src != name:
                    assert recorder.casts[src] == list(range(20))  # each link keeps its order
        received = {name: [] for name in nodes}
        for name, t in nodes.items():
            while True:
                try:
                    received[name].append(t.received.receive_nowait())
                except trio.WouldBlock:
                    break
        for name in nodes:
            by_src = defaultdict(list)
            for b in received[name]:
                assert b.dst == name
                by_src[b.src].append(b.messages[0].term)
            assert by_src == {src: list(range(20)) for src in nodes if src != name}
        assert all(t.reachable() == frozenset(nodes) - {n} for n, t in nodes.items())
        nursery.cancel_scope.cancel()


async def test_everything_queued_in_a_cycle_goes_out_as_one_frame(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = SimNetwork(nursery, seed=2)
        a = net.add("a@h", heartbeat_interval=1000, link_timeout=2000)
        b = net.add("b@h", heartbeat_interval=1000, link_timeout=2000)
        recorder = Recorder(b)
        await start(nursery, net)
        await until(lambda: a.reachable() == {"b@h"})
        await until(lambda: b.statistics()["a@h"].frames_received >= 1)
        before_sent = a.statistics()["b@h"].frames_sent
        before_received = b.statistics()["a@h"].frames_received
        for i in range(100):  # one driver cycle's worth, no checkpoint in between
            assert a.cast("b@h", "note", i) is None
        for i in range(5):
            a.send(batch("a@h", "b@h", i))
        assert a.statistics()["b@h"].queued_items == 105
        await until(lambda: len(recorder.casts["a@h"]) == 100)
        assert recorder.casts["a@h"] == list(range(100))
        assert [b.received.receive_nowait().messages[0].term for _ in range(5)] == list(range(5))
        assert a.statistics()["b@h"].frames_sent - before_sent == 1
        assert b.statistics()["a@h"].frames_received - before_received == 1
        # calls made together share a frame too, and so do their replies
        results: list[Any] = []

        async def one_call(n: int) -> None:
            results.append(await a.call("b@h", "echo", n))

        before_a, before_b = a.statistics()["b@h"], b.statistics()["a@h"]
        async with trio.open_nursery() as calls:
            for n in range(10):
                calls.start_soon(one_call, n)
        assert sorted(r.value["args"] for r in results) == list(range(10))
        after_a, after_b = a.statistics()["b@h"], b.statistics()["a@h"]
        assert after_a.frames_sent - before_a.frames_sent == 1
        assert after_b.frames_received - before_b.frames_received == 1
        assert after_a.frames_received - before_a.frames_received == 1  # the ten replies
        nursery.cancel_scope.cancel()


async def test_partition_fails_calls_as_values_and_heals_by_itself(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = SimNetwork(nursery, seed=3, max_delay=0.01)
        a, b = net.add("a@h"), net.add("b@h")
        recorder = Recorder(b)
        Recorder(a)
        await start(nursery, net)
        await until(lambda: a.reachable() == {"b@h"} and b.reachable() == {"a@h"})
        seen: list[frozenset[str]] = []

        async def watch() -> None:
            while True:
                seen.append(await a.wait_connectivity_change())

        nursery.start_soon(watch)
        net.partition("a@h", "b@h")
        outcome = await a.call("b@h", "echo", "lost", timeout=2)
        assert isinstance(outcome, CallTimedOut | PeerUnreachable)
        partitioned_at = trio.current_time()
        await until(lambda: not a.reachable() and not b.reachable())
        assert trio.current_time() - partitioned_at <= 4.0 + 1  # the link timeout, and a write's delay
        # cut off: calls fail at once or within their timeout, never hang, never raise
        for _ in range(5):
            outcome = await a.call("b@h", "echo", "x", timeout=1)
            assert isinstance(outcome, PeerUnreachable | CallTimedOut)
        net.heal()
        await until(lambda: a.reachable() == {"b@h"} and b.reachable() == {"a@h"}, timeout=30)
        assert a.statistics()["b@h"].reconnects >= 1
        assert seen == [frozenset(), frozenset({"b@h"})]
        assert await a.call("b@h", "echo", "back") == Replied({"from": "b@h", "args": "back"})
        assert a.cast("b@h", "note", "after heal") is None
        await until(lambda: recorder.casts["a@h"][-1:] == ["after heal"])
        nursery.cancel_scope.cancel()


async def test_a_broken_link_fails_the_calls_written_on_it_and_reconnects(
        autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = SimNetwork(nursery, seed=4)
        a, b = net.add("a@h"), net.add("b@h")
        release = trio.Event()

        async def slow(src: str, args: Any) -> Any:
            await release.wait()
            return "done"

        b.on_call("slow", slow)
        Recorder(b)
        await start(nursery, net)
        await until(lambda: a.reachable() == {"b@h"})
        outcomes: list[Any] = []

        async def call_slow() -> None:
            outcomes.append(await a.call("b@h", "slow", None, timeout=100))

        nursery.start_soon(call_slow)
        await until(lambda: a.statistics()["b@h"].calls_waiting == 1 and a.statistics()["b@h"].queued_items == 0)
        await trio.sleep(0.1)
        net.cut("a@h", "b@h")
        await until(lambda: bool(outcomes))
        assert isinstance(outcomes[0], PeerUnreachable) and "may have been carried out" in outcomes[0].reason
        release.set()
        await until(lambda: a.reachable() == {"b@h"})
        assert await a.call("b@h", "echo", 1) == Replied({"from": "b@h", "args": 1})
        assert a.statistics()["b@h"].reconnects == 1
        nursery.cancel_scope.cancel()


async def test_nothing_from_a_node_with_another_cookie_is_delivered(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with trio.open_nursery() as nursery:
        net = SimNetwork(nursery, seed=5)
        a = net.add("a@h")
        stranger = net.add("x@h", cookie="ANOTHERCOOKIEANOTHER")
        recorder = Recorder(a)
        Recorder(stranger)
        await start(nursery, net)
        outcome = await stranger.call("a@h", "echo", "let me in")
        assert isinstance(outcome, PeerUnreachable) and outcome.cookie_differs
        assert "the cookie differs" in outcome.reason
        assert stranger.cast("a@h", "note", "psst") is not None  # refused at once while backing off
        stranger.send(batch("x@h", "a@h", 1))
        await trio.sleep(30)  # many redials
        assert not recorder.casts and not recorder.calls
        with pytest.raises(trio.WouldBlock):
            a.received.receive_nowait()
        assert stranger.statistics()["a@h"].refusal is RefusalKind.COOKIE
        assert a.statistics()["x@h"].refusal is RefusalKind.COOKIE  # and a's dials to it are refused too
        assert not a.reachable() and not stranger.reachable()
        nursery.cancel_scope.cancel()
    acceptor_lines = [r.getMessage() for r in caplog.records if r.name == "leveret.peer"]
    connector_lines = [r.getMessage() for r in caplog.records if r.name == "leveret.transport"
                       and "refused" in r.getMessage()]
    # one line per side and kind within the rate-limit interval, however many redials
    assert ("connection attempt from node 'x@h' (None) refused: the cookie differs: "
            "authentication failed (the peer could not prove this node's cookie)") in acceptor_lines
    assert len(acceptor_lines) <= 2 * 4
    assert ("peer link to node 'a@h' refused: the cookie differs: authentication failed (rejected by the "
            "remote node), please check the cookie") in connector_lines
    assert len(connector_lines) <= 2 * 4  # 30 s, one line per 10 s per direction


async def test_full_outbox_drops_raft_but_fails_casts_and_calls_as_values(
        autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = SimNetwork(nursery, seed=6)
        a = net.add("a@h", max_outbox_bytes=2000)
        net.add("b@h")
        net.partition("a@h", "b@h")  # the first dial hangs: everything stays queued
        await start(nursery, net)
        assert a.cast("b@h", "note", b"x" * 1500) is None
        full = a.cast("b@h", "note", b"y" * 1000)
        assert isinstance(full, Undeliverable) and "outbox full" in full.reason
        a.send(batch("a@h", "b@h", 1))
        a.send(PeerBatch("a@h", "b@h", 7, (Heartbeat("g" * 1000, 1, "a@h", "b@h", commit=1),)))
        assert a.statistics()["b@h"].raft_batches_dropped == 1  # the small one fitted
        assert isinstance(await a.call("b@h", "echo", b"z" * 1000), Undeliverable)
        too_big = a.cast("b@h", "note", object())
        assert isinstance(too_big, Undeliverable) and "cannot be encoded" in too_big.reason
        assert a.cast("nobody@h", "note", 1) == PeerUnreachable("nobody@h", "not a peer of this node")
        # the dial times out: the queued cast and batch are given up and counted
        await until(lambda: a.statistics()["b@h"].state == "backoff")
        stats = a.statistics()["b@h"]
        assert stats.casts_dropped == 1 and stats.raft_batches_dropped == 2 and stats.queued_items == 0
        nursery.cancel_scope.cancel()


async def test_reconnect_backoff_doubles_is_bounded_and_jittered(autojump_clock: trio.testing.MockClock) -> None:
    attempts: list[float] = []

    async def refused(local_address: str | None) -> trio.abc.Stream:
        attempts.append(trio.current_time())
        raise ConnectionRefusedError(111, "Connection refused")

    transport = PeerTransport("a@h", COOKIE, rng=random.Random(9), initial_backoff=0.1, max_backoff=2.0)
    transport.set_peers({"b@h": refused})
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        await trio.sleep(30)
        outcome = await transport.call("b@h", "echo", 1)
        nursery.cancel_scope.cancel()
    assert isinstance(outcome, PeerUnreachable) and "Connection refused" in outcome.reason
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    for n, gap in enumerate(gaps):
        ceiling = min(2.0, 0.1 * 2**n)
        assert ceiling / 2 <= gap < ceiling + 1e-9
    assert len(set(round(g, 6) for g in gaps[-5:])) == 5  # jittered, not in lock-step
    assert max(gaps) < 2.0


async def test_peers_added_and_removed_at_runtime(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = SimNetwork(nursery, seed=7)
        a, b, c = net.add("a@h"), net.add("b@h"), net.add("c@h")
        Recorder(b)
        Recorder(c)
        await nursery.start(a.run)
        await nursery.start(b.run)
        await nursery.start(c.run)
        a.set_peers({"b@h": net.dial("a@h", "b@h")})
        assert await a.call("b@h", "echo", 1) == Replied({"from": "b@h", "args": 1})
        assert isinstance(await a.call("c@h", "echo", 1), PeerUnreachable)
        a.set_peers({"b@h": net.dial("a@h", "b@h"), "c@h": net.dial("a@h", "c@h")})
        assert await a.call("c@h", "echo", 2) == Replied({"from": "c@h", "args": 2})
        # c does not know a, yet answers it: replies go back on the link the request came by
        assert c.peers() == frozenset()
        a.set_peers({"c@h": net.dial("a@h", "c@h")})
        assert a.peers() == {"c@h"} and a.reachable() == {"c@h"}
        assert isinstance(await a.call("b@h", "echo", 3), PeerUnreachable)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("seed", [*range(6), *(pytest.param(n, marks=pytest.mark.slow) for n in range(6, 100))])
async def test_random_faults_then_heal(seed: int, autojump_clock: trio.testing.MockClock) -> None:
    """Random casts, calls, partitions (both ways and one way), resets and heals. Every call ends
    in a value; every node receives each sender's casts in order without duplicates (a subsequence
    of what was cast); after the last heal everyone reaches everyone and calls succeed, untouched."""
    rng = random.Random(seed)
    async with trio.open_nursery() as nursery:
        net = SimNetwork(nursery, seed=seed, max_delay=0.05)
        names = ["a@h", "b@h", "c@h"]
        nodes = {name: net.add(name) for name in names}
        recorders = {name: Recorder(t) for name, t in nodes.items()}
        await start(nursery, net)
        sent: dict[tuple[str, str], list[int]] = defaultdict(list)
        outcomes: list[Any] = []

        async def one_call(src: str, dst: str, n: int) -> None:
            outcomes.append(await nodes[src].call(dst, "echo", n, timeout=rng.uniform(0.5, 5)))

        for step in range(300):
            src, dst = rng.sample(names, 2)
            roll = rng.random()
            if roll < 0.5:
                if nodes[src].cast(dst, "note", step) is None:
                    sent[(src, dst)].append(step)
            elif roll < 0.7:
                nursery.start_soon(one_call, src, dst, step)
            elif roll < 0.75:
                net.partition(src, dst, one_way=rng.random() < 0.3)
            elif roll < 0.8:
                net.cut(src, dst)
            elif roll < 0.9:
                net.heal()
            await trio.sleep(rng.uniform(0, 0.5))
        net.heal()
        await until(lambda: all(t.reachable() == frozenset(names) - {n} for n, t in nodes.items()), timeout=60)
        for src in names:
            for dst in names:
                if src != dst:
                    assert await nodes[src].call(dst, "echo", "final") == Replied({"from": dst, "args": "final"})
        await trio.sleep(10)  # every call made during the faults has ended by now
        assert all(isinstance(o, Replied | PeerUnreachable | CallTimedOut) for o in outcomes)
        assert any(isinstance(o, Replied) for o in outcomes)
        assert any(not isinstance(o, Replied) for o in outcomes)  # the faults did bite
        for (src, dst), steps in sent.items():
            got = recorders[dst].casts[src]
            assert len(got) == len(set(got))
            assert got == [s for s in steps if s in set(got)]  # in order, a subsequence
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("items", [
    [["raft", PeerBatch("z@h", "a@h", 1).to_wire()]],  # speaks for another node
    [["raft", PeerBatch("b@h", "q@h", 1).to_wire()]],  # to another node
    [["raft", ["b@h"]]],
    [["reply", 1, True, "unasked"]],  # replies go the other way
    [["cast", 5, "kind must be a string"]],
    "not a list",
])
async def test_a_peer_breaking_the_protocol_is_cut_off_and_told_why(items: Any,
                                                                    autojump_clock: trio.testing.MockClock) -> None:
    a = PeerTransport("a@h", COOKIE)
    recorder = Recorder(a)
    left, right = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(serve_connection, {Purpose.PEER: a.serve_inbound},
                                   RefusalLog(logging.getLogger("leveret.peer")), right, cookie=COOKIE,
                                   node_name="a@h"))
        link = await peer.open_peer_link(left, cookie=COOKIE, local_name="b@h", remote_name="a@h",
                                         purpose=Purpose.PEER)
        await link.send([["cast", "note", "before"]])
        await link.send(items)
        with pytest.raises(peer.ProtocolViolation, match="unexpected item|malformed Raft batch|a Raft batch from|"
                                                         "not a list of items"):
            await link.receive()
    assert recorder.casts == {"b@h": ["before"]}
    with pytest.raises(trio.WouldBlock):
        a.received.receive_nowait()


async def test_raft_drivers_replicate_over_the_transport_through_a_partition(
        autojump_clock: trio.testing.MockClock) -> None:
    """The transport is the driver's `Transport`: three drivers elect, replicate, lose a node
    to a partition, keep committing with the majority, and the cut-off node catches up after
    the heal without anyone reconnecting by hand."""
    from cluster.raft.driver import Applied, RaftDriver
    from cluster.raft.group import RaftConfig
    from cluster.raft.node import RaftNode
    from storage.memory_store import MemoryStore
    from tests.raft.test_driver import Counter, leader_of

    names = ("a@h", "b@h", "c@h")
    async with trio.open_nursery() as nursery:
        net = SimNetwork(nursery, seed=11, max_delay=0.005)
        transports = {name: net.add(name) for name in names}
        await start(nursery, net)
        drivers = {}
        for i, name in enumerate(names):
            driver = RaftDriver(RaftNode(name, RaftConfig(), rng=random.Random(i)), MemoryStore(), transports[name],
                                tick_interval=0.05)
            driver.add_group("meta", Counter(), voters=names)
            await nursery.start(driver.run)
            drivers[name] = driver

        first = await leader_of(drivers, "meta")
        for _ in range(10):
            assert isinstance(await first.propose("meta", b"1"), Applied)
        cut_off = next(name for name in names if name != first.node.id)
        for other in names:
            if other != cut_off:
                net.partition(cut_off, other)
        with trio.fail_after(60):
            while True:  # the majority keeps committing (maybe after electing a new leader)
                current = await leader_of(drivers, "meta")
                if current.node.id != cut_off and isinstance(await current.propose("meta", b"1"), Applied):
                    break
        majority_total = current.machines["meta"].total
        assert drivers[cut_off].machines["meta"].total < majority_total
        net.heal()
        await until(lambda: drivers[cut_off].machines["meta"].total == majority_total, timeout=60)
        assert transports[cut_off].reachable() == frozenset(names) - {cut_off}
        nursery.cancel_scope.cancel()


async def test_a_cycle_beyond_the_frame_limit_is_split_into_as_few_frames_as_fit_and_a_large_item_chunked(
        autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = SimNetwork(nursery, seed=12)
        options = {"max_frame_size": 1024, "max_message_size": 8192, "heartbeat_interval": 1000,
                   "link_timeout": 2000}
        a, b = net.add("a@h", **options), net.add("b@h", **options)
        recorder = Recorder(b)
        await start(nursery, net)
        await until(lambda: a.reachable() == {"b@h"} and b.statistics()["a@h"].frames_received >= 1)
        before = b.statistics()["a@h"].frames_received
        payloads = [bytes([n]) * 300 for n in range(10)]  # three fit in a frame of 1024 bytes
        for payload in payloads:
            assert a.cast("b@h", "note", payload) is None
        too_big = a.cast("b@h", "note", b"x" * 8192)
        assert isinstance(too_big, Undeliverable) and "exceed the peer message limit" in too_big.reason
        await until(lambda: len(recorder.casts["a@h"]) == 10)
        assert recorder.casts["a@h"] == payloads
        assert b.statistics()["a@h"].frames_received - before == 4
        # beyond the frame limit but within the message limit: carried in chunks of the frame's size
        before = b.statistics()["a@h"].frames_received
        assert a.cast("b@h", "note", b"x" * 3000) is None
        await until(lambda: len(recorder.casts["a@h"]) == 11)
        assert recorder.casts["a@h"][-1] == b"x" * 3000
        assert b.statistics()["a@h"].frames_received - before == 3
        nursery.cancel_scope.cancel()


async def test_a_call_given_up_before_it_was_written_never_goes_out(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = SimNetwork(nursery, seed=13)
        a, b = net.add("a@h", connect_timeout=100), net.add("b@h")
        recorder = Recorder(b)
        net.partition("a@h", "b@h")  # the dial hangs: the calls wait in the outbox
        await start(nursery, net)
        assert await a.call("b@h", "echo", "timed out", timeout=1) == CallTimedOut("b@h", "echo", 1)
        with trio.move_on_after(1):
            await a.call("b@h", "echo", "cancelled", timeout=50)
        assert a.statistics()["b@h"].queued_items == 0 and a.statistics()["b@h"].calls_waiting == 0
        net.heal()
        assert await a.call("b@h", "echo", "after") == Replied({"from": "b@h", "args": "after"})
        assert recorder.calls["a@h"] == ["after"]
        nursery.cancel_scope.cancel()


async def test_failing_or_oversized_answers_are_remote_failures_and_the_link_survives(
        autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = SimNetwork(nursery, seed=14)
        options = {"max_frame_size": 64 * 1024, "max_message_size": 96 * 1024}
        a, b = net.add("a@h", **options), net.add("b@h", **options)
        Recorder(b)

        async def huge_error(src: str, args: Any) -> Any:
            raise RuntimeError("e" * 100_000)

        async def huge_reply(src: str, args: Any) -> Any:
            return b"r" * args

        async def unencodable(src: str, args: Any) -> Any:
            return object()

        b.on_call("huge_error", huge_error)
        b.on_call("huge_reply", huge_reply)
        b.on_call("unencodable", unencodable)
        await start(nursery, net)
        error = await a.call("b@h", "huge_error", None)
        assert isinstance(error, RemoteFailure) and error.text.startswith("RuntimeError: eee")
        assert len(error.text) <= 4096 + 3
        reply = await a.call("b@h", "huge_reply", 100_000)
        assert isinstance(reply, RemoteFailure) and "exceeds the peer message limit" in reply.text
        # beyond the frame limit, within the message limit: the reply comes in chunks
        assert await a.call("b@h", "huge_reply", 70_000) == Replied(b"r" * 70_000)
        assert isinstance(await a.call("b@h", "unencodable", None), RemoteFailure)
        assert await a.call("b@h", "echo", 1) == Replied({"from": "b@h", "args": 1})
        assert a.statistics()["b@h"].reconnects == 0
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- large items in chunks


def snapshot_batch(src: str, dst: str, size: int, group: str = "q1") -> PeerBatch:
    data = random.Random(size).randbytes(size)  # incompressible, and checked byte for byte
    return PeerBatch(src, dst, 7, (InstallSnapshot(group, 3, src, dst, Snapshot(40, 3, data)),))


def drain(transport: PeerTransport) -> list[PeerBatch]:
    out = []
    while True:
        try:
            out.append(transport.received.receive_nowait())
        except trio.WouldBlock:
            return out


async def test_a_10mb_snapshot_crosses_while_small_traffic_sent_after_it_overtakes(
        autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = SimNetwork(nursery, seed=21, max_delay=0.01)  # every write takes a while
        a, b = net.add("a@h"), net.add("b@h")
        recorder = Recorder(b)
        await start(nursery, net)
        await until(lambda: a.reachable() == {"b@h"})
        big = snapshot_batch("a@h", "b@h", 10 * 1024 * 1024)
        a.send(big)
        # in the same driver cycle: another group's heartbeat and the casts of the moment
        a.send(PeerBatch("a@h", "b@h", 7, (Heartbeat("q2", 3, "a@h", "b@h", commit=5),)))
        for n in range(3):
            assert a.cast("b@h", "note", n) is None
        await until(lambda: len(recorder.casts["a@h"]) == 3)
        assert [batch.messages[0].group for batch in drain(b)] == ["q2"]  # the snapshot is not whole yet
        # casts queued while the snapshot is part-way through its chunks wait behind one chunk at most
        await until(lambda: b.statistics()["a@h"].bytes_reassembling > 4 * 1024 * 1024)
        for n in range(3, 6):
            assert a.cast("b@h", "note", n) is None
        await until(lambda: len(recorder.casts["a@h"]) == 6)
        assert 0 < b.statistics()["a@h"].bytes_reassembling < 10 * 1024 * 1024
        assert drain(b) == []
        await until(lambda: b.received.statistics().current_buffer_used == 1)
        assert drain(b) == [big]
        assert b.statistics()["a@h"].bytes_reassembling == 0
        assert recorder.casts["a@h"] == list(range(6))
        assert a.statistics()["b@h"].queued_bytes == 0 and a.statistics()["b@h"].reconnects == 0
        nursery.cancel_scope.cancel()


async def test_a_raft_batch_holding_a_snapshot_lets_the_other_groups_go_first(
        autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = SimNetwork(nursery, seed=22, max_delay=0.01)
        a, b = net.add("a@h"), net.add("b@h")
        await start(nursery, net)
        await until(lambda: a.reachable() == {"b@h"})
        snapshot = snapshot_batch("a@h", "b@h", 2 * 1024 * 1024).messages[0]
        others = tuple(Heartbeat(f"g{n}", 3, "a@h", "b@h", commit=n) for n in range(3))
        a.send(PeerBatch("a@h", "b@h", 7, (others[0], snapshot, *others[1:])))
        got: list[PeerBatch] = []
        await until(lambda: bool(got.extend(drain(b))) or len(got) == 2)
        assert got == [PeerBatch("a@h", "b@h", 7, others), PeerBatch("a@h", "b@h", 7, (snapshot,))]
        nursery.cancel_scope.cancel()


async def test_casts_and_calls_never_overtake_a_large_cast_but_pings_do(
        autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = SimNetwork(nursery, seed=23, max_delay=0.01)
        # a link times out after 0.2 s of silence: the pings must get through between the chunks
        options = {"chunk_size": 64 * 1024, "heartbeat_interval": 0.05, "link_timeout": 0.2}
        a, b = net.add("a@h", **options), net.add("b@h", **options)
        recorder = Recorder(b)
        await start(nursery, net)
        await until(lambda: a.reachable() == {"b@h"})
        large = b"L" * (100 * 64 * 1024)  # 100 chunks, about 0.5 s of writes
        assert a.cast("b@h", "note", "before") is None
        assert a.cast("b@h", "note", large) is None
        assert a.cast("b@h", "note", "after") is None
        reply = await a.call("b@h", "echo", "call after")
        assert reply == Replied({"from": "b@h", "args": "call after"})
        assert recorder.casts["a@h"] == ["before", large, "after"]  # the call arrived after all three
        assert a.statistics()["b@h"].reconnects == 0 and b.statistics()["a@h"].reconnects == 0
        nursery.cancel_scope.cancel()


async def test_a_message_beyond_the_receivers_limit_closes_that_link_only_with_one_line(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    async with trio.open_nursery() as nursery:
        net = SimNetwork(nursery, seed=24)
        a = net.add("a@h", chunk_size=16 * 1024)  # sends up to the default 1 GiB
        b = net.add("b@h", max_message_size=100 * 1024)
        c = net.add("c@h")
        recorder = Recorder(b)
        await start(nursery, net)
        await until(lambda: a.reachable() == {"b@h", "c@h"} and c.reachable() == {"a@h", "b@h"})
        assert a.cast("b@h", "note", b"x" * (200 * 1024)) is None
        await until(lambda: a.statistics()["b@h"].reconnects == 1 and a.reachable() == {"b@h", "c@h"})
        assert a.statistics()["b@h"].casts_dropped == 1  # given up with the link, not sent again
        lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        [line] = lines
        assert line.startswith("peer link from node 'a@h' closed: peer sent a chunked message of 2048")
        assert line.endswith(f" bytes, the limit is {100 * 1024}")
        # nothing else harmed: the next casts from a, and c's, arrive; c's link never broke
        assert a.cast("b@h", "note", "small") is None
        assert c.cast("b@h", "note", "from c") is None
        await until(lambda: recorder.casts["a@h"] == ["small"] and recorder.casts["c@h"] == ["from c"])
        assert c.statistics()["b@h"].reconnects == 0
        assert b.statistics()["a@h"].bytes_reassembling == 0
        nursery.cancel_scope.cancel()


async def test_a_link_cut_mid_way_delivers_nothing_of_the_message_and_keeps_none_of_it(
        autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = SimNetwork(nursery, seed=25, max_delay=0.01)
        a, b = net.add("a@h"), net.add("b@h")
        recorder = Recorder(b)
        await start(nursery, net)
        await until(lambda: a.reachable() == {"b@h"})
        a.send(snapshot_batch("a@h", "b@h", 4 * 1024 * 1024))
        assert a.cast("b@h", "note", b"c" * (4 * 1024 * 1024)) is None
        await until(lambda: b.statistics()["a@h"].bytes_reassembling > 2 * 1024 * 1024)
        net.cut("a@h", "b@h")
        await until(lambda: a.statistics()["b@h"].reconnects == 1 and a.reachable() == {"b@h"})
        await until(lambda: b.statistics()["a@h"].inbound_links == 1)
        stats = a.statistics()["b@h"]
        assert stats.raft_batches_dropped == 1 and stats.casts_dropped == 1 and stats.queued_bytes == 0
        assert b.statistics()["a@h"].bytes_reassembling == 0
        assert a.cast("b@h", "note", "next") is None
        await until(lambda: recorder.casts["a@h"] == ["next"])
        assert drain(b) == []
        nursery.cancel_scope.cancel()
