"""Benchmark of durable appends: group commit vs one fsync per write.

    python -m storage.bench [--writers 64] [--seconds 5] [--payload 256] [--dir PATH]

Every mode appends one log entry (and nothing else) per batch to the writer's
own group, on a fresh LMDB store, for a fixed time, and reports durable
appends per second, fsync cycles per second and latency percentiles:

- per-write: N trio tasks, each batch written alone with sync=True (one
  fsync cycle per append; LMDB serialises writers anyway);
- group-commit: the same N tasks through `GroupCommitWriter`;
- group-commit-1: one task through the writer (its per-batch overhead).

Not a test: figures depend on the disk. The directory defaults to a
temporary one under the current directory, so point `--dir` at the disk
whose fsync you mean to measure (tmpfs makes fsync free).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

import trio

from storage.interface import LogEntry, WriteBatch
from storage.lmdb_store import LmdbStore
from storage.writer import open_group_commit_writer


@dataclass(frozen=True, slots=True)
class Result:
    mode: str
    writers: int
    appends: int
    seconds: float
    writes: int
    latencies: list[float]

    def line(self) -> str:
        lat = sorted(self.latencies)
        p50 = lat[len(lat) // 2] * 1e3 if lat else 0.0
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3 if lat else 0.0
        return (
            f"{self.mode:<15} writers={self.writers:<4} appends/s={self.appends / self.seconds:>9.0f}  "
            f"fsync cycles/s={self.writes / self.seconds:>7.0f}  appends/cycle={self.appends / max(self.writes, 1):>6.1f}  "
            f"latency p50={p50:6.2f}ms p99={p99:6.2f}ms"
        )


async def _drive(
    writers: int, seconds: float, payload: bytes, write: Callable[[WriteBatch], Awaitable[None]]
) -> tuple[int, list[float]]:
    latencies: list[float] = []
    deadline = trio.current_time() + seconds

    async def one(w: int) -> None:
        index = 0
        group = f"bench/{w}"
        while trio.current_time() < deadline:
            index += 1
            batch = WriteBatch()
            batch.append(group, [LogEntry(index, 1, payload)])
            started = time.perf_counter()
            await write(batch)
            latencies.append(time.perf_counter() - started)

    async with trio.open_nursery() as nursery:
        for w in range(writers):
            nursery.start_soon(one, w)
    return len(latencies), latencies


async def per_write(store: LmdbStore, writers: int, seconds: float, payload: bytes) -> Result:
    lock = trio.Lock()
    writes = 0

    async def write(batch: WriteBatch) -> None:
        nonlocal writes
        async with lock:
            await trio.to_thread.run_sync(store.write, batch)
            writes += 1

    started = time.perf_counter()
    appends, latencies = await _drive(writers, seconds, payload, write)
    return Result("per-write", writers, appends, time.perf_counter() - started, writes, latencies)


async def group_commit(store: LmdbStore, writers: int, seconds: float, payload: bytes, mode: str) -> Result:
    async with open_group_commit_writer(store) as writer:
        started = time.perf_counter()
        appends, latencies = await _drive(writers, seconds, payload, writer.write)
        elapsed = time.perf_counter() - started
        writes = writer.statistics().writes
    return Result(mode, writers, appends, elapsed, writes, latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--payload", type=int, default=256, help="bytes per log entry")
    parser.add_argument("--dir", type=Path, default=None, help="where to create the stores")
    args = parser.parse_args()
    payload = b"p" * args.payload
    base = Path(tempfile.mkdtemp(prefix="leveret-bench-", dir=args.dir or Path.cwd()))
    try:
        runs: list[tuple[str, int, Callable[[LmdbStore], Awaitable[Result]]]] = [
            ("per-write", args.writers, lambda s: per_write(s, args.writers, args.seconds, payload)),
            ("group-commit", args.writers, lambda s: group_commit(s, args.writers, args.seconds, payload, "group-commit")),
            ("group-commit-1", 1, lambda s: group_commit(s, 1, args.seconds, payload, "group-commit-1")),
        ]
        print(f"durable appends of {args.payload}-byte entries for {args.seconds:g}s each, store in {base}")
        results = []
        for name, _, run in runs:
            store = LmdbStore(base / name)
            result = trio.run(run, store)
            store.close()
            results.append(result)
            print(result.line(), flush=True)
        speedup = results[1].appends / results[1].seconds / max(results[0].appends / results[0].seconds, 1e-9)
        print(f"group commit speedup over one fsync per write with {args.writers} writers: {speedup:.1f}x")
        print(f"mean per-write latency: {statistics.mean(results[0].latencies) * 1e3:.2f}ms")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
