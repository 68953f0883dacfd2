"""The Celery application the Celery client test runs in a real worker process.

Broker URL and task queue come from the environment so the worker and the test
(which sets the same values with `configure`) agree without a config file.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

from celery import Celery

app = Celery("leveret_tests")
app.conf.update(
    broker_url=os.environ.get("LEVERET_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
    result_backend="rpc://",
    task_default_queue=os.environ.get("LEVERET_CELERY_QUEUE", "celery"),
    # Declared as x-max-priority on the task queue.
    task_queue_max_priority=10,
    task_default_priority=5,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    # AMQP heartbeats, checked by the worker's event loop every second: they also
    # bound how long its poll sleeps, so a stop signal is acted on quickly.
    broker_heartbeat=2,
    broker_connection_retry_on_startup=False,
    broker_connection_max_retries=0,
    worker_hijack_root_logger=False,
)


def configure(broker_url: str, queue: str) -> None:
    app.conf.update(broker_url=broker_url, task_default_queue=queue)


_executed = itertools.count(1)


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def fail(text: str) -> None:
    raise ValueError(text)


@app.task
def ordinal(label: str) -> list[object]:
    """Which task this worker ran before it: shows the order the queue gave them out."""
    return [label, next(_executed)]


@app.task(bind=True, max_retries=3, default_retry_delay=0)
def flaky(self, succeed_on: int) -> int:
    attempt = self.request.retries + 1
    if attempt < succeed_on:
        raise self.retry(countdown=0)
    return attempt


@app.task(bind=True, acks_late=True)
def stall_once(self, marker: str) -> list[object]:
    """Stalls the first time (the test kills the worker meanwhile); done when redelivered."""
    path = Path(marker)
    if not path.exists():
        path.write_text("started")
        time.sleep(60)
    return ["done", bool(self.request.delivery_info.get("redelivered"))]
