"""The benchmark runner: repeated runs, min/median/max per figure, ratios, goals, JSON and markdown out."""

from __future__ import annotations

import json
import operator
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Figures = dict[str, float]


@dataclass(frozen=True)
class Goal:
    """`figure` must be `op` `limit` at its median, e.g. Goal("seconds_10k", "<", 5.0)."""

    figure: str
    op: str
    limit: float

    def met(self, value: float) -> bool:
        ops: dict[str, Callable[[float, float], bool]] = {
            "<": operator.lt,
            "<=": operator.le,
            ">": operator.gt,
            ">=": operator.ge,
        }
        return ops[self.op](value, self.limit)


@dataclass(frozen=True)
class Benchmark:
    name: str
    run: Callable[[], Figures]
    units: dict[str, str]
    ratios: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (numerator, denominator)
    goals: tuple[Goal, ...] = ()
    doc: str = ""


REGISTRY: dict[str, Benchmark] = {}


def benchmark(
    name: str,
    units: dict[str, str],
    ratios: dict[str, tuple[str, str]] | None = None,
    goals: tuple[Goal, ...] = (),
) -> Callable[[Callable[[], Figures]], Callable[[], Figures]]:
    def register(fn: Callable[[], Figures]) -> Callable[[], Figures]:
        REGISTRY[name] = Benchmark(name, fn, units, ratios or {}, goals, (fn.__doc__ or "").strip())
        return fn

    return register


def _stats(values: list[float]) -> dict[str, Any]:
    return {"runs": values, "min": min(values), "median": statistics.median(values), "max": max(values)}


def run(names: list[str], repeat: int, out: Path) -> bool:
    """Run the benchmarks, print and write the results; True when every goal is met."""
    results: dict[str, Any] = {}
    all_met = True
    for name in names:
        bench = REGISTRY[name]
        runs: list[Figures] = []
        for i in range(repeat):
            started = time.perf_counter()
            runs.append(bench.run())
            print(f"  {name}: run {i + 1}/{repeat} in {time.perf_counter() - started:.1f} s", flush=True)
        figures = {f: _stats([r[f] for r in runs]) | {"unit": bench.units.get(f, "")} for f in runs[0]}
        for ratio, (num, den) in bench.ratios.items():
            figures[ratio] = _stats([r[num] / r[den] for r in runs]) | {"unit": "ratio"}
        goals = []
        for goal in bench.goals:
            value = figures[goal.figure]["median"]
            goals.append(
                {
                    "figure": goal.figure,
                    "goal": f"{goal.op} {goal.limit:g}",
                    "median": value,
                    "met": goal.met(value),
                }
            )
            all_met &= goal.met(value)
        results[name] = {"doc": bench.doc, "figures": figures, "goals": goals}
    report = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count() or 0,
            "platform": platform.platform(),
        },
        "repeat": repeat,
        "benchmarks": results,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    table = markdown(report)
    (out / "results.md").write_text(table + "\n")
    print(table)
    return all_met


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Benchmarks ({report['repeat']} runs each; {report['machine']['cpus']} CPUs, "
        f"Python {report['machine']['python']})",
        "",
        "| benchmark | figure | min | median | max | unit | goal |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in report["benchmarks"].items():
        goals = {g["figure"]: g for g in result["goals"]}
        for figure, s in result["figures"].items():
            goal = goals.get(figure)
            verdict = f"{goal['goal']} {'met' if goal['met'] else 'MISSED'}" if goal else ""
            lines.append(
                f"| {name} | {figure} | {s['min']:.4g} | {s['median']:.4g} | {s['max']:.4g} | "
                f"{s['unit']} | {verdict} |"
            )
    return "\n".join(lines)
