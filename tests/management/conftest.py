"""One node with the management API and the metrics on, shared by the management tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.management.http import Api
from tests.support.node_process import NodeProcess, wait_for_port


@pytest.fixture(scope="session")
def http_node() -> Iterator[NodeProcess]:
    with NodeProcess(name="mgmt@localhost").with_http() as node:
        node.start()
        wait_for_port(node.host, node.management_port, 10)
        wait_for_port(node.host, node.prometheus_port, 10)
        yield node


@pytest.fixture
def api(http_node: NodeProcess) -> Api:
    return Api(http_node.management_url)
