"""RabbitMQ's loopback-only `guest`, end to end, from an address that is not loopback.

RabbitMQ (since 3.3) lets the users in `loopback_users` (by default just
`guest`) log in only over a loopback connection; anywhere else the login is
refused like bad credentials: connection.close 403 with a text that tells the
client nothing, and the reason ("user 'guest' can only connect via
localhost") only in the broker's log. Every other integration test connects
over 127.0.0.1, where the rule never bites, so here the test makes a host of
its own: a network namespace joined to the root namespace by a veth pair
(tests/support/netns.py). Clients run inside it with `ip netns exec`, so the
node sees them arrive from 10.213.x.y on a 10.213.x.y listener, as a client on
another machine would; no packet leaves the pair.

What a client sees is what pika reports (the client itself runs in the
namespace as a subprocess, see `_CLIENT`), compared with RabbitMQ 3.10's
exact reply code and text, written out here rather than imported from the
broker so the test pins RabbitMQ's wording, not Leveret's.

A node listening on every address (node_ip_address empty) is run inside the
namespace, not in the root one: there its wildcard listener covers only the
namespace's own `lo` and veth end, so the "loopback still works, the network
does not" pair is checked on one node without opening a port on the
machine's real interfaces.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.netns import VethNamespace, veth_namespace
from tests.support.node_process import NodeProcess

# rabbit_reader:auth_fail/5 for a client that announced authentication_failure_close (pika does).
RABBITMQ_REFUSAL_CODE = 403
RABBITMQ_REFUSAL_TEXT = (
    "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. "
    "For details see the broker logfile."
)
# The log line (rabbit_access_control:check_user_loopback/2, through auth_fail's "~s login refused: ~s").
LOOPBACK_LOG = "PLAIN login refused: user 'guest' can only connect via localhost"

CLIENT_TIMEOUT = 30.0  # one client run: interpreter start, connect, one message, close
LOG_TIMEOUT = 5.0

# The client, run as `python -c _CLIENT '{json args}'` (inside the namespace or not). It prints
# one JSON line: either the refusal as pika reports it, or the body of the one message it
# published to a queue of its own and fetched back. pika only keeps the broker's close as the
# repr inside ProbableAuthenticationError, so the code and text are parsed out of it here.
_CLIENT = r"""
import json, re, sys, time
import pika, pika.exceptions

a = json.loads(sys.argv[1])
params = pika.ConnectionParameters(
    host=a["host"], port=a["port"], virtual_host="/",
    credentials=pika.PlainCredentials(a["user"], a["password"]),
    connection_attempts=1, socket_timeout=5, stack_timeout=15, blocked_connection_timeout=10,
)
try:
    conn = pika.BlockingConnection(params)
except pika.exceptions.AMQPConnectionError as exc:
    m = re.fullmatch(r"ConnectionClosedByBroker: \((\d+)\) '(.*)'", str(exc), re.S)
    print(json.dumps({"connected": False, "error": type(exc).__name__, "message": str(exc),
                      "reply_code": int(m[1]) if m else None, "reply_text": m[2] if m else None}))
    sys.exit(0)
ch = conn.channel()
ch.confirm_delivery()
queue = ch.queue_declare("", exclusive=True).method.queue
ch.basic_publish("", queue, a["body"].encode(), mandatory=True)
deadline = time.monotonic() + 5
body = None
while body is None and time.monotonic() < deadline:
    method, _props, got = ch.basic_get(queue, auto_ack=True)
    if method is not None:
        body = got.decode()
    else:
        time.sleep(0.02)
conn.close()
print(json.dumps({"connected": True, "body": body}))
"""


@dataclass
class NamespacedNode(NodeProcess):
    """A NodeProcess whose server runs inside `namespace` (iproute2 execs it, so `proc` is the server)."""

    namespace: VethNamespace | None = None

    def command(self) -> list[str]:
        assert self.namespace is not None
        return self.namespace.command(super().command())


@pytest.fixture(scope="module")
def netns() -> Iterator[VethNamespace]:
    with veth_namespace() as made:
        yield made


@pytest.fixture
def workdir() -> Iterator[Path]:
    # NodeProcess puts its log and YAML next to the data dir: all of it goes with this directory.
    with tempfile.TemporaryDirectory(prefix="leveret-guestnet-") as d:
        yield Path(d)


@contextlib.contextmanager
def running(node: NodeProcess) -> Iterator[NodeProcess]:
    node.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield node.start()
    finally:
        # By pid (NodeProcess keeps its Popen), never by name: other test nodes may be running.
        node.stop()


def client(host: str, port: int, user: str, password: str, *, inside: VethNamespace | None,
           body: str = "") -> dict[str, Any]:
    """Run `_CLIENT` once (in the namespace if `inside`); its JSON report."""
    argv: Sequence[str] = [sys.executable, "-c", _CLIENT,
                           json.dumps({"host": host, "port": port, "user": user, "password": password,
                                       "body": body})]
    if inside is not None:
        argv = inside.command(argv)
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=CLIENT_TIMEOUT)
    assert done.returncode == 0, f"client failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def log_line(node: NodeProcess, pattern: str, timeout: float = LOG_TIMEOUT) -> str:
    """The first line of the node's log matching `pattern`, waiting up to `timeout` for it."""
    deadline = time.monotonic() + timeout
    while True:
        for line in node.log_text().splitlines():
            if re.search(pattern, line):
                return line
        if time.monotonic() >= deadline:
            raise AssertionError(f"no log line matching {pattern!r} within {timeout}s:\n{node.log_text()}")
        time.sleep(0.05)


def assert_refused_like_rabbitmq(report: dict[str, Any]) -> None:
    assert report == {
        "connected": False,
        "error": "ProbableAuthenticationError",
        "message": f"ConnectionClosedByBroker: ({RABBITMQ_REFUSAL_CODE}) '{RABBITMQ_REFUSAL_TEXT}'",
        "reply_code": RABBITMQ_REFUSAL_CODE,
        "reply_text": RABBITMQ_REFUSAL_TEXT,
    }


def refusal_pattern(client_address: str) -> str:
    # "connection <id> (PEER:PORT): PLAIN login refused: ..." names where the client came from.
    return rf"\({re.escape(client_address)}:\d+\): {re.escape(LOOPBACK_LOG)}$"


def accepted_pattern(user: str, client_address: str, listener_address: str) -> str:
    return (rf"\({re.escape(client_address)}:\d+ -> {re.escape(listener_address)}:\d+\): "
            rf"user '{re.escape(user)}' authenticated")


def test_guest_is_refused_from_another_address_as_rabbitmq_refuses_it(netns: VethNamespace, workdir: Path) -> None:
    node = NodeProcess(name="guestnet-default@localhost", host=netns.host_address, data_dir=workdir / "node")
    with running(node):
        report = client(netns.host_address, node.port, "guest", "guest", inside=netns)
        assert_refused_like_rabbitmq(report)
        line = log_line(node, refusal_pattern(netns.ns_address))
        assert "[WARNING]" in line, line
        # Refused, not merely unlucky: the node never let a guest in over the veth.
        assert "user 'guest' authenticated" not in node.log_text()


def test_a_user_not_in_loopback_users_logs_in_from_another_address(netns: VethNamespace, workdir: Path) -> None:
    # The user made at first start is this one instead of guest (RabbitMQ's default_user/default_pass).
    node = NodeProcess(name="guestnet-alice@localhost", host=netns.host_address, data_dir=workdir / "node",
                       extra_env={"LEVERET_DEFAULT_USER": "alice", "LEVERET_DEFAULT_PASS": "s3cret-alice"})
    with running(node):
        report = client(netns.host_address, node.port, "alice", "s3cret-alice", inside=netns, body="from alice")
        assert report == {"connected": True, "body": "from alice"}
        log_line(node, accepted_pattern("alice", netns.ns_address, netns.host_address))


def test_guest_logs_in_from_another_address_when_loopback_users_is_empty(netns: VethNamespace, workdir: Path) -> None:
    node = NodeProcess(name="guestnet-open@localhost", host=netns.host_address, data_dir=workdir / "node",
                       config={"loopback_users": []})
    with running(node):
        report = client(netns.host_address, node.port, "guest", "guest", inside=netns, body="from guest")
        assert report == {"connected": True, "body": "from guest"}
        log_line(node, accepted_pattern("guest", netns.ns_address, netns.host_address))
        assert LOOPBACK_LOG not in node.log_text()


def test_one_node_on_every_address_lets_guest_in_over_loopback_only(netns: VethNamespace, workdir: Path) -> None:
    # Inside the namespace, "every address" is its lo and its end of the pair. `host` is where the
    # test reaches it from the root namespace (to wait for the port); the node itself is told to
    # listen on all addresses, which the environment variable sets over NodeProcess's own.
    node = NamespacedNode(name="guestnet-both@localhost", host=netns.ns_address, data_dir=workdir / "node",
                          extra_env={"LEVERET_NODE_IP_ADDRESS": ""}, namespace=netns)
    with running(node):
        local = client("127.0.0.1", node.port, "guest", "guest", inside=netns, body="over loopback")
        assert local == {"connected": True, "body": "over loopback"}
        log_line(node, accepted_pattern("guest", "127.0.0.1", "127.0.0.1"))

        # The same node, the same credentials, reached over the veth from the root namespace.
        remote = client(netns.ns_address, node.port, "guest", "guest", inside=None)
        assert_refused_like_rabbitmq(remote)
        log_line(node, refusal_pattern(netns.host_address))


# A bare AMQP login from a chosen source address (pika cannot bind one): prints what the node
# answered to start-ok, "tune" (logged in) or "close <code> <text>".
_RAW_LOGIN = r"""
import socket, sys
from pamqp import commands, frame
src, dst, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(); s.settimeout(10); s.bind((src, 0)); s.connect((dst, port))
s.sendall(b"AMQP\x00\x00\x09\x01")
buf = b""
def read():
    global buf
    while True:
        try:
            used, _channel, value = frame.unmarshal(buf)
            buf = buf[used:]
            return value
        except Exception:
            data = s.recv(65536)
            if not data:
                return None
            buf += data
read()  # connection.start
s.sendall(frame.marshal(commands.Connection.StartOk(
    client_properties={"capabilities": {"authentication_failure_close": True}},
    mechanism="PLAIN", response="\0guest\0guest"), 0))
answer = read()
if isinstance(answer, commands.Connection.Tune):
    print("tune")
else:
    print("close", answer.reply_code, answer.reply_text)
"""


def raw_login(source: str, target: str, port: int, *, inside: VethNamespace) -> str:
    argv = inside.command([sys.executable, "-c", _RAW_LOGIN, source, target, str(port)])
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=CLIENT_TIMEOUT)
    assert done.returncode == 0, f"raw client failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout.strip().splitlines()[-1]


def test_the_rule_looks_at_the_nodes_end_of_the_connection(netns: VethNamespace, workdir: Path) -> None:
    # RabbitMQ asks whether the node's own end of the socket is loopback (rabbit_net:is_loopback
    # on the socket's name), not where the client comes from. Inside the namespace both of its
    # addresses are local, so a client can come from one and reach the other.
    node = NamespacedNode(name="guestnet-ends@localhost", host=netns.ns_address, data_dir=workdir / "node",
                          extra_env={"LEVERET_NODE_IP_ADDRESS": ""}, namespace=netns)
    with running(node):
        # From 127.0.0.1 to the node's veth address: the node's end is not loopback.
        assert raw_login("127.0.0.1", netns.ns_address, node.port, inside=netns) == (
            f"close {RABBITMQ_REFUSAL_CODE} {RABBITMQ_REFUSAL_TEXT}")
        # From the veth address to the node's 127.0.0.1: the node's end is loopback.
        assert raw_login(netns.ns_address, "127.0.0.1", node.port, inside=netns) == "tune"
