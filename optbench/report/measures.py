"""Numbers measured on runs: final losses, mean val-loss curves, steps to a target, step times.

Pure functions over `Run` lists; a quantity a run cannot provide comes back as NaN (or inf for a target
never reached), so aggregates stay defined when some runs crashed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from optbench.report.load import Run


def final_losses(runs: Sequence[Run]) -> np.ndarray:
    """The final val losses of the completed runs (others have none worth comparing)."""
    losses = np.array([r.final_loss for r in runs], float)
    return losses[np.isfinite(losses)]


def completed(runs: Sequence[Run]) -> list[Run]:
    return [r for r in runs if math.isfinite(r.final_loss)]


def median(values: Sequence[float]) -> float:
    """Median ignoring NaN (unknown) but keeping inf (not reached); NaN when nothing is known."""
    known = [v for v in values if not math.isnan(v)]
    return float(np.median(known)) if known else math.nan


def val_curve(run: Run) -> pd.Series:
    """val loss indexed by tokens, for evals after some training (tokens > 0)."""
    points = {float(e["tokens"]): float(e["val_loss"]) for e in run.evals
              if e.get("tokens") and e.get("val_loss") is not None and math.isfinite(e["val_loss"])}
    return pd.Series(points, dtype=float).sort_index()


def mean_curve(runs: Sequence[Run]) -> pd.DataFrame:
    """Columns mean, min, max of val loss over runs, indexed by tokens; only token counts every run has
    reached, so the mean is never over fewer seeds at the end than at the start."""
    curves = [c for c in (val_curve(r) for r in runs) if len(c)]
    if not curves:
        return pd.DataFrame(columns=["mean", "min", "max"], dtype=float)
    table = pd.concat(curves, axis=1, join="inner")
    return pd.DataFrame({"mean": table.mean(axis=1), "min": table.min(axis=1), "max": table.max(axis=1)})


def reach_target(run: Run, target: float) -> tuple[float, float]:
    """(step, time_s) of the first eval at or below `target`; (inf, inf) if none is."""
    for e in sorted(run.evals, key=lambda e: e.get("step", 0)):
        loss = e.get("val_loss")
        if loss is not None and math.isfinite(loss) and loss <= target:
            return float(e["step"]), float(e.get("time_s", math.nan))
    return math.inf, math.inf


def steps_to_target(runs: Sequence[Run], target: float | None) -> tuple[float, float]:
    """Median over runs of (steps, seconds) to the target; inf when most runs never reach it, NaN
    without a target or runs."""
    if target is None or not runs:
        return math.nan, math.nan
    reached = [reach_target(r, target) for r in runs]
    return median([s for s, _ in reached]), median([t for _, t in reached])


def step_times(run: Run) -> list[float]:
    """Seconds per optimizer step from train lines: tokens per step (from consecutive lines' tokens and
    steps) over the line's training throughput."""
    lines = sorted((t for t in run.train if t.get("tokens_per_s")), key=lambda t: t["step"])
    times = []
    for before, line in zip(lines, lines[1:]):
        steps = line["step"] - before["step"]
        if steps > 0 and line["tokens_per_s"] > 0:
            times.append((line["tokens"] - before["tokens"]) / steps / line["tokens_per_s"])
    return times


def median_step_time(runs: Sequence[Run]) -> float:
    """The median over runs of each run's median timed step (forward, backward, update; summary.json's
    step_time_s, warm-up left out). Runs written before the trainer recorded it fall back to the train lines."""
    recorded = [r.summary["step_time_s"] for r in runs if r.summary.get("step_time_s")]
    if recorded:
        return median(recorded)
    return median([t for r in runs for t in step_times(r)])


def state_bytes_per_param(runs: Sequence[Run]) -> float:
    return median([r.value("optim_state_bytes") / r.value("n_params") for r in runs
                   if r.value("n_params") > 0])
