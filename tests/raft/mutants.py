"""Classic Raft bugs, each applied to a copy of the core's source, and a hunt for them.

A mutant is a list of exact source edits to one module of `cluster/raft`. The
package's modules are copied into a temporary package, the edits are made on
the copy's text (each edit must match exactly once, so a refactor of the core
makes the mutation test fail loudly instead of mutating nothing), and the
simulation of that copy is run over the CI's seeds until a seed fails. The
core itself carries no switch for any of this.
"""

from __future__ import annotations

import importlib
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import cluster.raft

RAFT_DIR = Path(cluster.raft.__file__).parent


@dataclass(frozen=True)
class Mutant:
    name: str
    bug: str
    module: str  # file name in cluster/raft
    edits: tuple[tuple[str, str], ...]  # (exact source text, what replaces it)


MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "commit-earlier-term", "an entry of an earlier term committed by counting its replicas (Figure 8)",
        "group.py",
        (("        if idx > self.commit and self.log.term_at(idx) == self.term:\n",
          "        if idx > self.commit:\n"),),
    ),
    Mutant(
        "vote-not-persisted", "the hard state written without the vote",
        "node.py",
        (("                batch.set_hard_state(gid, hs)\n",
          "                batch.set_hard_state(gid, HardState(hs.term, None, hs.commit))\n"),),
    ),
    Mutant(
        "read-without-quorum", "ReadIndex answered at once, without a quorum's confirmation of leadership",
        "group.py",
        (("        if voters == {self.me} or (len(voters) == 1 and self.me in voters):\n",
          "        if True:\n"),),
    ),
    Mutant(
        "vote-without-log-check", "a vote granted without the candidate's log being up to date",
        "group.py",
        (("        if can_vote and self.log.is_up_to_date(m.last_index, m.last_term):\n",
          "        if can_vote:\n"),),
    ),
    Mutant(
        "follower-commits-ahead", "a follower committing past the leader's commit index",
        "group.py",
        (("            self.commit = max(self.commit, min(m.commit, new_last))\n",
          "            self.commit = max(self.commit, new_last)\n"),),
    ),
    Mutant(
        "leader-ignores-higher-term", "a leader that does not step down on seeing a higher term",
        "group.py",
        (("        if m.term > self.term:\n            if isinstance(m, Vote):\n",
          "        if m.term > self.term and self.role != LEADER:\n            if isinstance(m, Vote):\n"),),
    ),
    Mutant(
        "pre-vote-counted", "a candidate counting pre-votes granted to it as votes",
        "group.py",
        (("            if m.pre == (self.role == PRE_CANDIDATE):\n",
          "            if m.pre == (self.role == PRE_CANDIDATE) or m.granted:\n"),),
    ),
    Mutant(
        "snapshot-over-longer-log", "a snapshot installed over a longer log, dropping matching entries past it",
        "group.py",
        (("        if self.log.term_at(s.index) == s.term:\n            # We already hold the entry",
          "        if False:\n            # We already hold the entry"),),
    ),
)

BY_NAME = {m.name: m for m in MUTANTS}


def mutated_source(mutant: Mutant) -> str:
    text = (RAFT_DIR / mutant.module).read_text()
    for old, new in mutant.edits:
        found = text.count(old)
        if found != 1:
            raise AssertionError(
                f"mutant {mutant.name}: the text to replace occurs {found} times in cluster/raft/{mutant.module} "
                f"(the core changed: update the mutant):\n{old}"
            )
        text = text.replace(old, new)
    return text


_loaded: dict[str, ModuleType] = {}


def mutant_sim(name: str) -> ModuleType:
    """The `sim` module of a copy of cluster/raft with the mutant's edits (one copy per process)."""
    if name in _loaded:
        return _loaded[name]
    mutant = BY_NAME[name]
    package = "raft_mutant_" + name.replace("-", "_")
    root = Path(tempfile.mkdtemp(prefix="raft-mutant-"))
    try:
        pkg = root / package
        pkg.mkdir()
        for src in RAFT_DIR.glob("*.py"):
            shutil.copy(src, pkg / src.name)
        (pkg / mutant.module).write_text(mutated_source(mutant))
        sys.path.insert(0, str(root))
        try:
            module = importlib.import_module(f"{package}.sim")
        finally:
            sys.path.remove(str(root))
    finally:
        shutil.rmtree(root, ignore_errors=True)  # imported modules live on in sys.modules
    _loaded[name] = module
    return module


@dataclass(frozen=True)
class Detection:
    """How a mutant was caught: the first failing run in the hunt's order."""

    mutant: str
    runs: int  # simulation runs it took, the failing one included
    mix: str
    seed: int
    step: int
    failure: str  # the failure's first line


def hunt(name: str, seeds_per_mix: int | None = None) -> Detection | None:
    """Run the mutant through the CI mixes, seed by seed across all mixes, until a run fails."""
    from dataclasses import asdict

    from .mixes import MIXES, SEEDS_PER_MIX

    sim_module = mutant_sim(name)
    configs = {mix: sim_module.SimConfig(**asdict(cfg)) for mix, cfg in MIXES.items()}
    runs = 0
    for seed in range(SEEDS_PER_MIX if seeds_per_mix is None else seeds_per_mix):
        for mix, cfg in configs.items():
            runs += 1
            sim = sim_module.Sim(seed, cfg)
            try:
                sim.run()
            except sim_module.SimFailure as e:
                return Detection(name, runs, mix, seed, sim.now, str(e).splitlines()[0])
    return None


def catch_rates(name: str, seeds: int) -> dict[str, tuple[int, int]]:
    """For each CI mix: how many of its first `seeds` seeds catch the mutant, and the median
    step of those failures (the figures docs/raft.md quotes)."""
    from dataclasses import asdict

    from .mixes import MIXES

    sim_module = mutant_sim(name)
    rates = {}
    for mix, cfg in MIXES.items():
        steps = []
        for seed in range(seeds):
            sim = sim_module.Sim(seed, sim_module.SimConfig(**asdict(cfg)))
            try:
                sim.run()
            except sim_module.SimFailure:
                steps.append(sim.now)
        rates[mix] = (len(steps), sorted(steps)[len(steps) // 2] if steps else 0)
    return rates


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m tests.raft.mutants",
                                description="Hunt mutants of the Raft core through the CI's simulation mixes.")
    p.add_argument("mutants", nargs="*", default=[m.name for m in MUTANTS], help="names (default: all)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per mix (default: the CI's)")
    p.add_argument("--rates", action="store_true",
                   help="instead of hunting, count the seeds of each mix that catch each mutant")
    a = p.parse_args(argv)
    if a.rates:
        seeds = a.seeds or 40
        for name in a.mutants:
            rates = catch_rates(name, seeds)
            print(f"{name}: " + ", ".join(f"{mix} {n}/{seeds}" + (f" (median step {st})" if n else "")
                                          for mix, (n, st) in rates.items()), flush=True)
        return 0
    survivors = 0
    for name in a.mutants:
        d = hunt(name, a.seeds)
        if d is None:
            survivors += 1
            print(f"{name}: SURVIVED")
        else:
            print(f"{name}: caught after {d.runs} runs ({d.mix} seed {d.seed}, step {d.step}): {d.failure}")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
