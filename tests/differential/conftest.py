"""The Leveret node the differential tests drive."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="module", params=["one node", "queues across two nodes"])
def leveret_url(request: pytest.FixtureRequest) -> str:
    """LEVERET_DIFF_LEVERET_URL (an already running node), else the session's test node, and
    again the client node of two whose queues alternate between them (`queues_across_nodes`)."""
    url = os.environ.get("LEVERET_DIFF_LEVERET_URL")
    if url:
        return url
    if request.param == "one node":
        return request.getfixturevalue("node").url
    return request.getfixturevalue("queues_across_nodes").url
