"""Headers exchange matching: RabbitMQ's rules, and agreement with a transcription
of rabbit_exchange_type_headers' merge algorithm."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from broker.routing import headers_match

from .reference import headers_matches


@pytest.mark.parametrize("args,headers,expected", [
    ({"x-match": "all", "a": 1, "b": "x"}, {"a": 1, "b": "x", "c": 0}, True),
    ({"x-match": "all", "a": 1, "b": "x"}, {"a": 1}, False),
    ({"x-match": "any", "a": 1, "b": "x"}, {"a": 2, "b": "x"}, True),
    ({"x-match": "any", "a": 1, "b": "x"}, {"a": 2}, False),
    ({"a": 1}, {"a": 1}, True),                       # x-match defaults to all
    ({"x-match": "all"}, {}, True),                   # nothing required
    ({"x-match": "any"}, {"a": 1}, False),            # nothing can match
    ({"x-match": "all", "x-foo": "y"}, {}, True),     # x- keys are ignored ...
    ({"x-match": "any", "x-foo": "y", "a": 1}, {"x-foo": "y"}, False),
    ({"x-match": "all-with-x", "x-foo": "y"}, {}, False),   # ... unless -with-x
    ({"x-match": "all-with-x", "x-foo": "y"}, {"x-foo": "y"}, True),
    ({"x-match": "any-with-x", "x-foo": "y", "a": 1}, {"x-foo": "y"}, True),
    ({"x-match": "all", "a": None}, {"a": "anything"}, True),   # void: presence
    ({"x-match": "all", "a": None}, {"b": 1}, False),
    ({"x-match": "any", "a": None}, {"a": None}, True),
    ({"a": 1}, {"a": 1.0}, True),                     # Erlang ==: numbers compare numerically
    ({"a": 1}, {"a": True}, False),                   # booleans are atoms
    ({"a": True}, {"a": True}, True),
    ({"a": "v"}, {"a": b"v"}, True),                  # longstr and binary are both binaries
    ({"a": "v"}, {"a": "w"}, False),
    ({"a": [1, "x"]}, {"a": [1, "x"]}, True),
])
def test_rules(args, headers, expected) -> None:
    assert headers_match(args, headers) is expected
    assert headers_matches(args, headers) is expected


def test_missing_headers_property_is_empty_table() -> None:
    assert headers_match({"x-match": "all"}, None)
    assert not headers_match({"a": 1}, None)


KEYS = st.sampled_from(["a", "b", "c", "x-a", "x-b"])
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2, 2), st.sampled_from([1.0, 2.5]),
                   st.sampled_from(["s", "t"]), st.sampled_from([b"s", b"t"]))
MATCH = st.sampled_from([None, "all", "any", "all-with-x", "any-with-x"])


@settings(max_examples=500, deadline=None)
@given(binding=st.dictionaries(KEYS, VALUES, max_size=5), kind=MATCH,
       headers=st.dictionaries(KEYS, VALUES, max_size=5))
def test_agrees_with_rabbitmq_merge(binding, kind, headers) -> None:
    if kind is not None:
        binding = {**binding, "x-match": kind}
    assert headers_match(binding, headers) == headers_matches(binding, headers)
