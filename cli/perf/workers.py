"""Running a scenario's roles: in this process, or spread over several client processes.

With one process every role is a task in the caller's trio loop. With `procs` > 1
the roles are dealt round robin (publishers first) to spawned worker processes,
so encoding and decoding run on several cores; each worker sets its roles up,
says "ready", receives the common time window from the parent, runs, and sends
back its tallies. Every wait is bounded: a worker that neither reports nor exits
in time is terminated and the run fails with that reason.
"""

from __future__ import annotations

import multiprocessing
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from typing import Any

import trio

from .accounting import PublishTally, ReceiveTally
from .workload import Consumer, Publisher, Role, Window, Workload, make_role

__all__ = ["RolesOutcome", "run_roles"]

# Time between "everyone is ready" and the first publish, so every process starts together.
_START_MARGIN_NS = 100_000_000
_SETUP_TIMEOUT = 60.0


@dataclass(slots=True)
class RolesOutcome:
    publishers: list[PublishTally] = field(default_factory=list)
    receivers: list[ReceiveTally] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    window: Window | None = None


def _order(roles: list[Role]) -> list[Role]:
    # Consumers subscribe before anyone publishes.
    return [r for r in roles if r.kind == "consume"] + [r for r in roles if r.kind == "publish"]


async def _setup(url: str, workload: Workload, roles: list[Role]) -> list[Publisher | Consumer]:
    made = [make_role(url, workload, role) for role in _order(roles)]
    try:
        with trio.fail_after(_SETUP_TIMEOUT):
            for role in made:
                await role.setup()
    except BaseException:
        # Roles set up before the failure hold open connections that `run` would have closed.
        for role in made:
            if role.conn is not None:
                await trio.aclose_forcefully(role.conn.stream)
        raise
    return made


async def _run_made(made: list[Publisher | Consumer], window: Window) -> RolesOutcome:
    outcome = RolesOutcome(window=window)
    results: list[Any] = [None] * len(made)

    publishers = [role for role in made if isinstance(role, Publisher)]

    def expected() -> int | None:
        if not all(p.done for p in publishers):
            return None
        return sum(p.tally.sent for p in publishers)

    if publishers:
        for role in made:
            if isinstance(role, Consumer):
                role.expected = expected

    async def one(i: int) -> None:
        results[i] = await made[i].run(window)

    async with trio.open_nursery() as nursery:
        for i in range(len(made)):
            nursery.start_soon(one, i)
    for role, result in zip(made, results):
        if isinstance(role, Publisher):
            outcome.publishers.append(result)
        else:
            outcome.receivers.append(result)
        if role.error:
            outcome.errors.append(role.error)
    return outcome


def _window(duration: float, drain: float) -> Window:
    start = time.monotonic_ns() + _START_MARGIN_NS
    end = start + int(duration * 1e9)
    return Window(start, end, end + int(drain * 1e9))


async def run_roles(
    url: str, workload: Workload, roles: list[Role], duration: float, drain: float, procs: int = 1,
    windows: list[Window] | None = None,
) -> RolesOutcome:
    """Run `roles` for `duration` seconds of publishing plus at most `drain` seconds of draining.

    The time window is appended to `windows` (if given) once every role is set up, so a task
    beside the run (the failover scenario's kill) can act at a point inside it."""
    procs = max(1, min(procs, len(roles)))
    if procs == 1:
        made = await _setup(url, workload, roles)
        window = _window(duration, drain)
        if windows is not None:
            windows.append(window)
        return await _run_made(made, window)
    return await _run_spread(url, workload, roles, duration, drain, procs, windows)


# --- several processes ----------------------------------------------------------------------


def _worker_main(url: str, workload: Workload, roles: list[Role], pipe: Pipe) -> None:
    trio.run(_worker, url, workload, roles, pipe)


async def _worker(url: str, workload: Workload, roles: list[Role], pipe: Pipe) -> None:
    try:
        made = await _setup(url, workload, roles)
    except Exception as exc:  # reported to the parent, which fails the run with it
        pipe.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    pipe.send(("ready",))
    ready = await trio.to_thread.run_sync(pipe.poll, _SETUP_TIMEOUT)
    if not ready:
        return
    window = pipe.recv()
    outcome = await _run_made(made, window)
    pipe.send(("done", outcome.publishers, outcome.receivers, outcome.errors))


async def _receive(pipe: Pipe, timeout: float) -> Any:
    if not await trio.to_thread.run_sync(pipe.poll, timeout):
        raise TimeoutError(f"a load-generator process did not answer within {timeout:.0f}s")
    return pipe.recv()


async def _run_spread(
    url: str, workload: Workload, roles: list[Role], duration: float, drain: float, procs: int,
    windows: list[Window] | None = None,
) -> RolesOutcome:
    ctx = multiprocessing.get_context("spawn")
    ordered = [r for r in roles if r.kind == "publish"] + [r for r in roles if r.kind == "consume"]
    shares: list[list[Role]] = [ordered[i::procs] for i in range(procs)]
    workers = []
    try:
        for share in shares:
            parent_end, child_end = ctx.Pipe()
            process = ctx.Process(target=_worker_main, args=(url, workload, share, child_end), daemon=True)
            process.start()
            child_end.close()
            workers.append((process, parent_end))
        for _, pipe in workers:
            message = await _receive(pipe, _SETUP_TIMEOUT + 30)
            if message[0] != "ready":
                raise RuntimeError(f"load-generator process failed to set up: {message[1]}")
        window = _window(duration, drain)
        if windows is not None:
            windows.append(window)
        for _, pipe in workers:
            pipe.send(window)
        outcome = RolesOutcome(window=window)
        for _, pipe in workers:
            message = await _receive(pipe, duration + drain + 30)
            _, publishers, receivers, errors = message
            outcome.publishers += publishers
            outcome.receivers += receivers
            outcome.errors += errors
        return outcome
    finally:
        for process, pipe in workers:
            await trio.to_thread.run_sync(process.join, 5)
            if process.is_alive():
                process.terminate()
                await trio.to_thread.run_sync(process.join, 5)
            pipe.close()
