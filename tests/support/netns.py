"""A network namespace joined to the root namespace by a veth pair, made and removed by a test.

Every address a test otherwise has is loopback, so whatever depends on a
client coming from *another* address (RabbitMQ's loopback-only users, for one)
can only be unit-tested. `veth_namespace()` gives a test a second host of its
own: a fresh namespace with its own `lo`, reachable from the root namespace
over a point-to-point /30 (10.213.x.y) that exists only while the test runs.
No packet leaves the two ends of the pair, so the test touches no real network.

It needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN for `ip netns`) and iproute2;
a test that cannot have them fails with the `ip` command and its message
rather than passing silently.

Teardown always runs: the host end is deleted (which destroys the whole
pair at once) and then the namespace. Processes a test started inside the namespace must be
stopped before the block ends: `ip netns del` only unmounts the name, and a
process left inside would keep the namespace alive, unnamed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import NamedTuple

# /usr/sbin is not on every PATH (e.g. a non-login shell of a plain user); iproute2 lives there on Debian.
IP = "/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else (shutil.which("ip") or "ip")
COMMAND_TIMEOUT = 10.0

# 10.213.0.0/16 is cut into /30s; which one a process takes starts from its pid,
# so two test processes running at once pick different ones.
_POOL = ipaddress.ip_network("10.213.0.0/16")
_SUBNETS = 1 << (30 - _POOL.prefixlen)
_made_here = itertools.count()


class NetnsError(RuntimeError):
    """An `ip` command failed: the command line, its exit code and what it printed."""


class VethNamespace(NamedTuple):
    host_address: str  # the root namespace's end of the pair
    ns_address: str  # the namespace's end
    name: str  # the namespace's name, for `ip netns exec`

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside the namespace (iproute2 execs it: the pid is the command's own)."""
        return [IP, "netns", "exec", self.name, *argv]


def ip(*args: str, namespace: str | None = None) -> str:
    """Run `ip ARGS` (inside `namespace` if given); its output, or NetnsError with what it said."""
    argv = [IP, *(("-n", namespace) if namespace else ()), *args]
    try:
        done = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    except FileNotFoundError as exc:
        raise NetnsError(f"iproute2 is needed for network-namespace tests: {exc}") from None
    except subprocess.TimeoutExpired:
        raise NetnsError(f"`{' '.join(argv)}` did not finish within {COMMAND_TIMEOUT}s") from None
    except subprocess.CalledProcessError as exc:
        hint = " (network namespaces need root)" if os.geteuid() != 0 else ""
        raise NetnsError(
            f"`{' '.join(argv)}` failed with exit code {exc.returncode}{hint}: "
            f"{(exc.stderr or exc.stdout or '').strip()}"
        ) from None
    return done.stdout


def _namespaces() -> set[str]:
    # `ip netns list` prints "NAME" or "NAME (id: N)" per line.
    return {line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()}


def _link_exists(name: str) -> bool:
    return subprocess.run([IP, "link", "show", "dev", name], check=False, capture_output=True,
                          timeout=COMMAND_TIMEOUT).returncode == 0


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    """IPv4 networks the root namespace already has as addresses or routes (default route aside)."""
    used: list[ipaddress.IPv4Network] = []
    for link in json.loads(ip("-j", "-4", "addr", "show") or "[]"):
        for a in link.get("addr_info", []):
            used.append(ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False))
    for route in json.loads(ip("-j", "-4", "route", "show", "table", "all") or "[]"):
        dst = route.get("dst", "default")
        if dst != "default":
            used.append(ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False))
    return used


def _free_subnet() -> ipaddress.IPv4Network:
    """A /30 of the pool that overlaps nothing the root namespace has, starting from the pid's."""
    used = _networks_in_use()
    start = os.getpid() % _SUBNETS
    for step in range(_SUBNETS):
        index = (start + step) % _SUBNETS
        subnet = ipaddress.ip_network((int(_POOL.network_address) + 4 * index, 30))
        if not any(subnet.overlaps(u) for u in used):
            return subnet
    raise NetnsError(f"every /30 of {_POOL} is in use in the root namespace")


def _names() -> tuple[str, str, str]:
    """(namespace, host interface, namespace interface), unique to this process and call.

    Interface names are at most 15 characters (IFNAMSIZ); "lv" + a 7-digit pid
    + "h" + a short counter fits. A name left by a crashed run of a recycled
    pid is stepped over, never deleted: it may not be ours.
    """
    pid = os.getpid()
    taken = _namespaces()
    while True:
        k = next(_made_here)
        ns, host_if, ns_if = f"leveret-test-{pid}-{k}", f"lv{pid}h{k}", f"lv{pid}n{k}"
        if ns not in taken and not _link_exists(host_if):
            return ns, host_if, ns_if


def _teardown(ns: str, host_if: str) -> list[str]:
    """Delete the host end and the namespace; what could not be deleted (empty if all went)."""
    problems: list[str] = []
    # The host end goes first: deleting one end of a veth pair destroys both at once,
    # whereas `ip netns del` only starts the namespace's cleanup, which the kernel
    # finishes later, so a host end checked right after it may vanish under our feet.
    try:
        if _link_exists(host_if):
            ip("link", "del", "dev", host_if)
    except NetnsError as exc:
        if _link_exists(host_if):  # gone meanwhile is what we wanted
            problems.append(str(exc))
    try:
        if ns in _namespaces():
            ip("netns", "del", ns)
    except NetnsError as exc:
        problems.append(str(exc))
    return problems


@contextlib.contextmanager
def veth_namespace() -> Iterator[VethNamespace]:
    """A fresh namespace and a veth pair to it; yields (host_address, ns_address, ns_name)."""
    ns, host_if, ns_if = _names()
    subnet = _free_subnet()
    host_address, ns_address = (str(a) for a in subnet.hosts())
    prefix = subnet.prefixlen
    try:
        ip("netns", "add", ns)
        # The namespace end is created inside the namespace directly, so its name can
        # never clash with an interface of the root namespace.
        ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", ns)
        ip("addr", "add", f"{host_address}/{prefix}", "dev", host_if)
        ip("addr", "add", f"{ns_address}/{prefix}", "dev", ns_if, namespace=ns)
        ip("link", "set", "dev", host_if, "up")
        ip("link", "set", "dev", ns_if, "up", namespace=ns)
        # A new namespace's lo is down: nothing inside could reach 127.0.0.1 without this.
        ip("link", "set", "dev", "lo", "up", namespace=ns)
        yield VethNamespace(host_address, ns_address, ns)
    except BaseException:
        # The failure that got us here is the one to see; a teardown problem is only added to it.
        problems = _teardown(ns, host_if)
        if problems:
            exc = sys.exc_info()[1]
            assert exc is not None
            exc.add_note("and the network namespace was not fully removed: " + "; ".join(problems))
        raise
    else:
        problems = _teardown(ns, host_if)
        if problems:
            raise NetnsError("the network namespace was not fully removed: " + "; ".join(problems))
