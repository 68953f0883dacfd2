"""The management API on a node of a cluster: every member is listed in /api/nodes, a member
that stops shows as down (not as an error), and metadata made through one node's API is
seen through another's (it is replicated by the metadata log).

What is not there yet: another member's own figures, and counts for queues homed on it
(docs/management.md, "Not yet")."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.ctl.support import ok, wait_until
from tests.management.http import Api
from tests.support.node_process import NodeProcess, wait_for_port


@pytest.fixture
def pair() -> Iterator[tuple[NodeProcess, NodeProcess]]:
    nodes = (NodeProcess(name="mgmt-a@localhost").with_http(), NodeProcess(name="mgmt-b@localhost"))
    try:
        for node in nodes:
            node.start()
        wait_for_port(nodes[0].host, nodes[0].management_port, 10)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def test_members_are_listed_and_a_stopped_one_shows_as_down(pair: tuple[NodeProcess, NodeProcess]) -> None:
    a, b = pair
    ok(b, "stop_app")
    ok(b, "join_cluster", a.name)
    ok(b, "start_app")
    api = Api(a.management_url)

    def running() -> dict[str, bool]:
        return {n["name"]: n["running"] for n in api.ok("GET", "/api/nodes")}

    wait_until(lambda: running() == {a.name: True, b.name: True})
    assert api.ok("GET", f"/api/nodes/{b.name}") == {"name": b.name, "type": "disc", "running": True,
                                                     "partitions": []}
    # A queue declared over the API is in the replicated metadata: b's leveretctl lists it.
    api.ok("PUT", "/api/queues/%2F/declared-on-a", {"durable": True})
    wait_until(lambda: "declared-on-a" in ok(b, "list_queues", "name").out)

    b.stop()
    wait_until(lambda: running() == {a.name: True, b.name: False}, timeout=30)
    assert api.get(f"/api/nodes/{b.name}").body["running"] is False
    assert api.get("/api/overview").status == 200
