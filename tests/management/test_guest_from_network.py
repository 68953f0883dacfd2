"""The loopback-only guest over HTTP: the management API refuses guest's login from an
address that is not loopback (as RabbitMQ's does, and as AMQP does here), and lets in a
user that is not in loopback_users.

As in tests/integration/test_guest_from_network.py, the client runs in a network namespace
joined to ours by a veth pair (tests/support/netns.py), so the node sees it arrive from
another address; the node listens on our end of the pair."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.management.http import Api
from tests.support.netns import VethNamespace, veth_namespace
from tests.support.node_process import NodeProcess, free_port, wait_for_port

# Runs inside the namespace: one GET of /api/whoami, printing the status and body.
_CLIENT = """
import base64, json, sys, urllib.error, urllib.request
url, user, password = sys.argv[1:]
req = urllib.request.Request(url)
req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
try:
    with urllib.request.urlopen(req, timeout=20) as resp:
        print(json.dumps([resp.status, json.loads(resp.read())]))
except urllib.error.HTTPError as err:
    print(json.dumps([err.code, json.loads(err.read())]))
"""


@pytest.fixture(scope="module")
def netns() -> Iterator[VethNamespace]:
    with veth_namespace() as made:
        yield made


def whoami_from(ns: VethNamespace, url: str, user: str, password: str) -> tuple[int, dict]:
    out = subprocess.run(ns.command([sys.executable, "-c", _CLIENT, url + "/api/whoami", user, password]),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    status, body = json.loads(out.stdout)
    return status, body


def node_on(ns: VethNamespace, **kw: object) -> NodeProcess:
    node = NodeProcess(host=ns.host_address, **kw)  # type: ignore[arg-type]
    node.management_port = free_port(ns.host_address)
    return node


def test_guest_is_refused_from_another_address(netns: VethNamespace) -> None:
    with node_on(netns, name="mgmt-guestnet@localhost") as node:
        node.start()
        wait_for_port(node.host, node.management_port, 10)
        assert whoami_from(netns, node.management_url, "guest", "guest") == (
            401, {"error": "not_authorized", "reason": "Login failed"})
        # From our end of the pair too: the node's address is not loopback either.
        assert Api(node.management_url).get("/api/whoami").status == 401
        assert "user 'guest' can only connect via localhost" in node.log_text()


def test_a_user_not_in_loopback_users_is_let_in_from_another_address(netns: VethNamespace) -> None:
    # The user made at first start is this one instead of guest (RabbitMQ's default_user/default_pass).
    env = {"LEVERET_DEFAULT_USER": "alice", "LEVERET_DEFAULT_PASS": "s3cret-alice"}
    with node_on(netns, name="mgmt-alicenet@localhost", extra_env=env) as node:
        node.start()
        wait_for_port(node.host, node.management_port, 10)
        assert whoami_from(netns, node.management_url, "alice", "s3cret-alice") == (
            200, {"name": "alice", "tags": ["administrator"]})


def test_guest_is_let_in_from_another_address_when_loopback_users_is_empty(netns: VethNamespace) -> None:
    with node_on(netns, name="mgmt-opennet@localhost", config={"loopback_users": []}) as node:
        node.start()
        wait_for_port(node.host, node.management_port, 10)
        assert whoami_from(netns, node.management_url, "guest", "guest") == (
            200, {"name": "guest", "tags": ["administrator"]})
