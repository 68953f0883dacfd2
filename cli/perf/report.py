"""Presenting a run: the progress line, the side-by-side table and the --json document."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import psutil

from .ceiling import Ceiling
from .scenarios import METRICS, Measurement
from .stats import ratio, spread

__all__ = ["Broker", "Progress", "Run", "machine_facts", "render_json", "render_table"]

REPO = Path(__file__).resolve().parents[2]


@dataclass(slots=True)
class Broker:
    key: str  # "a" or "b"
    label: str
    url: str
    pid: int | None


@dataclass(slots=True)
class Run:
    brokers: list[Broker]
    scenarios: list[str]
    repeat: int
    duration: float
    procs: int
    ceiling: Ceiling | None
    machine: dict[str, Any]
    # (scenario, broker key) → one Measurement per repetition.
    results: dict[tuple[str, str], list[Measurement]] = field(default_factory=dict)

    def add(self, scenario: str, broker: str, measurement: Measurement) -> None:
        self.results.setdefault((scenario, broker), []).append(measurement)


def machine_facts() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = ""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
    }


class Progress:
    """One line on stderr, rewritten in place on a terminal, one line per step otherwise."""

    def __init__(self, total: int, stream: TextIO = sys.stderr) -> None:
        self.total = total
        self.done = 0
        self.stream = stream
        self.tty = stream.isatty()
        self._width = 0

    def step(self, text: str) -> None:
        self.done += 1
        line = f"[{self.done:>3}/{self.total}] {text}"
        if self.tty:
            pad = max(0, self._width - len(line))
            self.stream.write("\r" + line + " " * pad)
            self._width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()


def _fmt(value: float, unit: str) -> str:
    if math.isnan(value):
        return "-"
    if unit in ("ms", "% core"):
        return f"{value:.2f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}"


def _values(run: Run, scenario: str, broker: str, metric: str) -> list[float]:
    return [m.metrics.get(metric, math.nan) for m in run.results.get((scenario, broker), [])]


def _metrics_of(run: Run, scenario: str) -> list[str]:
    seen: list[str] = []
    for (name, _), measurements in run.results.items():
        if name != scenario:
            continue
        for m in measurements:
            for metric in m.metrics:
                if metric not in seen:
                    seen.append(metric)
    return [m for m in METRICS if m in seen]


def summary(run: Run) -> dict[str, Any]:
    """Per scenario: skipped reason, or per metric the spread for each broker and the A/B ratio."""
    out: dict[str, Any] = {}
    for scenario in run.scenarios:
        entry: dict[str, Any] = {}
        skipped = [m.skipped for b in run.brokers for m in run.results.get((scenario, b.key), []) if m.skipped]
        if skipped:
            entry["skipped"] = skipped[0]
        metrics: dict[str, Any] = {}
        for metric in _metrics_of(run, scenario):
            info = METRICS[metric]
            row: dict[str, Any] = {"unit": info.unit, "higher_is_better": info.higher_is_better}
            for broker in run.brokers:
                values = _values(run, scenario, broker.key, metric)
                s = spread(values)
                row[broker.key] = {"values": values, "min": s.min, "median": s.median, "max": s.max}
            if len(run.brokers) == 2:
                r = ratio(_values(run, scenario, "a", metric), _values(run, scenario, "b", metric))
                row["ratio_a_over_b"] = {"min": r.min, "median": r.median, "max": r.max}
            metrics[metric] = row
        entry["metrics"] = metrics
        problems = []
        for broker in run.brokers:
            for rep, m in enumerate(run.results.get((scenario, broker.key), []), 1):
                problems += [f"{broker.label} run {rep}: {p}" for p in m.problems]
        entry["problems"] = problems
        entry["totals"] = {
            broker.key: [m.totals for m in run.results.get((scenario, broker.key), [])] for broker in run.brokers
        }
        out[scenario] = entry
    return out


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def render_json(run: Run) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "tool": "leveret-perf",
        "machine": run.machine,
        "settings": {"duration_s": run.duration, "repeat": run.repeat, "procs": run.procs},
        "brokers": {b.key: {"label": b.label, "url": b.url, "pid": b.pid} for b in run.brokers},
        "scenarios": summary(run),
    }
    if run.ceiling is not None:
        doc["generator_ceiling"] = {
            "encode_msg_per_s_per_proc": run.ceiling.encode_per_s,
            "decode_msg_per_s_per_proc": run.ceiling.decode_per_s,
            "encode_frames_per_s_per_proc": run.ceiling.encode_frames_per_s,
            "decode_frames_per_s_per_proc": run.ceiling.decode_frames_per_s,
            "procs": run.ceiling.procs,
        }
    return _nan_to_none(doc)


def render_table(run: Run) -> str:
    m = run.machine
    lines = [
        f"leveret-perf · {m['date']} · commit {m['commit'] or '?'} · {m['cpu']} × {m['cores']} cores, "
        f"{m['memory_gib']} GiB · load {m['load_average_at_start'][0]}",
        f"{run.repeat} run(s) of {run.duration:g}s per scenario and broker, alternating; {run.procs} client process(es)",
    ]
    for b in run.brokers:
        # A cluster's nodes (cluster-compare) are named by where they run, and have no one pid.
        pid = f"  (pid {b.pid or 'unknown: no RSS'})" if b.url.startswith("amqp") else ""
        lines.append(f"  {b.key.upper()} = {b.label:<10} {b.url}{pid}")
    if run.ceiling is not None:
        c = run.ceiling
        lines.append(
            f"  generator ceiling per process, no broker: encode {c.encode_per_s:,.0f} msg/s "
            f"({c.encode_frames_per_s:,.0f} frames/s), decode+count {c.decode_per_s:,.0f} msg/s "
            f"({c.decode_frames_per_s:,.0f} frames/s)"
        )
    lines.append("")
    two = len(run.brokers) == 2
    header = ["scenario", "metric", "unit"]
    for b in run.brokers:
        header.append(f"{b.label} median (min–max)")
    if two:
        header.append(f"{run.brokers[0].label}/{run.brokers[1].label} (min–max)")
    rows = [header]
    notes: list[str] = []
    skipped: list[str] = []
    for scenario, entry in summary(run).items():
        if "skipped" in entry and not entry["metrics"]:
            skipped.append(f"{scenario}: skipped: {entry['skipped']}")
            continue
        first = True
        for metric, row in entry["metrics"].items():
            info = METRICS[metric]
            unit = f"{info.unit} {'↑' if info.higher_is_better else '↓'}"
            cells = [scenario if first else "", info.label, unit]
            for b in run.brokers:
                s = row[b.key]
                cells.append(f"{_fmt(s['median'], info.unit)} ({_fmt(s['min'], info.unit)}–{_fmt(s['max'], info.unit)})")
            if two:
                r = row["ratio_a_over_b"]
                cells.append(
                    "-" if math.isnan(r["median"]) else f"{r['median']:.2f}× ({r['min']:.2f}–{r['max']:.2f})"
                )
            rows.append(cells)
            first = False
        notes += [f"{scenario}: {p}" for p in entry["problems"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for i, r in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(r)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += skipped
    lines.append("")
    lines.append("↑ higher is better, ↓ lower is better; rates count only unique messages that really arrived.")
    if notes:
        lines.append("Problems found by the accounting:")
        lines += [f"  ! {n}" for n in notes]
    else:
        lines.append("Accounting: every published message arrived exactly once, in publish order, in every run.")
    return "\n".join(lines)
