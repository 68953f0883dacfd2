"""Shared test options: --slow runs the long soak, chaos and many-seed runs."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", default=False, help="run long soak/chaos/many-seed tests")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long runs, only with --slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="long run: pass --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def queues_across_nodes():
    """Two joined nodes; clients connect to `client@localhost`, which places queues with
    min-masters, so the queues a test declares alternate between the node its client is
    connected to and the other one (ties go to the lower name): the protocol tests then run
    on queues served from another node as well as local ones."""
    from tests.support.cluster import join
    from tests.support.node_process import NodeProcess

    home = NodeProcess(name="home@localhost")
    client = NodeProcess(name="client@localhost", config={"queue_master_locator": "min-masters"})
    try:
        home.start()
        client.start()
        join(client, home.name)
        yield client
    finally:
        client.stop()
        home.stop()


@pytest.fixture(scope="session")
def node():
    """One real leveret-server shared by a test session (guest/guest on a free loopback port)."""
    from tests.support.node_process import NodeProcess

    with NodeProcess(name="shared@localhost").start() as proc:
        yield proc


@pytest.fixture
def fresh_node():
    """A leveret-server of a test's own, stopped afterwards."""
    from tests.support.node_process import NodeProcess

    proc = NodeProcess(name="fresh@localhost").start()
    try:
        yield proc
    finally:
        proc.stop()
