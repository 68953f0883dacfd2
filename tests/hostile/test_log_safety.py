"""Issue 12 item 4: what an AMQP peer chooses reaches the node's log escaped, bounded and,
for repeated refusals, rate-limited with a count of what was suppressed.

Before: a user name with a newline forged a whole `[INFO] leveret.node` line, and 200
refused logins with 4 KB names grew the log by 13 MB."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator

import pika
import pytest
from pamqp import commands, frame

from cluster.logtext import PEER_TEXT_LIMIT
from tests.ctl.support import ok, wait_until
from tests.support.node_process import NodeProcess

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FORGED = "1999-01-01 00:00:00,000 [INFO] leveret.node: node stopped"
# The line a refused login leaves (its suppressed count, when there is one, follows).
REFUSED = re.compile(r"PLAIN login refused: user '.*' - invalid credentials"
                     r"(?: \((\d+) more like it suppressed since the last one\))?$")


@pytest.fixture
def node() -> Iterator[NodeProcess]:
    with NodeProcess(name="log-safety@localhost").start() as proc:
        yield proc


def start_ok(node: NodeProcess, username: str, *, mechanism: str = "PLAIN", wait: bool = False) -> None:
    """A raw handshake up to connection.start-ok with a wrong password. The socket is closed
    at once unless `wait`: what is logged does not depend on hearing the refusal."""
    with socket.create_connection((node.host, node.port), timeout=10) as sock:
        sock.sendall(PROTOCOL_HEADER)
        received = b""
        while True:  # connection.start
            chunk = sock.recv(65536)
            assert chunk, "closed before connection.start"
            received += chunk
            try:
                frame.unmarshal(received)
                break
            except Exception:
                continue
        response = f"\0{username}\0wrong-password"
        sock.sendall(frame.marshal(commands.Connection.StartOk(
            client_properties={}, mechanism=mechanism, response=response, locale="en_US"), 0))
        if wait:
            sock.settimeout(10)
            while sock.recv(65536):
                pass


def lines_matching(node: NodeProcess, pattern: re.Pattern[str] | str) -> list[str]:
    return [line for line in node.log_text().splitlines() if re.search(pattern, line)]


def test_peer_chosen_names_cannot_forge_or_bloat_log_lines(node: NodeProcess) -> None:
    username = "bob\n" + FORGED + "\n" + "x" * 3900  # the handshake's 4 KB frame holds no more
    start_ok(node, username, wait=True)
    wait_until(lambda: bool(lines_matching(node, "login refused")))
    [line] = lines_matching(node, "login refused")
    assert "user 'bob\\n" + FORGED + "\\nxxx" in line
    cut = len(username) - PEER_TEXT_LIMIT
    assert f"...({cut} more characters)' - invalid credentials" in line
    assert len(line) < 1000
    # A mechanism name is the peer's too: the handshake's refusal quotes it, escaped.
    start_ok(node, "bob", mechanism="PL\nAIN", wait=True)
    wait_until(lambda: bool(lines_matching(node, "during the handshake")))
    [line] = lines_matching(node, "during the handshake")
    assert line.endswith("unknown authentication mechanism 'PL\\nAIN'")

    # Names an operator created are escaped too: a login that succeeds logs them.
    ok(node, "add_vhost", "v\nhost")
    ok(node, "add_user", "eve\n" + FORGED, "s3cret")
    ok(node, "set_permissions", "-p", "v\nhost", "eve\n" + FORGED, ".*", ".*", ".*")
    params = pika.ConnectionParameters(node.host, node.port, "v\nhost", pika.PlainCredentials("eve\n" + FORGED, "s3cret"))
    conn = pika.BlockingConnection(params)
    wait_until(lambda: bool(lines_matching(node, "authenticated and granted")))
    pid = [line for line in lines_matching(node, "authenticated and granted") if "eve" in line]
    assert pid and pid[0].endswith("user 'eve\\n" + FORGED + "' authenticated and granted access to vhost 'v\\nhost'")
    # So is the reason an operator gives for closing a connection.
    connection = ok(node, "list_connections", "pid", "-q").lines[-1]
    ok(node, "close_connection", connection, "bye\n" + FORGED)
    wait_until(lambda: bool(lines_matching(node, "on request of leveretctl")))
    [line] = lines_matching(node, "on request of leveretctl")
    assert line.endswith("bye\\n" + FORGED)
    del conn

    # Nothing anyone sent started a line of its own.
    assert not [line for line in node.log_text().splitlines() if line.startswith(FORGED[:10])]


def test_refused_logins_are_rate_limited_with_a_count(node: NodeProcess) -> None:
    before = node.log_path.stat().st_size
    attempts = 200
    started = time.monotonic()
    for i in range(attempts):
        start_ok(node, f"guess-{i:03d}-" + "y" * 3900)
    spent = time.monotonic() - started
    # The last of them has been taken when a later connection is answered.
    start_ok(node, "guest-probe", wait=True)
    attempts += 1
    grown = node.log_path.stat().st_size - before
    # Unlimited, that was 201 lines of 4 KB (800 KB); now a line per 10 s interval.
    lines = lines_matching(node, REFUSED)
    assert 1 <= len(lines) <= 2 + spent / 10, lines
    assert grown < 4096 * len(lines), grown
    # Once the interval has passed the next refusal is logged, with what was held back.
    time.sleep(10.5)
    start_ok(node, "late", wait=True)
    attempts += 1
    wait_until(lambda: lines_matching(node, REFUSED)[-1:] != lines[-1:] and "'late'" in lines_matching(node, REFUSED)[-1])
    lines = lines_matching(node, REFUSED)
    counts = [int(m.group(1) or 0) for m in (REFUSED.search(line) for line in lines) if m]
    assert counts[-1] > 0, lines[-1]
    # Every refusal is accounted for: logged, or counted in the next line logged.
    assert len(lines) + sum(counts) == attempts, (lines, counts)
