"""Commands survive the Raft log's msgpack encoding; snapshots restore equal states."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from cluster import metadata as m

from .strategies import ANY_VALUE, commands

ONE_OF_EACH = [
    m.AddVhost("v", "d", ("t",), "quorum"), m.DeleteVhost("v"),
    m.AddUser("u", "h", "rabbit_password_hashing_sha512", ("administrator",)), m.DeleteUser("u"),
    m.ChangePassword("u", "h2"), m.SetUserTags("u", ("a", "b")),
    m.SetPermissions("v", "u", "c", "w", "r"), m.ClearPermissions("v", "u"),
    m.SetTopicPermissions("v", "u", "x", "w", "r"), m.ClearTopicPermissions("v", "u", None),
    m.DeclareExchange("v", "x", "topic", True, False, True, {"alternate-exchange": "ae"}),
    m.DeleteExchange("v", "x", True),
    m.DeclareQueue("v", "q", True, False, "conn", {"x-max-length": 2 ** 40, "n": [1, {"k": b"\x00"}]}, "n1",
                   "quorum", False),
    m.DeleteQueue("v", "q", "conn"), m.SetQueueNode("v", "q", "n2"), m.SetQueueReplicas("v", "q", "q.1", ("n1", "n2")),
    m.Bind("v", "x", "q", "queue", "a.#", {"x-match": "any", "h": None}, "conn"),
    m.Unbind("v", "x", "y", "exchange", "", {}, None),
    m.SetPolicy("v", "p", "^q", "queues", {"max-length": 1, "ha-mode": "all"}, 3), m.ClearPolicy("v", "p"),
    m.DeleteQueuesOwnedBy("conn"), m.DropTransient("n1", True),
    m.CreateDefaults("/", "guest", "h", "rabbit_password_hashing_sha256", ("administrator",)),
]


def through_the_log(cmd: m.Command) -> m.Command:
    data = msgpack.packb(cmd.to_wire(), use_bin_type=True)
    return m.command_from_wire(msgpack.unpackb(data, raw=False))


def test_examples_cover_every_command() -> None:
    assert {type(c) for c in ONE_OF_EACH} == set(m.iter_commands())


@pytest.mark.parametrize("cmd", ONE_OF_EACH, ids=lambda c: type(c).__name__)
def test_each_command_round_trips(cmd: m.Command) -> None:
    back = through_the_log(cmd)
    assert back == cmd and type(back) is type(cmd)


@settings(max_examples=300, deadline=None)
@given(cmd=commands(st.dictionaries(st.sampled_from(["a", "x-b", "alternate-exchange"]), ANY_VALUE, max_size=3)))
def test_generated_commands_round_trip(cmd: m.Command) -> None:
    assert through_the_log(cmd) == cmd


def test_unknown_command_is_rejected() -> None:
    with pytest.raises(ValueError):
        m.command_from_wire(["NoSuchCommand", 1])


@settings(max_examples=150, deadline=None)
@given(cmds=st.lists(commands(), max_size=40))
def test_snapshot_restore_round_trip(cmds: list[m.Command]) -> None:
    state = m.MetadataState()
    for cmd in [m.AddVhost("/"), m.AddVhost("v1"), *cmds]:
        state.apply(cmd)
    data = state.snapshot()
    restored = m.MetadataState.restore(data)
    assert restored.snapshot() == data
    assert restored == state and restored.version == state.version
    for vhost in ("/", "v1"):
        assert restored.exchanges(vhost) == state.exchanges(vhost)
        assert restored.queues(vhost) == state.queues(vhost)
        assert restored.bindings(vhost) == state.bindings(vhost)
        assert restored.policies(vhost) == state.policies(vhost)
        for x in state.exchanges(vhost):
            assert restored.effective_policy(vhost, x.name, "exchange") == \
                state.effective_policy(vhost, x.name, "exchange")
    assert restored.users() == state.users() and restored.vhosts() == state.vhosts()
    assert restored.permissions() == state.permissions()
    assert restored.topic_permissions() == state.topic_permissions()


def test_encoded_commands_decode_to_equal_commands() -> None:
    import datetime
    import decimal

    from cluster.metadata import DeclareQueue, decode_command, encode_command

    cmd = DeclareQueue("/", "q\udcff", True, False, None,
                       {"x-max-length": 10, "when": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
                        "d": decimal.Decimal("1.5"), "b": b"\x00\xff"}, "n@h")
    assert decode_command(encode_command(cmd)) == cmd
