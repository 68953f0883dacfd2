"""Broken leader shells, each an edit of the shell model in queue_sim.py, and a hunt for them.

As tests/raft/mutants.py does for the Raft core: each mutant is a list of exact source
edits (each must match exactly once, so a change of the model fails the test loudly
instead of mutating nothing) applied to a copy of `tests/replication/queue_sim.py`,
loaded as a module of its own; the copy is run over the CI's mixes and seeds, seed 0 of
every mix, then seed 1, and so on, until a run fails. The model carries no switch.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

SOURCE = Path(__file__).with_name("queue_sim.py")


@dataclass(frozen=True)
class Mutant:
    name: str
    bug: str
    edits: tuple[tuple[str, str], ...]


MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "confirm-on-append", "a publish confirmed on the leader's own append, before its entry commits",
        (("            self.at_index[r.index] = proposal\n            return\n",
          "            self.at_index[r.index] = proposal\n"
          "            for p in pendings:\n"
          "                if p is not None and p.confirm is not None:\n"
          "                    p.confirm(True)\n"
          "                    p.confirm = None\n"
          "            return\n"),),
    ),
    Mutant(
        "no-requeue-all", "a new leader that does not propose RequeueAll",
        (("        self._append([\"reqall\", self.now_ms()], None)\n", ""),),
    ),
    Mutant(
        "no-credit-reservation", "Delivers proposed without reserving the consumer's credit while in flight",
        (("            self.reserved[sub.name] += 1\n            self.in_flight += 1\n",
          "            self.in_flight += 1\n"),),
    ),
    Mutant(
        "stale-settlement", "acks of an earlier leadership's deliveries accepted",
        (("        if not self.active or incarnation != self.incarnation:\n",
          "        if not self.active:\n"),),
    ),
    Mutant(
        "earlier-leadership-deliveries", "deliveries an earlier leadership chose carried out (handed out or "
        "taken back) by the new leader, though its RequeueAll returns them",
        (("                                p is not None and p.term == self.term)\n",
          "                                True)\n"),),
    ),
    Mutant(
        "settlements-dropped-on-refusal", "acks and requeues of a refused proposal (a transfer in progress) "
        "dropped while the node goes on leading",
        (("        if isinstance(r, Refused) and self.active:\n",
          "        if False:\n"),),
    ),
)

BY_NAME = {m.name: m for m in MUTANTS}


def mutated_source(mutant: Mutant) -> str:
    text = SOURCE.read_text()
    for old, new in mutant.edits:
        found = text.count(old)
        if found != 1:
            raise AssertionError(f"mutant {mutant.name}: the text to replace occurs {found} times in "
                                 f"tests/replication/queue_sim.py (the model changed: update the mutant):\n{old}")
        text = text.replace(old, new)
    return text


_loaded: dict[str, ModuleType] = {}


def mutant_module(name: str) -> ModuleType:
    """A copy of queue_sim with the mutant's edits, as a module of its own (one per process)."""
    if name not in _loaded:
        module_name = "queue_sim_mutant_" + name.replace("-", "_")
        spec = importlib.util.spec_from_loader(module_name, loader=None)
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        module.__file__ = str(SOURCE)
        sys.modules[module_name] = module  # dataclasses look their module up while being made
        exec(compile(mutated_source(BY_NAME[name]), str(SOURCE), "exec"), module.__dict__)
        _loaded[name] = module
    return _loaded[name]


@dataclass(frozen=True)
class Detection:
    mutant: str
    runs: int  # runs it took, the failing one included
    mix: str
    seed: int
    step: int
    failure: str  # the failure's first line


def hunt(name: str, seeds_per_mix: int) -> Detection | None:
    """Run the mutant through the mixes, seed by seed across all mixes, until a run fails."""
    from cluster.raft.sim import SimFailure

    module = mutant_module(name)
    runs = 0
    for seed in range(seeds_per_mix):
        for mix, cfg in module.QUEUE_MIXES.items():
            runs += 1
            sim = module.QueueSim(seed, cfg, mix, name)
            try:
                sim.run()
            except SimFailure as e:
                return Detection(name, runs, mix, seed, sim.now, str(e).splitlines()[0])
    return None


def catch_rates(name: str, seeds: int) -> dict[str, tuple[int, int]]:
    """For each mix: how many of its first `seeds` seeds catch the mutant, and the median step."""
    from cluster.raft.sim import SimFailure

    module = mutant_module(name)
    rates = {}
    for mix, cfg in module.QUEUE_MIXES.items():
        steps = []
        for seed in range(seeds):
            sim = module.QueueSim(seed, cfg, mix, name)
            try:
                sim.run()
            except SimFailure:
                steps.append(sim.now)
        rates[mix] = (len(steps), sorted(steps)[len(steps) // 2] if steps else 0)
    return rates


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m tests.replication.queue_mutants",
                                description="Hunt broken leader shells through the queue simulation's mixes.")
    p.add_argument("mutants", nargs="*", default=[m.name for m in MUTANTS])
    p.add_argument("--seeds", type=int, default=10, help="seeds per mix")
    p.add_argument("--rates", action="store_true", help="count the seeds of each mix that catch each mutant")
    a = p.parse_args(argv)
    survivors = 0
    for name in a.mutants:
        if a.rates:
            rates = catch_rates(name, a.seeds)
            print(f"{name}: " + ", ".join(f"{mix} {n}/{a.seeds}" + (f" (median step {st})" if n else "")
                                          for mix, (n, st) in rates.items()), flush=True)
            continue
        d = hunt(name, a.seeds)
        if d is None:
            survivors += 1
            print(f"{name}: SURVIVED")
        else:
            print(f"{name}: caught after {d.runs} runs ({d.mix} seed {d.seed}, step {d.step}): {d.failure}",
                  flush=True)
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
