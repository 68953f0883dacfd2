"""Router end to end: exchange-to-exchange bindings, cycles, alternate exchanges,
the default exchange, CC keys, and following deletions."""

from __future__ import annotations

from broker.routing import Router
from cluster.metadata import (
    AddVhost, Bind, ClearPolicy, DeclareExchange, DeclareQueue, DeleteExchange, DeleteQueue,
    DeleteVhost, MetadataState, SetPolicy, Unbind,
)

from .reference import naive_route


class Topology:
    def __init__(self) -> None:
        self.meta = MetadataState()
        self.router = Router()
        self.do(AddVhost("/"))

    def do(self, cmd):
        applied = self.meta.apply(cmd)
        assert applied.ok, applied.result
        self.router.apply(applied.changes)
        return applied

    def x(self, name: str, type_: str = "direct", **kw) -> None:
        self.do(DeclareExchange("/", name, type_, durable=True, **kw))

    def q(self, *names: str) -> None:
        for name in names:
            self.do(DeclareQueue("/", name, True, False, None, {}, "n1"))

    def bind(self, source: str, dest: str, key: str = "", kind: str = "queue", **args) -> None:
        self.do(Bind("/", source, dest, kind, key, args))

    def route(self, exchange: str, key: str = "", headers=None, extra_keys=()) -> set[str]:
        got = set(self.router.route("/", exchange, key, headers, extra_keys).queues)
        assert got == naive_route(self.meta, "/", exchange, key, headers, extra_keys)
        return got


def test_default_exchange_routes_by_queue_name() -> None:
    t = Topology()
    t.q("q1")
    assert t.route("", "q1") == {"q1"}
    assert t.route("", "nope") == set()
    assert t.route("", "q1", extra_keys=("q2",)) == {"q1"}


def test_direct_and_fanout_and_dedup() -> None:
    t = Topology()
    t.x("d")
    t.x("f", "fanout")
    t.q("q1", "q2")
    t.bind("d", "q1", "k")
    t.bind("d", "q1", "k2")
    t.bind("d", "q2", "k")
    t.bind("d", "q2", "k", extra="arg")   # a second binding to the same queue and key
    t.bind("f", "q1", "ignored")
    assert t.route("d", "k") == {"q1", "q2"}
    assert t.route("d", "k2") == {"q1"}
    assert t.route("d", "none") == set()
    assert t.route("f", "anything") == {"q1"}
    t.do(Unbind("/", "d", "q2", "queue", "k", {"extra": "arg"}))
    assert t.route("d", "k") == {"q1", "q2"}   # the other binding still holds
    t.do(Unbind("/", "d", "q2", "queue", "k", {}))
    assert t.route("d", "k") == {"q1"}


def test_cc_keys_route_like_extra_routing_keys() -> None:
    t = Topology()
    t.x("d")
    t.x("t", "topic")
    t.q("q1", "q2")
    t.bind("d", "q1", "a")
    t.bind("d", "q2", "b")
    t.bind("t", "q2", "b.#")
    assert t.route("d", "a", extra_keys=("b",)) == {"q1", "q2"}
    assert t.route("t", "a", extra_keys=("b.c",)) == {"q2"}


def test_exchange_to_exchange_with_cycle() -> None:
    t = Topology()
    for name in ("x1", "x2", "x3"):
        t.x(name, "fanout")
    t.q("q1", "q3")
    t.bind("x1", "x2", kind="exchange")
    t.bind("x2", "x3", kind="exchange")
    t.bind("x3", "x1", kind="exchange")   # cycle back to the start
    t.bind("x2", "x2", kind="exchange")   # self loop
    t.bind("x1", "q1")
    t.bind("x3", "q3")
    assert t.route("x1") == {"q1", "q3"}
    assert t.route("x2") == {"q1", "q3"}
    assert t.route("x3") == {"q1", "q3"}


def test_alternate_exchange_from_argument() -> None:
    t = Topology()
    t.x("ae", "fanout")
    t.x("main", "direct", arguments={"alternate-exchange": "ae"})
    t.q("matched", "unrouted")
    t.bind("main", "matched", "k")
    t.bind("ae", "unrouted")
    assert t.route("main", "k") == {"matched"}
    assert t.route("main", "other") == {"unrouted"}


def test_alternate_exchange_not_used_when_an_exchange_destination_matched() -> None:
    t = Topology()
    t.x("ae", "fanout")
    t.x("empty", "direct")
    t.x("main", "direct", arguments={"alternate-exchange": "ae"})
    t.q("unrouted")
    t.bind("ae", "unrouted")
    t.bind("main", "empty", "k", kind="exchange")
    # main matched an exchange (which routes nothing): RabbitMQ does not use main's AE.
    assert t.route("main", "k") == set()
    assert t.route("main", "x") == {"unrouted"}


def test_alternate_exchange_cycle_and_missing_alternate() -> None:
    t = Topology()
    t.x("a", "direct", arguments={"alternate-exchange": "b"})
    t.x("b", "direct", arguments={"alternate-exchange": "a"})
    t.x("c", "direct", arguments={"alternate-exchange": "does-not-exist"})
    t.q("q")
    assert t.route("a", "k") == set()
    assert t.route("c", "k") == set()
    t.bind("b", "q", "k")
    assert t.route("a", "k") == {"q"}


def test_the_default_exchange_as_an_alternate_routes_nothing() -> None:
    # RabbitMQ 3.10: the default exchange's routes to queues are taken only by a publish to it.
    t = Topology()
    t.x("main", "direct", arguments={"alternate-exchange": ""})
    t.q("k")
    assert t.route("main", "k") == set()


def test_alternate_exchange_from_policy_and_argument_precedence() -> None:
    t = Topology()
    t.x("ae1", "fanout")
    t.x("ae2", "fanout")
    t.x("plain", "direct")
    t.x("own", "direct", arguments={"alternate-exchange": "ae1"})
    t.q("via1", "via2")
    t.bind("ae1", "via1")
    t.bind("ae2", "via2")
    assert t.route("plain", "k") == set()
    t.do(SetPolicy("/", "ae", ".*", "exchanges", {"alternate-exchange": "ae2"}, 0))
    assert t.route("plain", "k") == {"via2"}
    assert t.route("own", "k") == {"via1"}     # the argument wins over the policy
    t.do(ClearPolicy("/", "ae"))
    assert t.route("plain", "k") == set()


def test_headers_exchange_routes() -> None:
    t = Topology()
    t.x("h", "headers")
    t.q("q1", "q2")
    t.bind("h", "q1", **{"x-match": "any", "a": 1, "b": 2})
    t.bind("h", "q2", **{"x-match": "all", "a": 1, "b": 2})
    assert t.route("h", headers={"a": 1}) == {"q1"}
    assert t.route("h", headers={"a": 1, "b": 2}) == {"q1", "q2"}
    assert t.route("h") == set()


def test_deleting_queues_and_exchanges_updates_routes() -> None:
    t = Topology()
    t.x("src", "fanout")
    t.x("mid", "fanout")
    t.q("q1", "q2")
    t.bind("src", "mid", kind="exchange")
    t.bind("mid", "q1")
    t.bind("src", "q2")
    assert t.route("src") == {"q1", "q2"}
    t.do(DeleteQueue("/", "q2"))
    assert t.route("src") == {"q1"}
    t.do(DeleteExchange("/", "mid"))
    assert t.route("src") == set()
    assert not t.router.has_exchange("/", "mid")
    t.do(DeleteVhost("/"))
    assert t.router.route("/", "src", "").queues == frozenset()


def test_auto_delete_cascade_reaches_the_router() -> None:
    t = Topology()
    t.x("ad", "fanout", auto_delete=True)
    t.q("q")
    t.bind("ad", "q")
    t.do(DeleteQueue("/", "q"))
    assert not t.router.has_exchange("/", "ad")


def test_internal_flag_and_unknown_exchange() -> None:
    t = Topology()
    t.x("in", "fanout", internal=True)
    assert t.router.is_internal("/", "in")
    assert t.router.is_internal("/", "amq.rabbitmq.trace")
    assert not t.router.is_internal("/", "amq.direct")
    assert not t.router.has_exchange("/", "ghost")
    assert not t.router.route("/", "ghost", "k")
    assert not t.router.route("/no-such-vhost", "", "k")


def test_router_built_from_metadata_matches_incremental_one() -> None:
    t = Topology()
    t.x("ae", "fanout")
    t.x("d")
    t.x("top", "topic")
    t.q("q1", "q2", "q3")
    t.bind("d", "q1", "k")
    t.bind("d", "top", "k", kind="exchange")
    t.bind("top", "q2", "k.#")
    t.bind("ae", "q3")
    t.do(SetPolicy("/", "p", "^d$", "exchanges", {"alternate-exchange": "ae"}, 1))
    rebuilt = Router.from_metadata(t.meta)
    for key in ("k", "k.x", "zzz", ""):
        assert rebuilt.route("/", "d", key).queues == t.router.route("/", "d", key).queues
    assert rebuilt.route("/", "d", "zzz").queues == {"q3"}
