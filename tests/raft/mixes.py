"""The fault mixes the CI runs the simulation under, and how many seeds of each.

Each mix is run over its own range of seeds (0..SEEDS_PER_MIX-1 by default).
`LEVERET_RAFT_SEEDS=N` (or the older `RAFT_SEEDS`) runs N seeds per mix. The
mutation tests (test_mutants.py) hunt each mutant through these same mixes
and seeds: this budget is what must catch every one of them.
"""

from __future__ import annotations

import os

from cluster.raft.sim import SimConfig

MIXES: dict[str, SimConfig] = {
    "default": SimConfig(),
    "three-nodes-three-groups": SimConfig(nodes=3, groups=3, crash=0.03),
    "lossy": SimConfig(drop=0.25, duplicate=0.1, max_delay=6, steps=250),
    "churn": SimConfig(membership=0.08, transfer=0.05, partition=0.05, partial=0.02, steps=250),
    "no-quiescence": SimConfig(quiesce=False, steps=200),
    # Paused nodes resume believing they lead; clients keep asking them.
    "stale-leaders": SimConfig(pause=0.03, read=0.5, propose=0.5, steps=250),
    # The scripted Figure 8 rounds on five voters, one entry per append.
    "figure8": SimConfig(nodes=5, groups=1, group_size=5, figure8=True, crash=0.0, max_append_entries=1,
                         steps=400),
    # Two candidates per term, voters crashing right after voting, unsynced writes lost.
    "amnesia": SimConfig(nodes=5, groups=2, group_size=5, contest=0.1, amnesia=1.0, crash=0.03, steps=200),
}

SEEDS_PER_MIX = int(os.environ.get("LEVERET_RAFT_SEEDS", os.environ.get("RAFT_SEEDS", "300")))
