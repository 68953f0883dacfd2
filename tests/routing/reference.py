"""Slow, obviously-correct references the router is checked against.

Nothing here shares code with broker/routing.py: the topic matcher recurses over
pattern words, the headers matcher is a literal transcription of RabbitMQ's
sorted-merge algorithm, and the naive router recomputes everything from the
metadata view on every call.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from cluster.metadata import MetadataState, erlang_equal


def words(key: str) -> list[str]:
    if key == "":
        return []
    return key.split(".")


def topic_matches(pattern: str, key: str) -> bool:
    return _match(words(pattern), words(key))


def _match(pattern: list[str], key: list[str]) -> bool:
    if not pattern:
        return not key
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, key[i:]) for i in range(len(key) + 1))
    if not key:
        return False
    if head == "*" or head == key[0]:
        return _match(rest, key[1:])
    return False


def headers_matches(binding_args: Mapping[str, Any], headers: Mapping[str, Any] | None) -> bool:
    """rabbit_exchange_type_headers:headers_match/5, clause by clause."""
    pattern = sorted(binding_args.items())
    data = sorted((headers or {}).items())
    kind = binding_args.get("x-match")
    kind = kind if kind in ("all", "any", "all-with-x", "any-with-x") else "all"
    all_match, any_match = True, False
    p = d = 0
    while True:
        if not all_match and kind in ("all", "all-with-x"):
            return False
        if any_match and kind in ("any", "any-with-x"):
            return True
        if p == len(pattern):
            return all_match if kind in ("all", "all-with-x") else any_match
        pk, pv = pattern[p]
        if pk == "x-match":
            p += 1
            continue
        if pk.startswith("x-") and kind not in ("all-with-x", "any-with-x"):
            p += 1
            continue
        if d == len(data):
            all_match = False
            p = len(pattern)
            continue
        dk, dv = data[d]
        if pk > dk:
            d += 1
        elif pk < dk:
            all_match = False
            p += 1
        elif pv is None:
            any_match = True
            p += 1
            d += 1
        elif erlang_equal(pv, dv):
            any_match = True
            p += 1
            d += 1
        else:
            all_match = False
            p += 1
            d += 1


def _own_destinations(metadata: MetadataState, vhost: str, exchange: str, key: str,
                      headers: Mapping[str, Any] | None, extra_keys: Sequence[str]) -> list[tuple[str, str]]:
    x = metadata.exchange(vhost, exchange)
    if x is None:
        return []
    if exchange == "":
        return [("queue", k) for k in (key, *extra_keys) if metadata.queue(vhost, k) is not None]
    keys = (key, *extra_keys)
    out = []
    for b in metadata.bindings(vhost):
        if b.source != exchange:
            continue
        if x.type == "fanout":
            hit = True
        elif x.type == "direct":
            hit = b.routing_key in keys
        elif x.type == "topic":
            hit = any(topic_matches(b.routing_key, k) for k in keys)
        else:
            hit = headers_matches(b.arguments, headers)
        if hit:
            out.append((b.destination_kind, b.destination))
    return out


def naive_route(metadata: MetadataState, vhost: str, exchange: str, key: str,
                headers: Mapping[str, Any] | None = None, extra_keys: Sequence[str] = ()) -> set[str]:
    """Breadth-first over exchanges, each visited once, alternates when nothing matched."""
    if metadata.exchange(vhost, exchange) is None:
        return set()
    queues: set[str] = set()
    visited = {exchange}
    frontier = [exchange]
    while frontier:
        nxt = []
        for name in frontier:
            dests = _own_destinations(metadata, vhost, name, key, headers, extra_keys)
            targets = [d for kind, d in dests if kind == "exchange"]
            queues.update(d for kind, d in dests if kind == "queue")
            if not dests and name != "":  # the default exchange has no alternate
                x = metadata.exchange(vhost, name)
                ae = x.arguments.get("alternate-exchange") if x else None
                if not isinstance(ae, str):
                    policy = metadata.effective_policy(vhost, name, "exchange")
                    ae = policy.definition.get("alternate-exchange") if policy else None
                if isinstance(ae, str):
                    targets.append(ae)
            for t in targets:
                # The default exchange routes by queue name only when published to directly.
                if t not in visited and t != "" and metadata.exchange(vhost, t) is not None:
                    visited.add(t)
                    nxt.append(t)
        frontier = nxt
    return queues
