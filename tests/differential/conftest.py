"""The Leveret node the differential tests drive."""

from __future__ import annotations

import pytest

from tests.support.node_process import ONE_NODE_OR_ACROSS_NODES, url_for_param


@pytest.fixture(scope="module", params=ONE_NODE_OR_ACROSS_NODES)
def leveret_url(request: pytest.FixtureRequest) -> str:
    """LEVERET_DIFF_LEVERET_URL (an already running node), else the session's test node, and
    again the client node of two whose queues alternate between them (`queues_across_nodes`)."""
    return url_for_param(request, "LEVERET_DIFF_LEVERET_URL")
