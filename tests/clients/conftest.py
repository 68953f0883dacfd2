"""Unmodified third-party clients (py-amqp, kombu, Celery, aio-pika) against a real node.

Every test talks to the session's shared `node` through `broker` and uses
names of its own (`unique`), so tests do not see each other's queues. To check
the expectations themselves against the reference RabbitMQ, set
LEVERET_COMPARE_URL (e.g. amqp://guest:guest@127.0.0.1:5690/) and the same
tests run against that broker instead; the default run never depends on it.
"""

from __future__ import annotations

import os

import pytest

from tests.clients.common import BrokerAddress


@pytest.fixture(scope="session")
def broker(request: pytest.FixtureRequest) -> BrokerAddress:
    override = os.environ.get("LEVERET_COMPARE_URL")
    if override:
        return BrokerAddress(override)
    return BrokerAddress(request.getfixturevalue("node").url)
