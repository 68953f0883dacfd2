"""Network partitions between loopback addresses, as iptables rules in a chain of our own.

Each node of a chaos cluster has its own loopback address (127.0.0.11, .12, .13) and, once
its outbound peer connections are bound to that address, a rule dropping packets from one
address to another cuts exactly that pair of nodes. Every rule lives in the chain
`LEVERET-CHAOS`, hooked into INPUT only: on loopback a packet passes OUTPUT and then INPUT,
and a DROP in OUTPUT makes the kernel fail the sender's `connect`/`send` at once with EPERM,
which no real partition does; dropped in INPUT, the packet silently vanishes and the sender
waits, retransmits and times out, as across a broken switch.

`rules_for(cuts)` is pure (the argv lists), so what a partition means is tested without
root; `Firewall` runs them. `Firewall.remove()` unhooks and deletes the chain; it is
registered with atexit when the chain is made, and callers also call it from a fixture
finaliser, so no rule outlives a test, even a failed one. Only the addresses a test names
appear in a rule: nothing else on the machine is touched.
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
from collections.abc import Iterable, Sequence

CHAIN = "LEVERET-CHAOS"
IPTABLES = shutil.which("iptables") or "/usr/sbin/iptables"
TIMEOUT = 10.0


class FirewallError(RuntimeError):
    """An iptables command failed: the command and what it said."""


def rules_for(cuts: Iterable[tuple[str, str]]) -> list[list[str]]:
    """The rules (arguments after `iptables`) that cut each (a, b) pair in both directions."""
    rules: list[list[str]] = []
    for a, b in cuts:
        for src, dst in ((a, b), (b, a)):
            rules.append(["-A", CHAIN, "-s", src, "-d", dst, "-j", "DROP"])
    return rules


def isolate(node: str, others: Sequence[str]) -> list[tuple[str, str]]:
    """The pairs that separate `node` from every one of `others`."""
    return [(node, o) for o in others if o != node]


def bridge(a: str, b: str) -> list[tuple[str, str]]:
    """The pair that makes a bridge partition: `a` and `b` lose each other, but every other
    node still sees both of them."""
    return [(a, b)]


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [IPTABLES, "-w", "5", *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
    except FileNotFoundError:
        raise FirewallError("iptables is not installed: run scripts/install-chaos-tools") from None
    if check and done.returncode != 0:
        raise FirewallError(f"`{' '.join(argv)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done


class Firewall:
    """The LEVERET-CHAOS chain: `cut` adds pairs, `heal` drops every rule, `remove` unhooks
    and deletes the chain (idempotent)."""

    def __init__(self) -> None:
        self.installed = False
        self.cuts: list[tuple[str, str]] = []

    def install(self) -> "Firewall":
        if _run("-n", "-L", CHAIN, check=False).returncode != 0:
            _run("-N", CHAIN)
        else:
            _run("-F", CHAIN)  # a leftover of a run that died without its atexit
        if _run("-C", "INPUT", "-j", CHAIN, check=False).returncode != 0:
            _run("-I", "INPUT", "-j", CHAIN)
        if not self.installed:
            atexit.register(self.remove)
        self.installed = True
        return self

    def cut(self, pairs: Iterable[tuple[str, str]]) -> None:
        pairs = list(pairs)
        for rule in rules_for(pairs):
            _run(*rule)
        self.cuts.extend(pairs)

    def heal(self) -> None:
        if self.installed:
            _run("-F", CHAIN)
        self.cuts.clear()

    def rules(self) -> list[str]:
        """The chain's rules as `iptables -S` prints them (for reports and tests)."""
        done = _run("-S", CHAIN, check=False)
        return [line for line in done.stdout.splitlines() if line.startswith("-A ")]

    def remove(self) -> None:
        if not self.installed:
            return
        # Unhook every reference first (a chain still referenced cannot be deleted).
        for _ in range(16):
            if _run("-D", "INPUT", "-j", CHAIN, check=False).returncode != 0:
                break
        _run("-F", CHAIN, check=False)
        _run("-X", CHAIN, check=False)
        self.cuts.clear()
        self.installed = False


def chain_exists() -> bool:
    return _run("-n", "-L", CHAIN, check=False).returncode == 0
