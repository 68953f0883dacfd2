"""Hypothesis strategies for metadata commands over small name pools, so that
generated commands collide, cascade and get refused often."""

from __future__ import annotations

from hypothesis import strategies as st

from cluster import metadata as m

VHOSTS = st.sampled_from(["/", "v1"])
USERS = st.sampled_from(["u1", "u2"])
EXCHANGES = st.sampled_from(["x1", "x2", "x3", "", "amq.direct", "amq.topic", "amq.foo"])
QUEUES = st.sampled_from(["q1", "q2", "q3", "amq.q"])
NODES = st.sampled_from(["n1", "n2"])
CONNECTIONS = st.sampled_from([None, "c1", "c2"])
EXCHANGE_TYPES = st.sampled_from(["direct", "fanout", "topic", "headers", "bogus"])
KEYS = st.sampled_from(["", "a", "a.b", "#", "*.b", "a.#", "q1", "q2"])
PATTERNS = st.sampled_from(["^x", "1$", ".*", "q", "^amq"])
APPLY_TO = st.sampled_from(["queues", "exchanges", "all", "classic_queues", "quorum_queues"])

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from([1.5, 2 ** 40]),
                    st.sampled_from(["s", "t"]), st.sampled_from([b"s"]))
ANY_VALUE = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["k", "l"]), inner, max_size=2)), max_leaves=5)

EXCHANGE_ARGS = st.dictionaries(st.sampled_from(["alternate-exchange", "x-other"]),
                                st.one_of(st.sampled_from(["x1", "x2", "x3", "", "ghost"]), st.just(5)),
                                max_size=2)
QUEUE_ARGS = st.dictionaries(st.sampled_from(["x-max-length", "x-queue-type", "x-custom", "x-message-ttl"]),
                             st.one_of(st.integers(0, 2), st.sampled_from(["classic", "quorum"]), st.just(1.0)),
                             max_size=2)
BINDING_ARGS = st.dictionaries(st.sampled_from(["x-match", "a", "x-a"]),
                               st.one_of(st.sampled_from(["all", "any", "all-with-x", "any-with-x", "bad"]),
                                         st.none(), st.integers(0, 1)),
                               max_size=3)
POLICY_DEFS = st.one_of(st.fixed_dictionaries({"alternate-exchange": st.sampled_from(["x1", "x2", "x3"])}),
                        st.just({"max-length": 1}))

TAGS = st.lists(st.sampled_from(["administrator", "management"]), max_size=2).map(tuple)


def commands(arguments: st.SearchStrategy | None = None) -> st.SearchStrategy[m.Command]:
    """Every command type; `arguments` overrides the argument tables (e.g. for wire tests)."""
    xargs = arguments if arguments is not None else EXCHANGE_ARGS
    qargs = arguments if arguments is not None else QUEUE_ARGS
    bargs = arguments if arguments is not None else BINDING_ARGS
    return st.one_of(
        st.builds(m.AddVhost, VHOSTS, st.sampled_from(["", "d"]), TAGS, st.sampled_from([None, "quorum"])),
        st.builds(m.DeleteVhost, VHOSTS),
        st.builds(m.AddUser, USERS, st.sampled_from(["h1", "h2"]), st.just("rabbit_password_hashing_sha256"), TAGS),
        st.builds(m.DeleteUser, USERS),
        st.builds(m.ChangePassword, USERS, st.sampled_from(["h3"])),
        st.builds(m.SetUserTags, USERS, TAGS),
        st.builds(m.SetPermissions, VHOSTS, USERS, st.just(".*"), st.just(""), st.just("^a")),
        st.builds(m.ClearPermissions, VHOSTS, USERS),
        st.builds(m.SetTopicPermissions, VHOSTS, USERS, EXCHANGES, st.just(".*"), st.just(".*")),
        st.builds(m.ClearTopicPermissions, VHOSTS, USERS, st.one_of(st.none(), EXCHANGES)),
        st.builds(m.DeclareExchange, VHOSTS, EXCHANGES, EXCHANGE_TYPES, st.booleans(), st.booleans(),
                  st.booleans(), xargs),
        st.builds(m.DeleteExchange, VHOSTS, EXCHANGES, st.booleans()),
        st.builds(m.DeclareQueue, VHOSTS, QUEUES, st.booleans(), st.booleans(), CONNECTIONS, qargs, NODES,
                  st.sampled_from(["classic", "quorum"]), st.booleans()),
        st.builds(m.DeleteQueue, VHOSTS, QUEUES, CONNECTIONS),
        st.builds(m.SetQueueNode, VHOSTS, QUEUES, NODES),
        st.builds(m.SetQueueReplicas, VHOSTS, QUEUES, st.sampled_from(["", "q.1", "q.2"]),
                  st.lists(NODES, max_size=3, unique=True).map(tuple)),
        st.builds(m.Bind, VHOSTS, EXCHANGES, st.one_of(QUEUES, EXCHANGES), st.sampled_from(["queue", "exchange"]),
                  KEYS, bargs, CONNECTIONS),
        st.builds(m.Unbind, VHOSTS, EXCHANGES, st.one_of(QUEUES, EXCHANGES), st.sampled_from(["queue", "exchange"]),
                  KEYS, bargs, CONNECTIONS),
        st.builds(m.SetPolicy, VHOSTS, st.sampled_from(["p1", "p2", "p3"]), PATTERNS, APPLY_TO, POLICY_DEFS,
                  st.integers(0, 2)),
        st.builds(m.ClearPolicy, VHOSTS, st.sampled_from(["p1", "p2", "p3"])),
        st.builds(m.DeleteQueuesOwnedBy, st.sampled_from(["c1", "c2"])),
        st.builds(m.DropTransient, NODES, st.booleans()),
        st.builds(m.CreateDefaults, VHOSTS, USERS, st.sampled_from(["h1", "h2"]),
                  st.just("rabbit_password_hashing_sha256"), TAGS),
    )

