"""A real Celery worker (`-P solo`) with a Leveret node as broker and `rpc://` results.

One worker process serves the whole module. Before it starts, tasks with
several priorities are queued, so the order the worker runs them shows that
the node honours the queue's `x-max-priority` (Celery's
`task_queue_max_priority`). Then ordinary calls, an exception travelling back,
a retry (re-published by the worker), and a group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.clients.common import BrokerAddress, unique

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 10


def wait_for_text(path: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"worker not ready (exit {proc.poll()}):\n{path.read_text(errors='replace')[-3000:]}")


def start_worker(broker: BrokerAddress, queue: str, log_path: Path) -> subprocess.Popen:
    env = dict(os.environ, LEVERET_CELERY_BROKER=broker.url, LEVERET_CELERY_QUEUE=queue)
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.clients.celery_app", "worker", "-P", "solo", "-c", "1",
             "--without-heartbeat", "--without-mingle", "--without-gossip", "-l", "info",
             "-n", f"{log_path.stem}-{queue}@%h"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_for_text(log_path, " ready.", worker, 30)
    return worker


def stop_worker(worker: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if worker.poll() is None:
        worker.send_signal(sig)
    try:
        worker.wait(15)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait(5)


@pytest.fixture(scope="module")
def celery_run(broker: BrokerAddress, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from tests.clients import celery_app

    queue = unique("celery-tasks")
    celery_app.configure(broker.url, queue)
    # Queued before any worker exists: the worker must take them by priority.
    queued = [celery_app.ordinal.apply_async((f"p{p}",), priority=p) for p in (1, 9, 3, 9, 0, 6)]
    tmp = tmp_path_factory.mktemp("celery")
    log_path = tmp / "worker.log"
    worker = start_worker(broker, queue, log_path)
    try:
        yield {"app": celery_app, "queued": queued, "worker": worker, "log": log_path, "queue": queue,
               "tmp": tmp, "broker": broker}
    finally:
        stop_worker(worker)
        with celery_app.app.connection_for_write() as c:
            c.default_channel.queue_delete(queue)


def test_worker_takes_queued_tasks_by_priority(celery_run: dict[str, Any]) -> None:
    results = [r.get(timeout=TIMEOUT) for r in celery_run["queued"]]
    order = [label for label, _ in sorted(results, key=lambda r: r[1])]
    assert order == ["p9", "p9", "p6", "p3", "p1", "p0"]


def test_tasks_return_results(celery_run: dict[str, Any]) -> None:
    app = celery_run["app"]
    pending = [app.add.delay(i, i * 10) for i in range(10)]
    assert [r.get(timeout=TIMEOUT) for r in pending] == [i * 11 for i in range(10)]
    assert all(r.status == "SUCCESS" for r in pending)


def test_exception_comes_back(celery_run: dict[str, Any]) -> None:
    app = celery_run["app"]
    r = app.fail.delay("broken on purpose")
    with pytest.raises(ValueError, match="broken on purpose"):
        r.get(timeout=TIMEOUT)
    assert r.status == "FAILURE"
    # The worker is still serving after a failing task.
    assert app.add.delay(2, 3).get(timeout=TIMEOUT) == 5


def test_retry_is_republished_and_succeeds(celery_run: dict[str, Any]) -> None:
    assert celery_run["app"].flaky.delay(3).get(timeout=TIMEOUT) == 3


def test_group(celery_run: dict[str, Any]) -> None:
    from celery import group

    app = celery_run["app"]
    result = group(app.add.s(i, 1) for i in range(8)).apply_async()
    assert result.get(timeout=TIMEOUT) == [i + 1 for i in range(8)]


def test_task_queue_declared_with_max_priority(celery_run: dict[str, Any]) -> None:
    import amqp.exceptions

    app = celery_run["app"]
    with app.app.connection_for_write() as c:
        ch = c.channel()
        ch.queue_declare(celery_run["queue"], passive=True)
        # Equivalent redeclare passes; without the argument it is refused.
        with pytest.raises(amqp.exceptions.PreconditionFailed) as info:
            ch.queue_declare(celery_run["queue"], durable=True, auto_delete=False)
        assert "x-max-priority" in info.value.reply_text


def test_late_ack_task_is_redelivered_when_its_worker_dies(celery_run: dict[str, Any]) -> None:
    """acks_late: the task's message stays unacked while it runs; the node gives it to
    the next worker when the first one is killed (kill -9, no goodbye)."""
    app, tmp, broker = celery_run["app"], celery_run["tmp"], celery_run["broker"]
    queue = unique("celery-late")
    marker = tmp / "stall-started"
    first = start_worker(broker, queue, tmp / "first.log")
    try:
        result = app.stall_once.apply_async((str(marker),), queue=queue)
        deadline = time.monotonic() + TIMEOUT
        while not marker.exists():
            assert time.monotonic() < deadline, "the first worker never started the task"
            time.sleep(0.05)
    finally:
        stop_worker(first, signal.SIGKILL)
    second = start_worker(broker, queue, tmp / "second.log")
    try:
        assert result.get(timeout=TIMEOUT) == ["done", True]
    finally:
        stop_worker(second)
        with app.app.connection_for_write() as c:
            c.default_channel.queue_delete(queue)
