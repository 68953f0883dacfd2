"""Replicated queue groups under the deterministic Raft simulation (tests/replication/queue_sim.py).

The default run covers `QUEUE_SEEDS` seeds of every mix in `QUEUE_MIXES` and hunts every
broken shell of queue_mutants.py through the same budget. `LEVERET_QUEUE_SEEDS=N` (or
`LEVERET_RAFT_SEEDS=N`) runs N seeds per mix instead; `--slow` adds 500 fresh seeds per
mix. A failure prints the one-line command that reproduces it.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor

import pytest

from cluster.raft.sim import SimFailure

from .queue_mutants import MUTANTS, SOURCE, Detection, hunt, mutated_source
from .queue_sim import QUEUE_MIXES, QueueSim, main, run_seed

QUEUE_SEEDS = int(os.environ.get("LEVERET_QUEUE_SEEDS", os.environ.get("LEVERET_RAFT_SEEDS", "8")))
WORKERS = max(1, min(os.cpu_count() or 1, 4))


def _run_range(args: tuple[str, int, int]) -> list[str]:
    """Seeds lo..hi-1 of one mix; stops at the first failure."""
    mix, lo, hi = args
    for seed in range(lo, hi):
        try:
            run_seed(seed, mix)
        except SimFailure as e:
            return [str(e)]
    return []


def _run_many(mix: str, count: int, offset: int) -> list[str]:
    chunk = max(1, count // (WORKERS * 2))
    ranges = [(mix, offset + lo, offset + min(lo + chunk, count)) for lo in range(0, count, chunk)]
    if WORKERS == 1 or len(ranges) == 1:
        return [f for r in ranges for f in _run_range(r)]
    with ProcessPoolExecutor(WORKERS) as pool:
        return [f for fs in pool.map(_run_range, ranges) for f in fs]


@pytest.mark.parametrize("mix", list(QUEUE_MIXES))
def test_seeds(mix: str) -> None:
    failures = _run_many(mix, QUEUE_SEEDS, 0)
    assert not failures, f"{len(failures)} seed ranges failed; first:\n" + failures[0]


@pytest.mark.slow
@pytest.mark.parametrize("mix", list(QUEUE_MIXES))
def test_many_more_seeds(mix: str) -> None:
    failures = _run_many(mix, 500, 1_000_000)
    assert not failures, f"{len(failures)} seed ranges failed; first:\n" + failures[0]


def test_a_run_exercises_what_the_checks_are_about() -> None:
    # Guards against a simulation that passes because nothing happens in it.
    sim = run_seed(2, "crashes")
    confirmed = [b for b, ok in sim.outcomes.items() if ok]
    assert len(confirmed) > 50 and sim.deliveries > len(confirmed)
    assert sim.leads >= 2  # leadership changed hands: RequeueAll and a new incarnation
    assert any(n.incarnation > 1 for n in sim.nodes.values())  # crashes and restarts
    assert any(n.raft.groups["g1"].log.snap_index > 0 for n in sim.nodes.values())  # snapshots of the state
    assert all(not o.ready and not o.unacked for o in sim.oracles.values())  # drained
    assert len(sim.oracles["g1"].settled) >= len([b for b in confirmed if b.startswith(b"g1-")])


def test_a_failure_names_the_reproduce_command() -> None:
    sim = QueueSim(7, QUEUE_MIXES["lossy"], "lossy")
    with pytest.raises(SimFailure) as info:
        sim.fail("example")
    assert str(info.value).endswith("reproduce: python -m tests.replication.queue_sim --mix lossy --seed 7")
    assert main(["--mix", "lossy", "--seed", "1"]) == 0


def _hunt(name: str) -> Detection | str | None:
    try:
        return hunt(name, QUEUE_SEEDS)
    except AssertionError as e:  # the mutant no longer applies
        return str(e)


@pytest.fixture(scope="module")
def detections() -> dict[str, Detection | str | None]:
    names = [m.name for m in MUTANTS]
    with ProcessPoolExecutor(min(WORKERS, len(names))) as pool:
        found = dict(zip(names, pool.map(_hunt, names)))
    for name, d in found.items():
        if isinstance(d, Detection):
            print(f"{name}: caught after {d.runs} runs ({d.mix} seed {d.seed}, step {d.step}): {d.failure}")
    return found


@pytest.mark.parametrize("name", [m.name for m in MUTANTS])
def test_broken_shell_is_caught(name: str, detections: dict[str, Detection | str | None]) -> None:
    d = detections[name]
    assert not isinstance(d, str), d
    assert d is not None, (
        f"broken shell {name} survived every seed of every mix: the queue simulation cannot see this bug\n"
        f"reproduce: python -m tests.replication.queue_mutants {name} --seeds {QUEUE_SEEDS}"
    )


def test_mutations_apply_to_the_model_as_it_is() -> None:
    for m in MUTANTS:
        assert mutated_source(m) != SOURCE.read_text(), m.name
