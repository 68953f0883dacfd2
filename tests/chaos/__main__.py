"""The chaos runner: `python -m tests.chaos` runs scenarios against a fresh three-node Leveret
cluster (or Debian's RabbitMQ, `--target rabbitmq`) and prints the figures table.

    python -m tests.chaos                                   # kill-leader and pause, seed 1, quorum
    python -m tests.chaos --scenarios kill,pause,restart --seeds 1,2,3 --modes quorum,ha-all
    python -m tests.chaos --scenarios isolate,bridge --partitions      # iptables, as root
    python -m tests.chaos --target rabbitmq --handling pause_minority --modes quorum,ha-all

Scenarios: kill-leader, pause, kill, restart, isolate, bridge, mixed (tests/chaos/run.py).
Exit status 0 when every run kept every confirmed message and delivered nothing unpublished,
1 otherwise (with the ids and the clients' errors of each failed run on stderr).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from collections.abc import Sequence

from tests.chaos.firewall import Firewall
from tests.chaos.run import MODES, SCENARIOS, RunReport, explain, format_table, run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=("leveret", "rabbitmq"), default="leveret")
    parser.add_argument("--scenarios", default="kill-leader,pause")
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--modes", default="quorum")
    parser.add_argument("--handling", default="pause_minority", help="RabbitMQ's cluster_partition_handling")
    parser.add_argument("--partitions", action="store_true", help="install the LEVERET-CHAOS iptables chain")
    parser.add_argument("--rate", type=float, default=60.0, help="messages per second per publisher")
    options = parser.parse_args(argv)
    scenarios = [s for s in options.scenarios.split(",") if s]
    seeds = [int(s) for s in options.seeds.split(",") if s]
    modes = [m for m in options.modes.split(",") if m]
    for s in scenarios:
        if s not in SCENARIOS:
            parser.error(f"unknown scenario {s!r}; one of {', '.join(SCENARIOS)}")
    for m in modes:
        if m not in MODES:
            parser.error(f"unknown mode {m!r}; one of {', '.join(MODES)}")
    needs_firewall = options.partitions or any(k in ("isolate", "bridge")
                                               for s in scenarios for k in SCENARIOS[s].kinds)
    firewall = Firewall().install() if needs_firewall else None
    reports: list[RunReport] = []
    try:
        for scenario in scenarios:
            for mode in modes:
                for seed in seeds:
                    cluster = _cluster(options.target, options.handling, firewall)
                    try:
                        report = run(cluster, SCENARIOS[scenario], seed, mode, rate=options.rate,
                                     log=lambda line: print(line, file=sys.stderr, flush=True))
                        reports.append(report)
                        if not report.ok and hasattr(cluster, "logs"):
                            _keep_logs(cluster.logs(), f"{scenario}-{mode}-{seed}")
                    finally:
                        cluster.heal()
                        cluster.close()
    finally:
        if firewall is not None:
            firewall.remove()
        if reports:
            print(format_table(reports))
    for r in reports:
        if not r.ok:
            print(f"\n{r.target} {r.scenario} {r.mode} seed={r.seed} FAILED\n{explain(r)}", file=sys.stderr)
    return 0 if all(r.ok for r in reports) else 1


def _keep_logs(logs: dict[str, str], label: str) -> None:
    """A failed run's node logs, kept for its diagnosis (the nodes' own directories go)."""
    keep = Path(tempfile.mkdtemp(prefix=f"leveret-chaos-{label}-"))
    for name, text in logs.items():
        (keep / f"{name}.log").write_text(text)
    print(f"node logs of the failed run: {keep}", file=sys.stderr)


def _cluster(target: str, handling: str, firewall: Firewall | None):  # type: ignore[no-untyped-def]
    if target == "rabbitmq":
        from tests.chaos.rabbit import RabbitCluster

        return RabbitCluster(handling, firewall=firewall).form()
    from tests.chaos.cluster import LeveretCluster

    return LeveretCluster(firewall=firewall).form()


if __name__ == "__main__":
    sys.exit(main())
