"""The comparison table, one row per run: raw numbers for compare.csv, and the same as text for the pages.

Every number is what the run recorded (summary.json, metrics.jsonl); NaN means the run has none (a run
that diverged before its first timed step), inf means the target was never reached.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from optbench.compare.rundirs import ComparedRun
from optbench.compare.target import to_target
from optbench.report import measures
from optbench.report.tables import DASH, hparams_text

DISPLAY_COLUMNS = ["run", "optimizer", "non-default hyperparameters", "status", "final val loss", "best val loss",
                   "tokens/s", "step time", "optimizer state", "wall time", "steps to target", "tokens to target"]


def runs_table(runs: Sequence[ComparedRun], target: float | None) -> pd.DataFrame:
    """Raw figures per run, in the order given; steps and tokens to `target` are NaN without one."""
    rows = []
    for compared in runs:
        run = compared.run
        steps, tokens = to_target(run, target) if target is not None else (math.nan, math.nan)
        rows.append({
            "run": compared.label,
            "optimizer": run.optimizer,
            "hyperparameters": hparams_text(run.hparams) if run.hparams else "defaults",
            "status": run.status,
            "final_val_loss": run.value("final_val_loss"),
            "best_val_loss": run.value("best_val_loss"),
            "tokens_per_s": run.value("tokens_per_s"),
            "step_time_s": measures.median_step_time([run]),
            "optim_state_bytes": run.value("optim_state_bytes"),
            "wall_s": run.value("wall_s"),
            "steps_to_target": steps,
            "tokens_to_target": tokens,
            "run_dir": str(run.path),
        })
    return pd.DataFrame(rows)


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table as text with readable headers (the run's full path stays in compare.csv)."""
    return pd.DataFrame([{
        "run": row["run"],
        "optimizer": row["optimizer"],
        "non-default hyperparameters": row["hyperparameters"],
        "status": row["status"],
        "final val loss": _number(row["final_val_loss"], "{:.4f}"),
        "best val loss": _number(row["best_val_loss"], "{:.4f}"),
        "tokens/s": _number(row["tokens_per_s"], "{:,.0f}"),
        "step time": _number(row["step_time_s"] * 1e3, "{:.3g} ms"),
        "optimizer state": _bytes(row["optim_state_bytes"]),
        "wall time": _number(row["wall_s"], "{:,.1f} s"),
        "steps to target": _reached(row["steps_to_target"]),
        "tokens to target": _reached(row["tokens_to_target"]),
    } for row in table.to_dict("records")], columns=DISPLAY_COLUMNS)


def _number(value: float, template: str) -> str:
    return DASH if math.isnan(value) else template.format(value)


def _reached(value: float) -> str:
    """Interpolated counts: 3 significant digits where a fraction of a step still tells runs apart (3.43)."""
    if math.isinf(value):
        return "not reached"
    return _number(value, "{:,.0f}" if value >= 100 else "{:.3g}")


def _bytes(value: float) -> str:
    """Binary units, as memory is usually read (228,464 B is 223.1 KiB)."""
    if math.isnan(value):
        return DASH
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
