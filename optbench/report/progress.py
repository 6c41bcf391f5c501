"""Loss along the way: the "loss at k steps" table (PyLO's results table) and loss against wall-clock time.

Both read the final runs' evaluations at the steps every run of a scenario evaluated, so a row's mean is never
over fewer seeds at one step than at another, and optimizers are compared at the same steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from optbench.bench.suite import Scenario
from optbench.report import measures
from optbench.report.load import Bench, Run

MAX_COLUMNS = 6
"""Steps shown in the loss-at-k table: evenly spread over the shared evaluation steps, the last always in."""


def eval_points(run: Run) -> dict[int, tuple[float, float]]:
    """step -> (val loss, wall-clock seconds) of a run's evaluations after some training, finite losses only."""
    points = {}
    for e in run.evals:
        loss, step = e.get("val_loss"), e.get("step")
        if step and loss is not None and math.isfinite(loss):
            points[int(step)] = (float(loss), float(e.get("time_s", math.nan)))
    return points


def shared_steps(runs: Sequence[Run]) -> list[int]:
    """The evaluation steps every run has, ascending."""
    sets = [set(eval_points(r)) for r in runs]
    return sorted(set.intersection(*sets)) if sets else []


def spread(steps: Sequence[int], most: int = MAX_COLUMNS) -> list[int]:
    """At most `most` of `steps`, evenly spaced by position, always ending with the last."""
    if len(steps) <= most:
        return list(steps)
    picks = np.linspace(0, len(steps) - 1, most).round().astype(int)
    return [steps[i] for i in sorted(set(picks))]


def finals_by_optimizer(bench: Bench, scenario: Scenario) -> dict[str, list[Run]]:
    """Each optimizer's completed final runs in the scenario (optimizers without any left out)."""
    found = {}
    for entry in bench.suite.optimizers:
        runs = measures.completed(bench.select(scenario.name, entry.name, "final"))
        if runs:
            found[entry.name] = runs
    return found


def loss_at_steps(bench: Bench, scenario: Scenario) -> pd.DataFrame:
    """Rows: optimizers; columns: val loss mean and sd over seeds at each shown step (`loss@K`, `sd@K`), in the
    suite's order. The steps are those every final run of the scenario evaluated."""
    finals = finals_by_optimizer(bench, scenario)
    steps = spread(shared_steps([r for runs in finals.values() for r in runs]))
    if not steps:
        return pd.DataFrame()
    rows = []
    for name, runs in finals.items():
        row: dict[str, float | str | int] = {"optimizer": name, "n": len(runs)}
        for step in steps:
            losses = np.array([eval_points(r)[step][0] for r in runs])
            row[f"loss@{step}"] = float(losses.mean())
            row[f"sd@{step}"] = float(losses.std(ddof=1)) if len(losses) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def loss_against_time(runs: Sequence[Run]) -> pd.DataFrame:
    """Columns seconds (mean over runs), mean, min, max of val loss, at the steps all `runs` evaluated."""
    steps = shared_steps(runs)
    rows = []
    for step in steps:
        losses = [eval_points(r)[step][0] for r in runs]
        times = [eval_points(r)[step][1] for r in runs]
        rows.append({"step": step, "seconds": float(np.nanmean(times)) if not np.isnan(times).all() else math.nan,
                     "mean": float(np.mean(losses)), "min": min(losses), "max": max(losses)})
    frame = pd.DataFrame(rows, columns=["step", "seconds", "mean", "min", "max"])
    return frame.dropna(subset=["seconds"])
