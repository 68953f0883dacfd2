"""Topic exchange: the trie against a recursive reference matcher."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from broker.routing import Router, split_topic
from cluster.metadata import AddVhost, Bind, DeclareExchange, DeclareQueue, MetadataState, Unbind

from .reference import topic_matches

KEY_WORDS = st.sampled_from(["a", "b", "c", ""])
PATTERN_WORDS = st.sampled_from(["a", "b", "", "*", "#"])


def dotted(word_strategy: st.SearchStrategy[str], max_size: int = 5) -> st.SearchStrategy[str]:
    return st.lists(word_strategy, max_size=max_size).map(".".join)


class Topology:
    def __init__(self) -> None:
        self.meta = MetadataState()
        self.router = Router()
        self.do(AddVhost("/"))
        self.do(DeclareExchange("/", "t", "topic", durable=True))

    def do(self, cmd) -> None:
        applied = self.meta.apply(cmd)
        assert applied.ok, applied.result
        self.router.apply(applied.changes)

    def queue(self, name: str) -> None:
        self.do(DeclareQueue("/", name, True, False, None, {}, "n1"))


@pytest.mark.parametrize("pattern,key,expected", [
    ("a.#", "a", True),
    ("a.#", "a.b.c", True),
    ("#", "", True),
    ("#.#", "", True),
    ("", "", True),
    ("*", "", False),
    ("a", "", False),
    ("a.*.b", "a..b", True),
    ("a..b", "a..b", True),
    ("a.b", "a..b", False),
    ("a.#.b", "a..b", True),
    ("a.#.b", "a.b", True),
    ("*", ".", False),
    ("*.*", ".", True),
    ("a.*", "a.", True),
    ("#.a", "a", True),
    ("a.*.#", "a", False),
    ("a.*.#", "a.b", True),
    ("#.*", "", False),
    ("*.#", "a", True),
])
def test_known_cases(pattern: str, key: str, expected: bool) -> None:
    assert topic_matches(pattern, key) is expected
    topo = Topology()
    topo.queue("q")
    topo.do(Bind("/", "t", "q", "queue", pattern))
    assert (topo.router.route("/", "t", key).queues == {"q"}) is expected


def test_split_topic_matches_rabbitmq() -> None:
    assert split_topic("") == []
    assert split_topic(".") == ["", ""]
    assert split_topic("a..b") == ["a", "", "b"]


@settings(max_examples=300, deadline=None)
@given(patterns=st.lists(dotted(PATTERN_WORDS), min_size=1, max_size=8),
       keys=st.lists(dotted(KEY_WORDS), min_size=1, max_size=6))
def test_trie_agrees_with_reference(patterns: list[str], keys: list[str]) -> None:
    topo = Topology()
    for i, pattern in enumerate(patterns):
        topo.queue(f"q{i}")
        topo.do(Bind("/", "t", f"q{i}", "queue", pattern))
    for key in keys:
        expected = {f"q{i}" for i, p in enumerate(patterns) if topic_matches(p, key)}
        assert set(topo.router.route("/", "t", key).queues) == expected, key


@settings(max_examples=200, deadline=None)
@given(bindings=st.lists(st.tuples(st.integers(0, 3), dotted(PATTERN_WORDS, 4)), min_size=1, max_size=12),
       drop=st.sets(st.integers(0, 11)),
       keys=st.lists(dotted(KEY_WORDS, 4), min_size=1, max_size=5))
def test_unbinding_prunes_the_trie_correctly(bindings, drop, keys) -> None:
    topo = Topology()
    for q in range(4):
        topo.queue(f"q{q}")
    for q, pattern in bindings:
        topo.do(Bind("/", "t", f"q{q}", "queue", pattern))
    kept = []
    for i, (q, pattern) in enumerate(bindings):
        if i in drop:
            topo.do(Unbind("/", "t", f"q{q}", "queue", pattern))
    live = {(q, p) for q, p in bindings} - {(q, p) for i, (q, p) in enumerate(bindings) if i in drop}
    kept = sorted(live)
    for key in keys:
        expected = {f"q{q}" for q, p in kept if topic_matches(p, key)}
        assert set(topo.router.route("/", "t", key).queues) == expected


def test_many_hashes_do_not_explode() -> None:
    topo = Topology()
    topo.queue("q")
    topo.do(Bind("/", "t", "q", "queue", ".".join(["#"] * 12) + ".z"))
    key = ".".join(["a"] * 60)
    assert not topo.router.route("/", "t", key)
    assert topo.router.route("/", "t", key + ".z").queues == {"q"}
