"""The `leveret-perf` command line.

    leveret-perf [run] --url URL [--compare URL2] [--scenarios a,b] [--duration S] [--repeat N] [--json]
    leveret-perf compare [--url URL] ...     # starts the reference RabbitMQ, compares, stops it
    leveret-perf cluster-compare ...         # 3-node Leveret and RabbitMQ clusters, across nodes

With two brokers every scenario runs A, B, A, B, ... so that drift in the
machine (other load, thermal throttling) falls on both alike.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Optional

import trio
import typer

from .ceiling import measure_ceiling
from .client import parse_url
from .memory import RssSampler, find_broker_pid
from .report import REPO, Broker, Progress, Run, machine_facts, render_json, render_table
from .cluster_compare import cluster_brokers, run_cluster_rounds
from .cluster_scenarios import CLUSTER_SCENARIOS, ClusterOptions
from .scenarios import SCENARIOS, Measurement, Options, run_scenario

__all__ = ["app", "main"]

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
REFERENCE_SCRIPT = REPO / "scripts" / "rabbitmq-ref"

app = typer.Typer(add_completion=False, help="Benchmark AMQP 0-9-1 brokers side by side.")


def _scenarios(text: str, known: tuple[str, ...] = SCENARIOS) -> list[str]:
    if text in ("", "all"):
        return list(known)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise typer.BadParameter(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return names


def _reference(action: str) -> str:
    if not REFERENCE_SCRIPT.exists():
        raise typer.BadParameter(f"{REFERENCE_SCRIPT} not found: `compare` runs from a source checkout")
    done = subprocess.run([str(REFERENCE_SCRIPT), action], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"scripts/rabbitmq-ref {action} failed: {done.stderr.strip() or done.stdout.strip()}")
    lines = done.stdout.strip().splitlines()
    return lines[-1] if lines else ""


async def _run_all(run: Run, options: Options, progress: Progress) -> None:
    samplers = {b.key: RssSampler(b.pid) for b in run.brokers}
    for scenario in run.scenarios:
        for rep in range(1, run.repeat + 1):
            for broker in run.brokers:
                progress.step(f"{scenario} · {broker.label} · run {rep}/{run.repeat}")
                try:
                    measurement = await run_scenario(scenario, broker.url, options, samplers[broker.key])
                except Exception as exc:  # one failed run is a result, not the end of the benchmark
                    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
                        exc = exc.exceptions[0]
                    measurement = Measurement(problems=[f"run failed: {type(exc).__name__}: {exc}"])
                run.add(scenario, broker.key, measurement)
                if measurement.skipped:
                    break
            if any(m.skipped for m in run.results.get((scenario, run.brokers[0].key), [])):
                break


@app.command()
def perf(
    action: str = typer.Argument(
        "run", help="run (against --url, and --compare if given), compare, or cluster-compare (3-node clusters)"
    ),
    url: str = typer.Option(DEFAULT_URL, "--url", help="broker A"),
    compare: Optional[str] = typer.Option(None, "--compare", help="broker B, run alternately with A"),
    scenarios: str = typer.Option(
        "all", "--scenarios",
        help=f"comma-separated: {','.join(SCENARIOS)}; for cluster-compare: {','.join(CLUSTER_SCENARIOS)}",
    ),  # fmt: skip
    duration: float = typer.Option(10.0, "--duration", min=0.5, help="seconds of publishing per run"),
    repeat: int = typer.Option(3, "--repeat", min=1, help="runs per scenario and broker"),
    procs: int = typer.Option(2, "--procs", min=1, help="client processes for the load"),
    connections: int = typer.Option(1000, "--connections", min=1, help="connections in `connections`"),
    backlog_messages: int = typer.Option(1_000_000, "--backlog-messages", min=1, help="messages in `backlog`"),
    cluster_urls: str = typer.Option("", "--cluster-urls", help="URL1,URL2,URL3 of a 3-node cluster for `mirrored`"),
    consume_url: str = typer.Option(
        "", "--consume-url", help="consume through this node of A's cluster (publish and declare through --url)"
    ),
    broker_pid: Optional[int] = typer.Option(None, "--broker-pid", help="pid of broker A (RSS)"),
    compare_pid: Optional[int] = typer.Option(None, "--compare-pid", help="pid of broker B (RSS)"),
    label: Optional[str] = typer.Option(None, "--label", help="name of broker A in the output"),
    compare_label: Optional[str] = typer.Option(None, "--compare-label", help="name of broker B in the output"),
    clients_per_node: int = typer.Option(2, "--clients-per-node", min=1, help="clients per node in `metadata-ops`"),
    idle_settle: float = typer.Option(10.0, "--idle-settle", min=0.0, help="seconds before `idle` measures"),
    idle_seconds: float = typer.Option(30.0, "--idle-seconds", min=0.5, help="seconds `idle` measures over"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON document instead of the table"),
) -> None:
    """Run the benchmark scenarios against one broker, or two side by side."""
    if action not in ("run", "compare", "cluster-compare"):
        raise typer.BadParameter("action must be `run`, `compare` or `cluster-compare`", param_hint="ACTION")
    if action == "cluster-compare":
        base = Options(duration=duration, procs=procs, drain=max(5.0, duration))
        cluster_options = ClusterOptions(base, clients_per_node, idle_settle, idle_seconds)
        run = _cluster_compare(_scenarios(scenarios, CLUSTER_SCENARIOS), repeat, cluster_options)
        _report(run, as_json)
    names = _scenarios(scenarios)
    if consume_url and (compare or action == "compare"):
        # Both brokers share the options, and B is not in A's cluster: use `cluster-compare`.
        raise typer.BadParameter("--consume-url names a node of A's cluster: it cannot be used with a broker B")
    for candidate in [url] + ([compare] if compare else []) + ([consume_url] if consume_url else []):
        try:
            parse_url(candidate)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    started_reference = False
    try:
        if action == "compare":
            if compare is None:
                print("starting the reference RabbitMQ (scripts/rabbitmq-ref start) ...", file=sys.stderr)
                compare = _reference("start")
                started_reference = True
            label = label or "leveret"
            compare_label = compare_label or "rabbitmq"
        brokers = [Broker("a", label or "A", url, broker_pid or find_broker_pid(parse_url(url).port))]
        if compare:
            brokers.append(
                Broker("b", compare_label or "B", compare, compare_pid or find_broker_pid(parse_url(compare).port))
            )
        options = Options(
            duration=duration,
            procs=procs,
            connections=connections,
            backlog_messages=backlog_messages,
            cluster_urls=tuple(u.strip() for u in cluster_urls.split(",") if u.strip()),
            consume_url=consume_url,
            drain=max(5.0, duration),
        )
        print("measuring the load generator's own ceiling ...", file=sys.stderr)
        ceiling = measure_ceiling(procs)
        run = Run(brokers, names, repeat, duration, procs, ceiling, machine_facts())
        progress = Progress(len(names) * repeat * len(brokers))
        trio.run(_run_all, run, options, progress)
        progress.finish()
    finally:
        if started_reference:
            print("stopping the reference RabbitMQ ...", file=sys.stderr)
            _reference("stop")
    _report(run, as_json)


def _cluster_compare(names: list[str], repeat: int, options: ClusterOptions) -> Run:
    print("measuring the load generator's own ceiling ...", file=sys.stderr)
    ceiling = measure_ceiling(options.base.procs)
    run = Run(cluster_brokers(), names, repeat, options.base.duration, options.base.procs, ceiling, machine_facts())
    progress = Progress(len(names) * repeat * len(run.brokers))
    run_cluster_rounds(run, options, progress)
    progress.finish()
    return run


def _report(run: Run, as_json: bool) -> None:
    """Print the run and exit: status 1 when a run failed outright."""
    if as_json:
        print(json.dumps(render_json(run), indent=2))
    else:
        print(render_table(run))
    failed = any(
        any(p.startswith("run failed") for p in m.problems) for ms in run.results.values() for m in ms
    )
    raise typer.Exit(1 if failed else 0)


def main() -> None:
    app()
