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


def _hunt(name: str) -> Detection | str | None:
    """The hunt, or the text of what stopped it (a mutant that no longer applies)."""
    try:
        return hunt(name)
    except AssertionError as e:
        return str(e)


@pytest.fixture(scope="module")
def detections() -> dict[str, Detection | str | None]:
    names = [m.name for m in MUTANTS]
    workers = max(1, min(os.cpu_count() or 1, len(names)))
    with ProcessPoolExecutor(workers) as pool:
        found = dict(zip(names, pool.map(_hunt, names)))
    for name, d in found.items():
        if isinstance(d, Detection):
            print(f"{name}: caught after {d.runs} runs ({d.mix} seed {d.seed}, step {d.step})")
    return found


@pytest.mark.parametrize("name", [m.name for m in MUTANTS])
def test_mutant_is_caught(name: str, detections: dict[str, Detection | str | None]) -> None:
    d = detections[name]
    assert not isinstance(d, str), d
    assert d is not None, (
        f"mutant {name} survived every seed of every CI mix: the simulation cannot see this bug\n"
        f"reproduce: python -m tests.raft.mutants {name}"
    )


def test_mutations_apply_to_the_core_as_it_is() -> None:
    # Each edit must match the core's source exactly once (mutated_source asserts it) and change it.
    from .mutants import RAFT_DIR

    for m in MUTANTS:
        assert mutated_source(m) != (RAFT_DIR / m.module).read_text(), m.name
