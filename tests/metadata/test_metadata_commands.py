"""Every metadata command, its effects, its change records and every refusal text."""

from __future__ import annotations

import pytest

from cluster.metadata import (
    ACCESS_REFUSED, COMMAND_INVALID, NOT_FOUND, PRECONDITION_FAILED, RESOURCE_LOCKED,
    AddUser, AddVhost, Bind, BindingAdded, BindingRemoved, ChangePassword, ClearPermissions,
    ClearPolicy, ClearTopicPermissions, DeclareExchange, DeclareQueue, DeleteExchange,
    DeleteQueue, DeleteQueuesOwnedBy, DeleteUser, DeleteVhost, DropTransient, ExchangeAdded,
    ExchangeRemoved, MetadataState, PermissionChanged, PolicyApplied, PolicyChanged, QueueAdded,
    QueueMoved, QueueRemoved, Refusal, SetPermissions, SetPolicy, SetQueueNode, SetQueueReplicas, SetTopicPermissions, QueueReplicasChanged,
    SetUserTags, TopicPermissionChanged, Unbind, UserChanged, VhostAdded, VhostRemoved,
)


@pytest.fixture
def state() -> MetadataState:
    s = MetadataState()
    assert s.apply(AddVhost("/")).ok
    return s


def ok(state: MetadataState, cmd):
    applied = state.apply(cmd)
    assert applied.ok, applied.result
    return applied


def refused(state: MetadataState, cmd, code: int, text: str) -> None:
    before = state.snapshot()
    applied = state.apply(cmd)
    assert applied.result == Refusal(code, text)
    assert applied.changes == ()
    # Only the version moved.
    after = MetadataState.restore(state.snapshot())
    after.version -= 1
    assert after.snapshot() == before


def queue(name: str = "q", durable: bool = True, owner: str | None = None, args=None, node: str = "n1",
          auto_delete: bool = False, **kw) -> DeclareQueue:
    return DeclareQueue("/", name, durable, auto_delete, owner, args or {}, node, **kw)


# ---------------------------------------------------------------- vhosts


def test_add_vhost_creates_standard_exchanges() -> None:
    s = MetadataState()
    applied = ok(s, AddVhost("v", "desc", ("a",), "quorum"))
    assert isinstance(applied.changes[0], VhostAdded)
    names = {(x.name, x.type, x.internal, x.durable) for x in s.exchanges("v")}
    assert names == {("", "direct", False, True), ("amq.direct", "direct", False, True),
                     ("amq.fanout", "fanout", False, True), ("amq.topic", "topic", False, True),
                     ("amq.headers", "headers", False, True), ("amq.match", "headers", False, True),
                     ("amq.rabbitmq.trace", "topic", True, True)}
    assert s.vhost("v").tags == ("a",) and s.vhost("v").default_queue_type == "quorum"
    # rabbit_vhost:add of an existing vhost is a no-op success.
    again = ok(s, AddVhost("v"))
    assert again.changes == () and s.vhost("v").description == "desc"


def test_delete_vhost_cascades(state: MetadataState) -> None:
    ok(state, AddUser("u", "h"))
    ok(state, SetPermissions("/", "u", ".*", ".*", ".*"))
    ok(state, SetTopicPermissions("/", "u", "amq.topic", ".*", ".*"))
    ok(state, DeclareExchange("/", "x", "fanout"))
    ok(state, queue())
    ok(state, Bind("/", "x", "q", "queue", ""))
    ok(state, SetPolicy("/", "p", ".*", "all", {"max-length": 1}))
    applied = ok(state, DeleteVhost("/"))
    kinds = [type(c) for c in applied.changes]
    assert kinds.index(BindingRemoved) < kinds.index(QueueRemoved) < kinds.index(ExchangeRemoved)
    assert PermissionChanged in kinds and TopicPermissionChanged in kinds and PolicyChanged in kinds
    assert kinds[-1] is VhostRemoved
    assert state.vhosts() == [] and state.permissions() == [] and state.topic_permissions() == []
    assert state.user("u") is not None
    refused(state, DeleteVhost("/"), NOT_FOUND, 'Virtual host "/" does not exist')


# ---------------------------------------------------------------- users and permissions


def test_users(state: MetadataState) -> None:
    applied = ok(state, AddUser("u", "hash1", tags=("administrator",)))
    assert applied.changes == (UserChanged("u", state.user("u")),)
    refused(state, AddUser("u", "x"), PRECONDITION_FAILED, 'User "u" already exists')
    ok(state, ChangePassword("u", "hash2"))
    assert state.user("u").password_hash == "hash2" and state.user("u").tags == ("administrator",)
    ok(state, SetUserTags("u", ("monitoring", "management")))
    assert state.user("u").tags == ("monitoring", "management")
    assert state.user("u").password_hash == "hash2"
    for cmd in (DeleteUser("nobody"), ChangePassword("nobody", "h"), SetUserTags("nobody", ())):
        refused(state, cmd, NOT_FOUND, 'User "nobody" does not exist')
    ok(state, SetPermissions("/", "u", "c", "w", "r"))
    ok(state, SetTopicPermissions("/", "u", "amq.topic", "w", "r"))
    applied = ok(state, DeleteUser("u"))
    assert applied.changes[-1] == UserChanged("u", None)
    assert state.permissions() == [] and state.topic_permissions() == [] and state.users() == []


def test_permissions(state: MetadataState) -> None:
    ok(state, AddUser("u", "h"))
    ok(state, AddVhost("v"))
    ok(state, SetPermissions("/", "u", "^c", "^w", "^r"))
    ok(state, SetPermissions("v", "u", "", "", ""))
    assert state.permission("/", "u").configure == "^c"
    assert [p.vhost for p in state.permissions(user="u")] == ["/", "v"]
    assert [p.user for p in state.permissions(vhost="v")] == ["u"]
    refused(state, SetPermissions("/", "ghost", "", "", ""), NOT_FOUND, 'User "ghost" does not exist')
    refused(state, SetPermissions("nope", "u", "", "", ""), NOT_FOUND, 'Virtual host "nope" does not exist')
    # The user is checked before the vhost, as rabbit_auth_backend_internal does.
    refused(state, SetPermissions("nope", "ghost", "", "", ""), NOT_FOUND, 'User "ghost" does not exist')
    applied = ok(state, ClearPermissions("/", "u"))
    assert applied.changes == (PermissionChanged("/", "u", None),)
    assert ok(state, ClearPermissions("/", "u")).changes == ()
    refused(state, ClearPermissions("nope", "u"), NOT_FOUND, 'Virtual host "nope" does not exist')


def test_topic_permissions(state: MetadataState) -> None:
    ok(state, AddUser("u", "h"))
    ok(state, SetTopicPermissions("/", "u", "amq.topic", "^w", "^r"))
    ok(state, SetTopicPermissions("/", "u", "other", "", ""))
    assert len(state.topic_permissions(vhost="/", user="u")) == 2
    assert state.topic_permissions(exchange="other")[0].write == ""
    applied = ok(state, ClearTopicPermissions("/", "u", "other"))
    assert applied.changes == (TopicPermissionChanged("/", "u", "other", None),)
    ok(state, SetTopicPermissions("/", "u", "x2", "", ""))
    applied = ok(state, ClearTopicPermissions("/", "u"))
    assert len(applied.changes) == 2 and state.topic_permissions() == []
    refused(state, SetTopicPermissions("/", "ghost", "x", "", ""), NOT_FOUND, 'User "ghost" does not exist')
    refused(state, ClearTopicPermissions("nope", "u"), NOT_FOUND, 'Virtual host "nope" does not exist')


# ---------------------------------------------------------------- exchanges


def test_declare_exchange_and_equivalence(state: MetadataState) -> None:
    applied = ok(state, DeclareExchange("/", "x", "direct", durable=True))
    assert applied.changes == (ExchangeAdded(state.exchange("/", "x")),)
    assert ok(state, DeclareExchange("/", "x", "direct", durable=True)).changes == ()
    pre = "PRECONDITION_FAILED - inequivalent arg"
    refused(state, DeclareExchange("/", "x", "fanout", durable=True), PRECONDITION_FAILED,
            f"{pre} 'type' for exchange 'x' in vhost '/': received 'fanout' but current is 'direct'")
    refused(state, DeclareExchange("/", "x", "direct", durable=False), PRECONDITION_FAILED,
            f"{pre} 'durable' for exchange 'x' in vhost '/': received 'false' but current is 'true'")
    refused(state, DeclareExchange("/", "x", "direct", durable=True, auto_delete=True), PRECONDITION_FAILED,
            f"{pre} 'auto_delete' for exchange 'x' in vhost '/': received 'true' but current is 'false'")
    refused(state, DeclareExchange("/", "x", "direct", durable=True, internal=True), PRECONDITION_FAILED,
            f"{pre} 'internal' for exchange 'x' in vhost '/': received 'true' but current is 'false'")
    refused(state, DeclareExchange("/", "x", "direct", True, arguments={"alternate-exchange": "ae"}),
            PRECONDITION_FAILED,
            f"{pre} 'alternate-exchange' for exchange 'x' in vhost '/': received the value 'ae' "
            "of type 'longstr' but current is none")
    # Arguments other than alternate-exchange are not compared.
    ok(state, DeclareExchange("/", "x", "direct", True, arguments={"x-whatever": 1}))


def test_declare_exchange_refusals(state: MetadataState) -> None:
    refused(state, DeclareExchange("/", "x", "bogus"), COMMAND_INVALID,
            "COMMAND_INVALID - unknown exchange type 'bogus'")
    refused(state, DeclareExchange("/", "", "direct"), ACCESS_REFUSED,
            "ACCESS_REFUSED - operation not permitted on the default exchange")
    refused(state, DeclareExchange("/", "amq.foo", "direct"), ACCESS_REFUSED,
            "ACCESS_REFUSED - exchange name 'amq.foo' contains reserved prefix 'amq.*'")
    refused(state, DeclareExchange("/", "x", "direct", arguments={"alternate-exchange": 5}), PRECONDITION_FAILED,
            "PRECONDITION_FAILED - invalid type 'signedint' for arg 'alternate-exchange' in exchange 'x' in vhost '/'")
    refused(state, DeclareExchange("nope", "x", "direct"), NOT_FOUND, "NOT_FOUND - no vhost 'nope'")
    # An existing amq.* exchange may be redeclared equivalently.
    ok(state, DeclareExchange("/", "amq.direct", "direct", durable=True))


def test_delete_exchange(state: MetadataState) -> None:
    ok(state, DeclareExchange("/", "x", "fanout"))
    ok(state, DeclareExchange("/", "y", "fanout"))
    ok(state, queue())
    ok(state, Bind("/", "x", "q", "queue", ""))
    ok(state, Bind("/", "y", "x", "exchange", ""))
    refused(state, DeleteExchange("/", "x", if_unused=True), PRECONDITION_FAILED,
            "PRECONDITION_FAILED - exchange 'x' in vhost '/' in use")
    # Being a destination does not make an exchange "in use".
    ok(state, Unbind("/", "x", "q", "queue", ""))
    applied = ok(state, DeleteExchange("/", "x", if_unused=True))
    assert [type(c) for c in applied.changes] == [BindingRemoved, ExchangeRemoved]
    assert applied.result is True and state.bindings("/") == []
    assert ok(state, DeleteExchange("/", "x")).result is False   # idempotent
    refused(state, DeleteExchange("/", ""), ACCESS_REFUSED,
            "ACCESS_REFUSED - operation not permitted on the default exchange")
    refused(state, DeleteExchange("/", "amq.direct"), ACCESS_REFUSED,
            "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed")


def test_auto_delete_exchanges_cascade(state: MetadataState) -> None:
    ok(state, DeclareExchange("/", "top", "fanout", auto_delete=True))
    ok(state, DeclareExchange("/", "mid", "fanout", auto_delete=True))
    ok(state, queue())
    ok(state, Bind("/", "top", "mid", "exchange", ""))
    ok(state, Bind("/", "mid", "q", "queue", ""))
    applied = ok(state, DeleteQueue("/", "q"))
    assert [type(c) for c in applied.changes] == [
        BindingRemoved, QueueRemoved, BindingRemoved, ExchangeRemoved, ExchangeRemoved]
    assert state.exchange("/", "mid") is None and state.exchange("/", "top") is None
    # An auto-delete exchange that never had bindings stays.
    ok(state, DeclareExchange("/", "lonely", "fanout", auto_delete=True))
    ok(state, queue("q2"))
    ok(state, DeleteQueue("/", "q2"))
    assert state.exchange("/", "lonely") is not None


# ---------------------------------------------------------------- queues


def test_declare_queue_and_equivalence(state: MetadataState) -> None:
    applied = ok(state, queue(args={"x-max-length": 10, "x-custom": "a"}))
    assert applied.changes == (QueueAdded(state.queue("/", "q")),)
    assert ok(state, queue(args={"x-max-length": 10, "x-custom": "changed"})).changes == ()
    pre = "PRECONDITION_FAILED - inequivalent arg"
    refused(state, queue(durable=False, args={"x-max-length": 10}), PRECONDITION_FAILED,
            f"{pre} 'durable' for queue 'q' in vhost '/': received 'false' but current is 'true'")
    refused(state, queue(auto_delete=True, args={"x-max-length": 10}), PRECONDITION_FAILED,
            f"{pre} 'auto_delete' for queue 'q' in vhost '/': received 'true' but current is 'false'")
    refused(state, queue(args={"x-max-length": 20}), PRECONDITION_FAILED,
            f"{pre} 'x-max-length' for queue 'q' in vhost '/': received '20' but current is '10'")
    refused(state, queue(args={}), PRECONDITION_FAILED,
            f"{pre} 'x-max-length' for queue 'q' in vhost '/': received none but current is "
            "the value '10' of type 'signedint'")
    refused(state, queue(args={"x-max-length": 10, "x-message-ttl": 1.5}), PRECONDITION_FAILED,
            f"{pre} 'x-message-ttl' for queue 'q' in vhost '/': received the value '1.5' of type "
            "'double' but current is none")
    # Integer types are one class: a long equal to the signedint is equivalent.
    ok(state, queue("big", args={"x-max-length-bytes": 2 ** 40}))
    ok(state, queue("big", args={"x-max-length-bytes": 2 ** 40}))
    ok(state, queue("small", args={"x-max-priority": 5}))
    refused(state, queue("small", args={"x-max-priority": 5.0}), PRECONDITION_FAILED,
            f"{pre} 'x-max-priority' for queue 'small' in vhost '/': received '5.0' but current is '5'")
    # Both present with other types: the bare values too (RabbitMQ 3.10.8, checked with py-amqp).
    refused(state, queue("small", args={"x-max-priority": "x"}), PRECONDITION_FAILED,
            f"{pre} 'x-max-priority' for queue 'small' in vhost '/': received 'x' but current is '5'")


def test_queue_type_classic_is_the_default(state: MetadataState) -> None:
    ok(state, queue("c"))
    ok(state, queue("c", args={"x-queue-type": "classic"}))
    ok(state, queue("c2", args={"x-queue-type": "classic"}))
    ok(state, queue("c2"))
    refused(state, queue("c", args={"x-queue-type": "quorum"}), PRECONDITION_FAILED,
            "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'c' in vhost '/': "
            "received the value 'quorum' of type 'longstr' but current is none")


def test_declare_queue_refusals(state: MetadataState) -> None:
    refused(state, queue("amq.foo"), ACCESS_REFUSED,
            "ACCESS_REFUSED - queue name 'amq.foo' contains reserved prefix 'amq.*'")
    ok(state, queue("amq.gen-abc", server_named=True))
    refused(state, DeclareQueue("nope", "q", True, False, None, {}, "n1"), NOT_FOUND, "NOT_FOUND - no vhost 'nope'")
    refused(state, queue("d", args={"x-dead-letter-exchange": 1}), PRECONDITION_FAILED,
            "PRECONDITION_FAILED - invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue 'd' in vhost '/'")


def test_exclusive_queues(state: MetadataState) -> None:
    locked = ("RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'ex' in vhost '/'. "
              "It could be originally declared on another connection or the exclusive property value "
              "does not match that of the original declaration.")
    ok(state, queue("ex", durable=False, owner="conn-1"))
    ok(state, queue("ex", durable=False, owner="conn-1"))
    refused(state, queue("ex", durable=False, owner="conn-2"), RESOURCE_LOCKED, locked)
    refused(state, queue("ex", durable=False, owner=None), RESOURCE_LOCKED, locked)
    ok(state, queue("shared"))
    refused(state, queue("shared", owner="conn-1"), RESOURCE_LOCKED, locked.replace("'ex'", "'shared'"))
    refused(state, DeleteQueue("/", "ex", connection="conn-2"), RESOURCE_LOCKED, locked)
    ok(state, DeclareExchange("/", "x", "fanout"))
    refused(state, Bind("/", "x", "ex", "queue", "", {}, "conn-2"), RESOURCE_LOCKED, locked)
    ok(state, Bind("/", "x", "ex", "queue", "", {}, "conn-1"))
    refused(state, Unbind("/", "x", "ex", "queue", "", {}, "conn-2"), RESOURCE_LOCKED, locked)
    ok(state, queue("ex2", durable=False, owner="conn-1"))
    ok(state, queue("other", durable=False, owner="conn-3"))
    applied = ok(state, DeleteQueuesOwnedBy("conn-1"))
    assert applied.result == 2
    assert {q.name for q in state.queues("/")} == {"shared", "other"}
    assert state.bindings("/") == []


def test_delete_queue(state: MetadataState) -> None:
    ok(state, queue())
    ok(state, DeclareExchange("/", "x", "direct"))
    ok(state, Bind("/", "x", "q", "queue", "k"))
    applied = ok(state, DeleteQueue("/", "q"))
    assert [type(c) for c in applied.changes] == [BindingRemoved, QueueRemoved]
    assert applied.result is True
    assert ok(state, DeleteQueue("/", "q")).result is False
    assert ok(state, DeleteQueue("nope", "q")).result is False


def test_set_queue_node(state: MetadataState) -> None:
    ok(state, queue(node="n1"))
    applied = ok(state, SetQueueNode("/", "q", "n2"))
    assert applied.changes == (QueueMoved(state.queue("/", "q"), "n1"),)
    assert state.queue("/", "q").node == "n2"
    assert ok(state, SetQueueNode("/", "q", "n2")).changes == ()
    refused(state, SetQueueNode("/", "ghost", "n2"), NOT_FOUND, "NOT_FOUND - no queue 'ghost' in vhost '/'")


def test_set_queue_replicas(state: MetadataState) -> None:
    ok(state, queue(node="n1"))
    before = state.queue("/", "q")
    assert not before.replicated
    applied = ok(state, SetQueueReplicas("/", "q", "q.7", ("n1", "n2")))
    after = state.queue("/", "q")
    assert applied.changes == (QueueReplicasChanged(after, before),)
    assert after.replicated and after.group == "q.7" and after.replicas == ("n1", "n2")
    assert ok(state, SetQueueReplicas("/", "q", "q.7", ("n1", "n2"))).changes == ()
    # The leader moves with the group kept.
    ok(state, SetQueueNode("/", "q", "n2"))
    assert state.queue("/", "q").group == "q.7"
    assert MetadataState.restore(state.snapshot()).queue("/", "q") == state.queue("/", "q")
    refused(state, SetQueueReplicas("/", "ghost", "", ()), NOT_FOUND, "NOT_FOUND - no queue 'ghost' in vhost '/'")


def test_drop_transient(state: MetadataState) -> None:
    ok(state, DeclareExchange("/", "tx", "fanout", durable=False))
    ok(state, DeclareExchange("/", "dx", "fanout", durable=True))
    ok(state, queue("durable-here", node="n1"))
    ok(state, queue("transient-here", durable=False, node="n1"))
    ok(state, queue("exclusive-here", durable=False, owner="c", node="n1"))
    ok(state, queue("transient-elsewhere", durable=False, node="n2"))
    ok(state, Bind("/", "dx", "transient-here", "queue", ""))
    ok(state, Bind("/", "dx", "durable-here", "queue", ""))
    applied = ok(state, DropTransient("n1"))
    assert applied.result == 2
    assert {q.name for q in state.queues("/")} == {"durable-here", "transient-elsewhere"}
    assert [b.destination for b in state.bindings("/")] == ["durable-here"]
    assert state.exchange("/", "tx") is not None
    ok(state, Bind("/", "tx", "durable-here", "queue", ""))
    ok(state, DropTransient("n2", exchanges=True))
    assert state.exchange("/", "tx") is None and state.exchange("/", "dx") is not None
    assert [b.source for b in state.bindings("/")] == ["dx"]


# ---------------------------------------------------------------- bindings


def test_bind_and_unbind(state: MetadataState) -> None:
    ok(state, DeclareExchange("/", "x", "direct"))
    ok(state, DeclareExchange("/", "y", "fanout"))
    ok(state, queue())
    applied = ok(state, Bind("/", "x", "q", "queue", "k", {"a": 1}))
    assert applied.changes == (BindingAdded(applied.result),)
    assert ok(state, Bind("/", "x", "q", "queue", "k", {"a": 1})).changes == ()   # idempotent
    ok(state, Bind("/", "x", "q", "queue", "k", {"a": 2}))   # different arguments: another binding
    ok(state, Bind("/", "x", "y", "exchange", "k"))
    assert len(state.bindings("/", source="x")) == 3
    assert len(state.bindings("/", destination="q", destination_kind="queue")) == 2
    assert [b.destination for b in state.bindings("/", destination="y")] == ["y"]
    applied = ok(state, Unbind("/", "x", "q", "queue", "k", {"a": 1}))
    assert [type(c) for c in applied.changes] == [BindingRemoved]
    # Unbinding what is not bound succeeds (current RabbitMQ), even with missing ends.
    assert ok(state, Unbind("/", "x", "q", "queue", "k", {"a": 1})).result is False
    assert ok(state, Unbind("/", "ghost", "q", "queue", "k")).result is False


def test_bind_refusals(state: MetadataState) -> None:
    ok(state, DeclareExchange("/", "x", "direct"))
    ok(state, DeclareExchange("/", "h", "headers"))
    ok(state, queue())
    default = "ACCESS_REFUSED - operation not permitted on the default exchange"
    refused(state, Bind("/", "", "q", "queue", "q"), ACCESS_REFUSED, default)
    refused(state, Bind("/", "x", "", "exchange", ""), ACCESS_REFUSED, default)
    refused(state, Unbind("/", "", "q", "queue", "q"), ACCESS_REFUSED, default)
    refused(state, Bind("/", "ghost", "q", "queue", ""), NOT_FOUND, "NOT_FOUND - no exchange 'ghost' in vhost '/'")
    refused(state, Bind("/", "ghost", "ghostq", "queue", ""), NOT_FOUND,
            "NOT_FOUND - no exchange 'ghost' in vhost '/'")
    refused(state, Bind("/", "x", "ghost", "queue", ""), NOT_FOUND, "NOT_FOUND - no queue 'ghost' in vhost '/'")
    refused(state, Bind("/", "x", "ghost", "exchange", ""), NOT_FOUND,
            "NOT_FOUND - no exchange 'ghost' in vhost '/'")
    refused(state, Bind("/", "h", "q", "queue", "", {"x-match": "some"}), PRECONDITION_FAILED,
            'PRECONDITION_FAILED - Invalid x-match field value <<"some">>; expected all, any, all-with-x, or any-with-x')
    refused(state, Bind("/", "h", "q", "queue", "", {"x-match": 1}), PRECONDITION_FAILED,
            "PRECONDITION_FAILED - Invalid x-match field type signedint (value 1); expected longstr")
    refused(state, Bind("nope", "x", "q", "queue", ""), NOT_FOUND, "NOT_FOUND - no vhost 'nope'")
    ok(state, Bind("/", "h", "q", "queue", "", {"x-match": "any-with-x"}))


# ---------------------------------------------------------------- policies


def test_policies_and_effective_policy(state: MetadataState) -> None:
    ok(state, queue("orders.1"))
    ok(state, queue("q2", args={"x-queue-type": "quorum"}, type="quorum"))
    ok(state, DeclareExchange("/", "orders.x", "topic"))
    applied = ok(state, SetPolicy("/", "low", "^orders", "all", {"max-length": 1}, 1))
    assert applied.changes[0] == PolicyChanged("/", "low", state.policy("/", "low"))
    applied_to = {(c.kind, c.name) for c in applied.changes if isinstance(c, PolicyApplied)}
    assert applied_to == {("queue", "orders.1"), ("exchange", "orders.x")}
    ok(state, SetPolicy("/", "high", "^orders", "queues", {"max-length": 2}, 5))
    assert state.effective_policy("/", "orders.1", "queue").name == "high"
    assert state.effective_policy("/", "orders.x", "exchange").name == "low"
    # Equal priorities: the smaller name wins, deterministically.
    ok(state, SetPolicy("/", "a-tie", "^orders", "queues", {}, 5))
    assert state.effective_policy("/", "orders.1", "queue").name == "a-tie"
    # The pattern is a search, not a full match.
    ok(state, SetPolicy("/", "mid", "2$", "quorum_queues", {}, 0))
    assert state.effective_policy("/", "q2", "queue").name == "mid"
    ok(state, SetPolicy("/", "classic-only", "2$", "classic_queues", {}, 9))
    assert state.effective_policy("/", "q2", "queue").name == "mid"
    applied = ok(state, ClearPolicy("/", "a-tie"))
    assert PolicyApplied("/", "queue", "orders.1", state.policy("/", "high")) in applied.changes
    refused(state, ClearPolicy("/", "a-tie"), NOT_FOUND, "Parameter does not exist")
    refused(state, SetPolicy("nope", "p", ".*", "all", {}), NOT_FOUND, 'Virtual host "nope" does not exist')
    assert not state.apply(SetPolicy("/", "bad", "(", "all", {})).ok
    assert not state.apply(SetPolicy("/", "bad", ".*", "everything", {})).ok
    assert [p.name for p in state.policies("/")] == ["low", "high", "mid", "classic-only"]


def test_version_counts_every_applied_command(state: MetadataState) -> None:
    v = state.version
    state.apply(AddUser("u", "h"))
    state.apply(AddUser("u", "h"))   # refused, still applied
    assert state.version == v + 2
