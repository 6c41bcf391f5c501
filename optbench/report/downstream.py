"""Downstream columns on a scenario's leaderboard: per optimizer, each task metric that its completed final runs wrote
to downstream.json (`optbench eval`, or eval.downstream at the end of training), as the mean over those runs.

The file is read here rather than by load.py, so a report of a bench without downstream evaluation is unchanged:
a run without the file adds nothing, and a leaderboard none of whose runs has one keeps its columns.
"""

from __future__ import annotations

import json
import statistics

import pandas as pd

from optbench.downstream.run import RESULT_FILE
from optbench.report.load import Bench, Run
from optbench.report.measures import completed
from optbench.report.tables import DASH


def run_metrics(run: Run) -> dict[str, float]:
    """"task metric" -> value from the run's downstream.json; empty without a readable one."""
    try:
        record = json.loads((run.path / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return {}
    values = {}
    for task, entry in (record.get("tasks") or {}).items():
        for metric, value in (entry.get("metrics") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values[f"{task} {metric}"] = float(value)
    return values


def mean_metrics(runs: list[Run]) -> dict[str, tuple[float, int]]:
    """"task metric" -> (mean over the runs that report it, how many do)."""
    per_run = [run_metrics(run) for run in runs]
    names = sorted(set().union(*per_run))
    return {name: (statistics.fmean(found := [m[name] for m in per_run if name in m]), len(found)) for name in names}


def add_columns(shown: pd.DataFrame, bench: Bench, scenario: str) -> pd.DataFrame:
    """`shown` (a leaderboard as displayed, one row per optimizer) with a column per downstream task metric."""
    means = {name: mean_metrics(completed(bench.select(scenario, name, "final"))) for name in shown["optimizer"]}
    columns = sorted(set().union(*means.values()))
    if not columns:
        return shown
    shown = shown.copy()
    for column in columns:
        shown[column] = [cell(means[name].get(column)) for name in shown["optimizer"]]
    return shown


def cell(found: tuple[float, int] | None) -> str:
    return DASH if found is None else f"{found[0]:.4f} (n={found[1]})"
