"""Clusters of real `leveret-server` processes for tests: nodes started, joined to the
first as the seed documents' operators do it, checked for tracebacks, stopped by pid."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tests.ctl.support import ok
from tests.support.node_process import NodeProcess

NAMES = ("a@localhost", "b@localhost", "c@localhost")


def join(node: NodeProcess, target: str) -> None:
    """stop_app, join_cluster, start_app on `node`."""
    ok(node, "stop_app")
    joined = ok(node, "join_cluster", target)
    assert joined.out == f"Clustering node {node.name} with {target}\n"
    ok(node, "start_app")


def running(nodes: list[NodeProcess]) -> list[NodeProcess]:
    return [n for n in nodes if n.proc is not None and n.proc.poll() is None]


def start_cluster(nodes: list[NodeProcess]) -> list[NodeProcess]:
    """`nodes` started together and joined to the first; the caller stops them (`stop_all`)."""
    try:
        for n in nodes:
            n.launch()
        for n in nodes:
            n.wait_ready()
        for n in nodes[1:]:
            join(n, nodes[0].name)
    except BaseException:
        stop_all(nodes)
        raise
    return nodes


def stop_all(nodes: list[NodeProcess]) -> None:
    for n in nodes:
        n.stop()


def tracebacks(nodes: list[NodeProcess]) -> list[str]:
    """The logs of running nodes that logged a traceback (a node's failure is a test's)."""
    return [f"{n.name}:\n{n.log_text()}" for n in running(nodes) if "Traceback" in n.log_text()]


@contextmanager
def joined_cluster(nodes: list[NodeProcess]) -> Iterator[list[NodeProcess]]:
    """`nodes` as one cluster for the block; afterwards no running node logged a traceback,
    and every node is stopped by its pid whatever happened."""
    start_cluster(nodes)
    try:
        yield nodes
        problems = tracebacks(nodes)
        assert not problems, "\n".join(problems)
    finally:
        stop_all(nodes)
