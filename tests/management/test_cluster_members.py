"""The management API on a node of a cluster: every member is listed in /api/nodes, a member
that stops shows as down (not as an error), and metadata made through one node's API is
seen through another's (it is replicated by the metadata log).

Queues led on another member are in tests/management/test_cluster_wide.py."""

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
    # b's own figures, asked of b over the peer link.
    seen_b = api.ok("GET", f"/api/nodes/{b.name}")
    assert (seen_b["name"], seen_b["type"], seen_b["running"], seen_b["partitions"]) == (b.name, "disc", True, [])
    assert seen_b["os_pid"] == str(b.proc.pid) and seen_b["mem_used"] > 0 and seen_b["disk_free"] > 0
    assert seen_b["contexts"] == []  # b serves no HTTP API
    # A queue declared over the API is in the replicated metadata: b's leveretctl lists it.
    api.ok("PUT", "/api/queues/%2F/declared-on-a", {"durable": True})
    wait_until(lambda: "declared-on-a" in ok(b, "list_queues", "name").out)

    b.stop()
    wait_until(lambda: running() == {a.name: True, b.name: False}, timeout=30)
    # RabbitMQ 3.10's shape for a member that is down: no figures, no partitions.
    assert api.get(f"/api/nodes/{b.name}").body == {"name": b.name, "type": "disc", "running": False,
                                                    "cluster_links": []}
    assert api.get("/api/overview").status == 200
