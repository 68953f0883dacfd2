"""Issue 12 item 9: the default user, vhost and permissions are made once, on the first start
of a cluster, decided from its replicated metadata, never from what a restarting node has
replayed so far.

Before: the node looked at its metadata as soon as it was Raft leader, which can be before
the stored log has been replayed (the entries commit again only once the new term's first
entry does); it then saw no users and made guest again, with its default password, after
an operator had deleted it (2 restarts in about 40)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from broker import auth
from broker.node import Node
from cluster import metadata as md
from storage.writer import GroupCommitWriter
from tests.ctl.support import ctl, ok
from tests.support.in_process import run_node_once
from tests.support.node_process import NodeProcess, scratch_dir

NAME = "first-start@localhost"
CREATING = "creating user 'guest', vhost '/' and granting full permissions"


def _defaults(password: str = "guest") -> md.CreateDefaults:
    return md.CreateDefaults("/", "guest", auth.hash_password(password), auth.DEFAULT_HASHING,
                             ("administrator",))


# --------------------------------------------------------------------------- the decision


def test_the_first_decision_creates_the_defaults_and_no_later_one_does() -> None:
    state = md.MetadataState()
    applied = state.apply(_defaults())
    assert applied.result is True
    assert state.user("guest") is not None and state.vhost("/") is not None
    assert state.permission("/", "guest") == md.Permission("/", "guest", ".*", ".*", ".*")
    assert state.defaults_decided
    state.apply(md.DeleteUser("guest"))
    for _ in range(3):  # every later start proposes again: nothing comes back
        assert state.apply(_defaults()).result is False
    assert state.user("guest") is None


def test_a_store_from_before_the_decision_is_never_given_defaults_again() -> None:
    # Made by a node that decided "first start" from its own view: users exist, no marker.
    state = md.MetadataState()
    state.apply(md.AddVhost("/"))
    state.apply(md.AddUser("admin", "h"))
    assert not state.defaults_decided
    assert state.apply(_defaults()).result is False
    assert state.defaults_decided and state.user("guest") is None


def test_the_decision_survives_a_snapshot() -> None:
    state = md.MetadataState()
    state.apply(_defaults())
    state.apply(md.DeleteUser("guest"))
    restored = md.MetadataState.restore(state.snapshot())
    assert restored.defaults_decided and restored == state
    assert restored.apply(_defaults()).result is False


def test_a_node_joining_a_cluster_takes_the_clusters_decision() -> None:
    # A joining node's metadata is the cluster's (its snapshot and log); the defaults it
    # proposes at start go through the cluster's log and change nothing there.
    cluster = md.MetadataState()
    cluster.apply(_defaults())
    cluster.apply(md.DeleteUser("guest"))
    joined = md.MetadataState.restore(cluster.snapshot())
    assert joined.apply(_defaults("another-password")).result is False
    assert joined.user("guest") is None


# --------------------------------------------------------------------------- a node restarting


class _SlowDisk:
    """Every durable write takes 50 ms longer: a node becomes leader long before its
    replayed entries are applied, which is where a decision from timing goes wrong."""

    def __init__(self, write):
        self._write = write

    def __get__(self, writer: GroupCommitWriter, owner: type) -> object:
        async def write(batch) -> None:
            await trio.sleep(0.05)
            await self._write(writer, batch)
        return write


async def test_guest_stays_deleted_across_restarts_on_a_slow_disk(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    monkeypatch.setattr(GroupCommitWriter, "write", _SlowDisk(GroupCommitWriter.write))
    data_dir = tmp_path / "node"

    async def delete_guest(node: Node) -> None:
        assert node.metadata.user("guest") is not None
        await node.propose_metadata(md.AddUser("admin", auth.hash_password("s3cret"), tags=("administrator",)))
        await node.propose_metadata(md.DeleteUser("guest"))

    seen: list[tuple[bool, bool]] = []

    async def look(node: Node) -> None:
        seen.append((node.metadata.user("guest") is None, node.metadata.user("admin") is not None))

    await run_node_once(data_dir, NAME, delete_guest)
    for _ in range(5):
        await run_node_once(data_dir, NAME, look)
    assert seen == [(True, True)] * 5


@pytest.fixture
def node() -> Iterator[NodeProcess]:
    with NodeProcess(name=NAME, data_dir=scratch_dir()) as proc:
        yield proc


def test_guest_deleted_stays_deleted_over_many_restarts(node: NodeProcess) -> None:
    node.start()
    ok(node, "add_user", "admin", "s3cret")
    ok(node, "set_user_tags", "admin", "administrator")
    ok(node, "delete_user", "guest")
    restarts = 24
    for i in range(restarts):
        # Half the stops are clean, half are kills: neither may make guest again.
        node.kill() if i % 2 else node.stop()
        node.start()
        users = ok(node, "list_users", "-q", "--formatter", "json").out
        assert '"guest"' not in users and '"admin"' in users, (i, users)
        refused = ctl(node, "authenticate_user", "guest", "guest")
        assert refused.code != 0, (i, refused)
    assert len(re.findall(re.escape(CREATING), node.log_text())) == 1
