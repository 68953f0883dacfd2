"""The Leveret node the differential tests drive."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="module")
def leveret_url(request: pytest.FixtureRequest) -> str:
    """LEVERET_DIFF_LEVERET_URL (an already running node), else the session's test node."""
    url = os.environ.get("LEVERET_DIFF_LEVERET_URL")
    if url:
        return url
    return request.getfixturevalue("node").url
