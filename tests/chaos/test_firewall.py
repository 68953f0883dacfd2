"""Partitions: the rules a cut makes, and (as root, with iptables) that a cut between two
loopback addresses stops exactly that pair's traffic and leaves no rule behind."""

from __future__ import annotations

import socket

from tests.chaos.firewall import CHAIN, Firewall, bridge, chain_exists, isolate, rules_for

A, B, C = "127.0.0.11", "127.0.0.12", "127.0.0.13"


def test_isolate_cuts_one_node_from_each_other_and_bridge_one_pair() -> None:
    assert isolate(A, [A, B, C]) == [(A, B), (A, C)]
    assert bridge(A, B) == [(A, B)]
    assert rules_for([(A, B)]) == [
        ["-A", CHAIN, "-s", A, "-d", B, "-j", "DROP"],
        ["-A", CHAIN, "-s", B, "-d", A, "-j", "DROP"],
    ]


def _connects(source: str, listener: socket.socket, timeout: float = 1.0) -> bool:
    host, port = listener.getsockname()
    with socket.socket() as s:
        s.settimeout(timeout)
        s.bind((source, 0))
        try:
            s.connect((host, port))
            return True
        except OSError:
            return False


def test_a_cut_drops_exactly_that_pair_and_heal_and_remove_undo_it(firewall: Firewall) -> None:
    with socket.socket() as on_b, socket.socket() as on_c:
        for s, addr in ((on_b, B), (on_c, C)):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, 0))
            s.listen(16)
        assert _connects(A, on_b) and _connects(A, on_c)
        firewall.cut(bridge(A, B))
        assert len(firewall.rules()) == 2
        assert not _connects(A, on_b)  # silently dropped: the connect times out
        assert _connects(A, on_c)  # A still sees C
        assert _connects(C, on_b)  # and C sees B
        firewall.heal()
        assert firewall.rules() == []
        assert _connects(A, on_b)
    firewall.remove()
    assert not chain_exists()

