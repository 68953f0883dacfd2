"""Mutation testing: each classic Raft bug, applied to a copy of the core, must be caught.

The copy is hunted through the same mixes and seeds the CI runs the real core
under (tests/raft/mixes.py), in the order seed 0 of every mix, then seed 1, and
so on; the first failing run ends the hunt. A mutant that survives the whole
budget fails this test: the simulation has a blind spot. docs/raft.md lists
how many runs each mutant takes.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor

import pytest

from .mutants import MUTANTS, Detection, hunt, mutated_source


@pytest.fixture(scope="module")
def detections() -> dict[str, Detection | None]:
    names = [m.name for m in MUTANTS]
    workers = max(1, min(os.cpu_count() or 1, len(names)))
    with ProcessPoolExecutor(workers) as pool:
        found = dict(zip(names, pool.map(hunt, names)))
    for name, d in found.items():
        print(f"{name}: " + (f"caught after {d.runs} runs ({d.mix} seed {d.seed}, step {d.step})" if d else "SURVIVED"))
    return found


@pytest.mark.parametrize("name", [m.name for m in MUTANTS])
def test_mutant_is_caught(name: str, detections: dict[str, Detection | None]) -> None:
    d = detections[name]
    assert d is not None, (
        f"mutant {name} survived every seed of every CI mix: the simulation cannot see this bug\n"
        f"reproduce: python -m tests.raft.mutants {name}"
    )


def test_mutations_apply_to_the_core_as_it_is() -> None:
    # Each edit must match the core's source exactly once; a refactor must update the mutant.
    for m in MUTANTS:
        assert mutated_source(m) != open(__import__("cluster.raft." + m.module[:-3], fromlist=["x"]).__file__).read()
