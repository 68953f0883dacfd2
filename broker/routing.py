"""Routing: which queues a published message goes to, per exchange type.

A `Router` per node follows the metadata through its change records
(`cluster.metadata.Change`) and keeps, per (vhost, exchange), a structure
resolved for its type, updated only where a binding changed:

* direct: routing key → the destinations bound with that key (one dict lookup);
* fanout: the destinations of every binding;
* topic: a trie over dot-separated words with RabbitMQ's semantics (`*` is one
  word, `#` zero or more, empty words are words, the empty key has no words),
  matched in one walk, not a regex per binding;
* headers: the bindings' parsed argument tables, tested in turn
  (rabbit_exchange_type_headers: x-match all / any / all-with-x / any-with-x,
  `x-` keys ignored unless -with-x, a void binding value matches presence,
  values compared like Erlang's `==`).

Destinations are counted because several bindings (different keys or arguments)
may lead to the same queue; a message reaches each queue once.

`route` follows RabbitMQ's rabbit_exchange:route/3: the default exchange routes to
the queue named by the routing key; an exchange's exchange destinations are
routed in turn, each exchange at most once (so cycles end); an exchange that
matched nothing hands the message to its alternate exchange — its
`alternate-exchange` argument, else the one its effective policy names. CC and
BCC headers are extra routing keys (`extra_keys`) for the key-based types.

Whether an exchange may be published to (internal exchanges) is the node's
decision; `is_internal` tells it. Pure: no I/O, no clock.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from cluster.metadata import (
    Binding,
    BindingAdded,
    BindingRemoved,
    Change,
    ExchangeAdded,
    ExchangeRecord,
    ExchangeRemoved,
    HEADERS_MATCH_KINDS,
    MetadataState,
    PolicyApplied,
    QueueAdded,
    QueueRemoved,
    VhostAdded,
    VhostRemoved,
    erlang_equal,
)

__all__ = ["RouteResult", "Router", "split_topic", "headers_match"]

_Dest = tuple[str, str]  # ("queue" | "exchange", name)
_NO_QUEUES: frozenset[str] = frozenset()


class RouteResult:
    """The queues (names, within the published-to vhost) a message is routed to."""

    __slots__ = ("queues",)

    def __init__(self, queues: frozenset[str]) -> None:
        self.queues = queues

    def __bool__(self) -> bool:
        return bool(self.queues)

    def __repr__(self) -> str:
        return f"RouteResult({sorted(self.queues)!r})"


_UNROUTED = RouteResult(_NO_QUEUES)


def split_topic(key: str) -> list[str]:
    """RabbitMQ's split_topic_key: the empty key has no words; otherwise every
    dot separates two (possibly empty) words."""
    return key.split(".") if key else []


class _Targets:
    """Counted destinations with their queue and exchange names resolved once per change."""

    __slots__ = ("counts", "queues", "exchanges", "result")

    def __init__(self) -> None:
        self.counts: dict[_Dest, int] = {}
        self.queues: frozenset[str] = _NO_QUEUES
        self.exchanges: tuple[str, ...] = ()
        self.result: RouteResult = _UNROUTED  # shared by every publish that lands here

    def add(self, dest: _Dest) -> None:
        count = self.counts.get(dest, 0)
        self.counts[dest] = count + 1
        if count == 0:
            self._resolve()

    def remove(self, dest: _Dest) -> None:
        count = self.counts[dest]
        if count == 1:
            del self.counts[dest]
            self._resolve()
        else:
            self.counts[dest] = count - 1

    def _resolve(self) -> None:
        self.queues = frozenset(name for kind, name in self.counts if kind == "queue")
        self.exchanges = tuple(name for kind, name in self.counts if kind == "exchange")
        self.result = RouteResult(self.queues) if self.queues else _UNROUTED


def _dest(binding: Binding) -> _Dest:
    return (binding.destination_kind, binding.destination)


class _Exchange:
    __slots__ = ("name", "type", "internal", "alternate_arg", "alternate_policy")

    def __init__(self, record: ExchangeRecord) -> None:
        self.name = record.name
        self.type = record.type
        self.internal = record.internal
        ae = record.arguments.get("alternate-exchange")
        self.alternate_arg: str | None = ae if isinstance(ae, str) else None
        self.alternate_policy: str | None = None

    @property
    def alternate(self) -> str | None:
        # rabbit_policy:get_arg: the exchange's own argument wins over its policy.
        return self.alternate_arg if self.alternate_arg is not None else self.alternate_policy

    def add(self, binding: Binding) -> None:
        raise NotImplementedError

    def remove(self, binding: Binding) -> None:
        raise NotImplementedError

    def match(self, routing_key: str, headers: Mapping[str, Any] | None,
              extra_keys: Sequence[str]) -> tuple[frozenset[str], tuple[str, ...]]:
        """(queues, exchanges) this exchange's own bindings route to."""
        raise NotImplementedError


class _Direct(_Exchange):
    __slots__ = ("by_key",)

    def __init__(self, record: ExchangeRecord) -> None:
        super().__init__(record)
        self.by_key: dict[str, _Targets] = {}

    def add(self, binding: Binding) -> None:
        targets = self.by_key.get(binding.routing_key)
        if targets is None:
            targets = self.by_key[binding.routing_key] = _Targets()
        targets.add(_dest(binding))

    def remove(self, binding: Binding) -> None:
        targets = self.by_key[binding.routing_key]
        targets.remove(_dest(binding))
        if not targets.counts:
            del self.by_key[binding.routing_key]

    def match(self, routing_key, headers, extra_keys):
        targets = self.by_key.get(routing_key)
        if not extra_keys:
            if targets is None:
                return _NO_QUEUES, ()
            return targets.queues, targets.exchanges
        all_targets = [t for t in (targets, *map(self.by_key.get, extra_keys)) if t is not None]
        return _union(all_targets)


class _Fanout(_Exchange):
    __slots__ = ("targets",)

    def __init__(self, record: ExchangeRecord) -> None:
        super().__init__(record)
        self.targets = _Targets()

    def add(self, binding: Binding) -> None:
        self.targets.add(_dest(binding))

    def remove(self, binding: Binding) -> None:
        self.targets.remove(_dest(binding))

    def match(self, routing_key, headers, extra_keys):
        return self.targets.queues, self.targets.exchanges


class _TrieNode:
    __slots__ = ("children", "targets")

    def __init__(self) -> None:
        self.children: dict[str, _TrieNode] = {}
        self.targets: _Targets | None = None


class _Topic(_Exchange):
    __slots__ = ("root",)

    def __init__(self, record: ExchangeRecord) -> None:
        super().__init__(record)
        self.root = _TrieNode()

    def add(self, binding: Binding) -> None:
        node = self.root
        for word in split_topic(binding.routing_key):
            child = node.children.get(word)
            if child is None:
                child = node.children[word] = _TrieNode()
            node = child
        if node.targets is None:
            node.targets = _Targets()
        node.targets.add(_dest(binding))

    def remove(self, binding: Binding) -> None:
        path = [(self.root, "")]
        node = self.root
        for word in split_topic(binding.routing_key):
            node = node.children[word]
            path.append((node, word))
        assert node.targets is not None
        node.targets.remove(_dest(binding))
        if not node.targets.counts:
            node.targets = None
        # Prune the branch back to the last node still holding something.
        for i in range(len(path) - 1, 0, -1):
            child, word = path[i]
            if child.targets is not None or child.children:
                break
            del path[i - 1][0].children[word]

    def match(self, routing_key, headers, extra_keys):
        found: list[_Targets] = []
        for key in (routing_key, *extra_keys):
            self._collect(split_topic(key), found)
        return _union(found)

    def _collect(self, words: list[str], found: list[_Targets]) -> None:
        # The (node, position) pairs already walked: with `#` a node can be reached at
        # one position along several paths; walking it again adds nothing.
        seen: set[tuple[int, int]] = set()
        end = len(words)

        def walk(node: _TrieNode, i: int) -> None:
            mark = (id(node), i)
            if mark in seen:
                return
            seen.add(mark)
            children = node.children
            if i == end:
                if node.targets is not None:
                    found.append(node.targets)
            else:
                word = words[i]
                child = children.get(word)
                if child is not None:
                    walk(child, i + 1)
                if word != "*":
                    star = children.get("*")
                    if star is not None:
                        walk(star, i + 1)
            hash_node = children.get("#")
            if hash_node is not None:
                for j in range(i, end + 1):
                    walk(hash_node, j)

        walk(self.root, 0)


class _HeadersSpec:
    __slots__ = ("match_any", "items")

    def __init__(self, arguments: Mapping[str, Any]) -> None:
        kind = arguments.get("x-match")
        # Bindings with an invalid x-match are refused at bind time; an absent one means all.
        kind = kind if isinstance(kind, str) and kind in HEADERS_MATCH_KINDS else "all"
        with_x = kind.endswith("-with-x")
        self.match_any = kind.startswith("any")
        self.items: tuple[tuple[str, Any], ...] = tuple(
            (k, v) for k, v in sorted(arguments.items())
            if k != "x-match" and (with_x or not k.startswith("x-")))


def headers_match(spec_arguments: Mapping[str, Any], headers: Mapping[str, Any] | None) -> bool:
    """Does a headers-exchange binding with these arguments match these message headers?"""
    return _headers_match(_HeadersSpec(spec_arguments), headers or {})


_PLAIN = frozenset({str, int, float, bool, bytes})


def _value_matches(wanted: Any, got: Any) -> bool:
    # Same plain type: Python's == is Erlang's ==; anything else takes the careful path.
    kind = type(wanted)
    if kind is type(got) and kind in _PLAIN:
        return wanted == got
    return erlang_equal(wanted, got)


def _headers_match(spec: _HeadersSpec, headers: Mapping[str, Any]) -> bool:
    if spec.match_any:
        for key, wanted in spec.items:
            if key in headers and (wanted is None or _value_matches(wanted, headers[key])):
                return True
        return False
    for key, wanted in spec.items:
        if key not in headers or (wanted is not None and not _value_matches(wanted, headers[key])):
            return False
    return True


class _Headers(_Exchange):
    __slots__ = ("bindings",)

    def __init__(self, record: ExchangeRecord) -> None:
        super().__init__(record)
        self.bindings: dict[tuple, tuple[_HeadersSpec, _Dest]] = {}

    def add(self, binding: Binding) -> None:
        self.bindings[binding.identity] = (_HeadersSpec(binding.arguments), _dest(binding))

    def remove(self, binding: Binding) -> None:
        del self.bindings[binding.identity]

    def match(self, routing_key, headers, extra_keys):
        headers = headers or {}
        queues: set[str] = set()
        exchanges: list[str] = []
        for spec, (kind, name) in self.bindings.values():
            if _headers_match(spec, headers):
                if kind == "queue":
                    queues.add(name)
                else:
                    exchanges.append(name)
        return frozenset(queues), tuple(exchanges)


_EXCHANGE_CLASSES: dict[str, type[_Exchange]] = {
    "direct": _Direct, "fanout": _Fanout, "topic": _Topic, "headers": _Headers,
}


def _union(targets: Iterable[_Targets]) -> tuple[frozenset[str], tuple[str, ...]]:
    targets = list(targets)
    if not targets:
        return _NO_QUEUES, ()
    if len(targets) == 1:
        return targets[0].queues, targets[0].exchanges
    queues: set[str] = set()
    exchanges: list[str] = []
    for t in targets:
        queues.update(t.queues)
        exchanges.extend(t.exchanges)
    return frozenset(queues), tuple(exchanges)


class _Vhost:
    __slots__ = ("queues", "exchanges")

    def __init__(self) -> None:
        # Queue name -> the default exchange's answer for that routing key.
        self.queues: dict[str, RouteResult] = {}
        self.exchanges: dict[str, _Exchange] = {}


class Router:
    """Routes publishes on one node; fed the metadata's change records in commit order."""

    def __init__(self) -> None:
        self._vhosts: dict[str, _Vhost] = {}

    @classmethod
    def from_metadata(cls, metadata: MetadataState) -> "Router":
        """A router for a metadata view as it stands (node start, snapshot install)."""
        router = cls()
        changes: list[Change] = []
        for vhost in metadata.vhosts():
            changes.append(VhostAdded(vhost))
            changes.extend(QueueAdded(q) for q in metadata.queues(vhost.name))
            for x in metadata.exchanges(vhost.name):
                changes.append(ExchangeAdded(x))
                policy = metadata.effective_policy(vhost.name, x.name, "exchange")
                if policy is not None:
                    changes.append(PolicyApplied(vhost.name, "exchange", x.name, policy))
            changes.extend(BindingAdded(b) for b in metadata.bindings(vhost.name))
        router.apply(changes)
        return router

    # ------------------------------------------------------------------ following the metadata

    def apply(self, changes: Iterable[Change]) -> None:
        for change in changes:
            handler = _CHANGE_HANDLERS.get(type(change))
            if handler is not None:
                handler(self, change)

    def _vhost_added(self, change: VhostAdded) -> None:
        self._vhosts.setdefault(change.record.name, _Vhost())

    def _vhost_removed(self, change: VhostRemoved) -> None:
        self._vhosts.pop(change.name, None)

    def _exchange_added(self, change: ExchangeAdded) -> None:
        record = change.record
        self._vhosts[record.vhost].exchanges[record.name] = _EXCHANGE_CLASSES[record.type](record)

    def _exchange_removed(self, change: ExchangeRemoved) -> None:
        del self._vhosts[change.record.vhost].exchanges[change.record.name]

    def _queue_added(self, change: QueueAdded) -> None:
        name = change.record.name
        self._vhosts[change.record.vhost].queues[name] = RouteResult(frozenset((name,)))

    def _queue_removed(self, change: QueueRemoved) -> None:
        self._vhosts[change.record.vhost].queues.pop(change.record.name, None)

    def _binding_added(self, change: BindingAdded) -> None:
        b = change.binding
        self._vhosts[b.vhost].exchanges[b.source].add(b)

    def _binding_removed(self, change: BindingRemoved) -> None:
        b = change.binding
        self._vhosts[b.vhost].exchanges[b.source].remove(b)

    def _policy_applied(self, change: PolicyApplied) -> None:
        if change.kind != "exchange":
            return
        exchange = self._vhosts[change.vhost].exchanges.get(change.name)
        if exchange is None:
            return
        ae = change.policy.definition.get("alternate-exchange") if change.policy else None
        exchange.alternate_policy = ae if isinstance(ae, str) else None

    # ------------------------------------------------------------------ questions

    def exchange_ref(self, vhost: str, exchange: str) -> object | None:
        """An opaque token for `exchange` as declared now (None if it does not exist): a
        different one once it is deleted and declared again, so that a caller may keep
        what it checked about it for as long as the token is the same."""
        v = self._vhosts.get(vhost)
        return v.exchanges.get(exchange) if v is not None else None

    def has_exchange(self, vhost: str, exchange: str) -> bool:
        v = self._vhosts.get(vhost)
        return v is not None and exchange in v.exchanges

    def is_internal(self, vhost: str, exchange: str) -> bool:
        v = self._vhosts.get(vhost)
        x = v.exchanges.get(exchange) if v is not None else None
        return x is not None and x.internal

    def route(self, vhost: str, exchange: str, routing_key: str,
              headers: Mapping[str, Any] | None = None, extra_keys: Sequence[str] = ()) -> RouteResult:
        """The queues a message published to `exchange` with `routing_key` (plus CC/BCC
        `extra_keys`) and `headers` reaches; empty if the exchange does not exist."""
        v = self._vhosts.get(vhost)
        if v is None:
            return _UNROUTED
        if exchange == "":
            return self._route_default(v, routing_key, extra_keys)
        x = v.exchanges.get(exchange)
        if x is None:
            return _UNROUTED
        # Hot path: a direct or fanout exchange whose bindings lead only to queues
        # answers with the RouteResult cached for that key: one or two dict lookups.
        kind = type(x)
        if not extra_keys and (kind is _Direct or kind is _Fanout):
            targets = x.by_key.get(routing_key) if kind is _Direct else x.targets  # type: ignore[attr-defined]
            if targets is not None and not targets.exchanges and targets.queues:
                return targets.result
            if targets is None or not targets.exchanges:
                if x.alternate is None:
                    return _UNROUTED
        queues, exchanges = x.match(routing_key, headers, extra_keys)
        if not exchanges and (queues or x.alternate is None):
            return RouteResult(queues) if queues else _UNROUTED
        return self._route_graph(v, x, queues, exchanges, routing_key, headers, extra_keys)

    @staticmethod
    def _route_default(v: _Vhost, routing_key: str, extra_keys: Sequence[str]) -> RouteResult:
        if not extra_keys:
            return v.queues.get(routing_key, _UNROUTED)
        found = frozenset(k for k in (routing_key, *extra_keys) if k in v.queues)
        return RouteResult(found) if found else _UNROUTED

    def _route_graph(self, v: _Vhost, first: _Exchange, queues: frozenset[str], exchanges: tuple[str, ...],
                     routing_key: str, headers: Mapping[str, Any] | None,
                     extra_keys: Sequence[str]) -> RouteResult:
        # Every exchange is visited at most once, so exchange-to-exchange cycles end.
        found: set[str] = set(queues)
        seen = {first.name}
        pending: list[str] = []

        def visit_next(x: _Exchange, own_queues: frozenset[str], own_exchanges: tuple[str, ...]) -> None:
            targets = list(own_exchanges)
            if not own_queues and not own_exchanges and x.alternate is not None:
                targets.append(x.alternate)
            for name in targets:
                if name not in seen:
                    seen.add(name)
                    pending.append(name)

        visit_next(first, queues, exchanges)
        while pending:
            name = pending.pop()
            if name == "":
                # The default exchange as an alternate (the only way to reach it but a publish
                # to it: bindings to or from it are refused) routes nothing in RabbitMQ 3.10:
                # its routes to queues are implicit, taken only by a publish to it
                # (rabbit_exchange:route/2's first clause); otherwise it is a direct exchange
                # without bindings.
                continue
            x = v.exchanges.get(name)
            if x is None:
                continue
            own_queues, own_exchanges = x.match(routing_key, headers, extra_keys)
            found.update(own_queues)
            visit_next(x, own_queues, own_exchanges)
        return RouteResult(frozenset(found)) if found else _UNROUTED

    def statistics(self) -> dict[str, int]:
        return {
            "vhosts": len(self._vhosts),
            "exchanges": sum(len(v.exchanges) for v in self._vhosts.values()),
            "queues": sum(len(v.queues) for v in self._vhosts.values()),
        }


_CHANGE_HANDLERS: dict[type, Any] = {
    VhostAdded: Router._vhost_added,
    VhostRemoved: Router._vhost_removed,
    ExchangeAdded: Router._exchange_added,
    ExchangeRemoved: Router._exchange_removed,
    QueueAdded: Router._queue_added,
    QueueRemoved: Router._queue_removed,
    BindingAdded: Router._binding_added,
    BindingRemoved: Router._binding_removed,
    PolicyApplied: Router._policy_applied,
}
