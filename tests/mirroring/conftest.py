"""One 3-node cluster shared by the package's tests (each test uses queues and policies of
its own names, and restarts any node it stops)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.mirroring.support import start_cluster, stop_all
from tests.support.cluster import tracebacks
from tests.support.node_process import NodeProcess


@pytest.fixture(scope="package")
def cluster() -> Iterator[list[NodeProcess]]:
    nodes = start_cluster()
    try:
        yield nodes
        problems = tracebacks(nodes)
        assert not problems, "\n".join(problems)
    finally:
        stop_all(nodes)
