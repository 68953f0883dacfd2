"""Model-based: random command sequences applied to two metadata replicas (one of
them restored from a snapshot at random points) stay identical, and the Router,
fed only change records, answers like a naive router recomputed from the view."""

from __future__ import annotations

import itertools

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from broker.routing import Router
from cluster.metadata import (
    AddVhost, Bind, Command, DeclareExchange, DeclareQueue, DeleteVhost, MetadataState, SetPolicy, Unbind,
)

from metadata.strategies import BINDING_ARGS, KEYS, NODES, PATTERNS, VHOSTS, commands  # tests/ is on sys.path (pytest rootdir packages)
from .reference import naive_route

# Focused rules mostly build in "/", so that one vhost gets dense enough to route.
FOCUS = st.sampled_from(["/", "/", "/", "/", "/", "v1"])

SOURCES = st.sampled_from(["x1", "x2", "amq.topic", "amq.fanout", "amq.headers"])

PUBLISHES = list(itertools.product(
    ["/", "v1"],
    ["", "x1", "x2", "x3", "amq.direct", "amq.topic", "amq.headers"],
    ["", "a", "a.b", "q1"],
    [None, {"a": 1}],
))


class ReplicatedMetadata(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.leader = MetadataState()
        self.follower = MetadataState()
        self.router = Router()

    @initialize()
    def vhosts(self) -> None:
        for name in ("/", "v1"):
            self.apply(AddVhost(name))

    def apply(self, cmd: Command) -> None:
        on_leader = self.leader.apply(cmd)
        on_follower = self.follower.apply(cmd)
        assert on_leader == on_follower
        self.router.apply(on_leader.changes)

    @rule(cmd=commands().filter(lambda c: not isinstance(c, DeleteVhost)))
    def command(self, cmd: Command) -> None:
        self.apply(cmd)

    @rule(vhost=VHOSTS)
    def vhost_deleted_and_recreated(self, vhost: str) -> None:
        # Deleting a vhost (cascade and all) empties it for good; recreate it so the
        # rest of the run still has somewhere to build.
        self.apply(DeleteVhost(vhost))
        self.apply(AddVhost(vhost))

    # Focused rules: generic commands are mostly refused or cascade away, so these keep
    # a live topology (exchanges, queues, bindings, alternates) around to route through.
    @rule(vhost=FOCUS, name=st.sampled_from(["x1", "x2"]),
          type_=st.sampled_from(["direct", "fanout", "topic", "headers"]),
          auto_delete=st.sampled_from([False, False, True]),
          ae=st.sampled_from([None, None, "x1", "x2", "amq.fanout"]))
    def declare_exchange(self, vhost, name, type_, auto_delete, ae) -> None:
        args = {} if ae is None else {"alternate-exchange": ae}
        self.apply(DeclareExchange(vhost, name, type_, True, auto_delete, False, args))

    @rule(vhost=FOCUS, name=st.sampled_from(["q1", "q2"]), node=NODES)
    def declare_queue(self, vhost, name, node) -> None:
        self.apply(DeclareQueue(vhost, name, True, False, None, {}, node))

    @rule(vhost=FOCUS, source=SOURCES, queue=st.sampled_from(["q1", "q2"]), key=KEYS, args=BINDING_ARGS)
    def bind_queue(self, vhost, source, queue, key, args) -> None:
        self.apply(Bind(vhost, source, queue, "queue", key, args))

    @rule(vhost=FOCUS, source=SOURCES, exchange=st.sampled_from(["x1", "x2"]), key=KEYS, args=BINDING_ARGS)
    def bind_exchange(self, vhost, source, exchange, key, args) -> None:
        self.apply(Bind(vhost, source, exchange, "exchange", key, args))

    @rule(vhost=FOCUS, source=SOURCES, queue=st.sampled_from(["q1", "q2"]), key=KEYS, args=BINDING_ARGS)
    def unbind_queue(self, vhost, source, queue, key, args) -> None:
        self.apply(Unbind(vhost, source, queue, "queue", key, args))

    @rule(vhost=FOCUS, name=st.sampled_from(["p1", "p2"]), pattern=PATTERNS,
          ae=st.sampled_from(["x1", "x2", "amq.fanout"]), priority=st.integers(0, 1))
    def alternate_policy(self, vhost, name, pattern, ae, priority) -> None:
        self.apply(SetPolicy(vhost, name, pattern, "exchanges", {"alternate-exchange": ae}, priority))

    @rule()
    def follower_installs_snapshot(self) -> None:
        self.follower = MetadataState.restore(self.leader.snapshot())

    @rule()
    def router_rebuilt_from_view_agrees(self) -> None:
        rebuilt = Router.from_metadata(self.leader)
        for vhost, exchange, key, headers in PUBLISHES:
            assert rebuilt.route(vhost, exchange, key, headers).queues == \
                self.router.route(vhost, exchange, key, headers).queues

    @invariant()
    def replicas_identical(self) -> None:
        assert self.leader.version == self.follower.version
        assert self.leader.snapshot() == self.follower.snapshot()

    @invariant()
    def references_resolve(self) -> None:
        for vhost in self.leader.vhosts():
            for b in self.leader.bindings(vhost.name):
                assert self.leader.exchange(b.vhost, b.source) is not None
                if b.destination_kind == "queue":
                    assert self.leader.queue(b.vhost, b.destination) is not None
                else:
                    assert self.leader.exchange(b.vhost, b.destination) is not None

    @invariant()
    def router_matches_naive_router(self) -> None:
        for vhost, exchange, key, headers in PUBLISHES:
            got = set(self.router.route(vhost, exchange, key, headers).queues)
            assert got == naive_route(self.leader, vhost, exchange, key, headers), (vhost, exchange, key, headers)
            assert self.router.has_exchange(vhost, exchange) == (self.leader.exchange(vhost, exchange) is not None)


ReplicatedMetadata.TestCase.settings = settings(max_examples=80, stateful_step_count=50, deadline=None)
TestReplicatedMetadata = ReplicatedMetadata.TestCase
