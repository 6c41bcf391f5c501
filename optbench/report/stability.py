"""Stability beside the final loss (OmniOpt's stability axis): spikes, divergence, attention logits, update RMS.

Read from what the trainer records (optbench/training): summary.json's `loss_spikes`, `grad_spikes` and
`max_attn_logit`, each run's status, and the `kind: dynamics` records of metrics.jsonl (diag.every > 0). A run
that recorded none of these (diagnostics off, or written before they existed) shows as unknown, not as zero.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd

from optbench.bench.suite import Scenario
from optbench.report.load import Bench, Run

ENDED = ("completed", "diverged", "pruned")
"""Tuning runs with an outcome of their own: crashes (failed) and unfinished runs say nothing of stability."""
LAYER = re.compile(r"\.(\d+)\.")
"""A block's index in a parameter name: transformer.h.3.attn..., model.layers.3.mlp..."""


def _per_run(runs: Sequence[Run], key: str) -> list[float]:
    return [float(r.summary[key]) for r in runs if isinstance(r.summary.get(key), int | float)]


def stability_table(bench: Bench, scenario: Scenario) -> pd.DataFrame:
    """One row per optimizer of the scenario: spikes per final run (mean), tuning divergence rate, largest
    attention logit of the final runs."""
    rows = []
    for entry in [e for e in bench.suite.optimizers if bench.suite.runs_in(e, scenario)]:
        finals = [r for r in bench.select(scenario.name, entry.name, "final") if r.status in ("completed", "diverged")]
        tuning = Counter(r.status for r in bench.select(scenario.name, entry.name, "tune", study=None))
        ended = sum(tuning[s] for s in ENDED)
        loss_spikes, grad_spikes = _per_run(finals, "loss_spikes"), _per_run(finals, "grad_spikes")
        logits = [v for v in _per_run(finals, "max_attn_logit") if math.isfinite(v)]
        if not (finals or ended):
            continue
        rows.append({
            "optimizer": entry.name,
            "n_final": len(finals),
            "final_diverged": sum(r.status == "diverged" for r in finals),
            "loss_spikes_per_run": float(np.mean(loss_spikes)) if loss_spikes else math.nan,
            "grad_spikes_per_run": float(np.mean(grad_spikes)) if grad_spikes else math.nan,
            "tune_diverged": tuning["diverged"],
            "tune_ended": ended,
            "tune_divergence_rate": tuning["diverged"] / ended if ended else math.nan,
            "max_attn_logit": max(logits) if logits else math.nan,
        })
    return pd.DataFrame(rows)


def layer_of(name: str) -> int | None:
    """The block index in a parameter's name; None for parameters outside the blocks (embeddings, final norm)."""
    match = LAYER.search(name)
    return int(match.group(1)) if match else None


def update_rms_by_layer(run: Run) -> pd.DataFrame:
    """Rows: dynamics steps; columns: block index; values: the median update RMS over that block's parameters
    (the median, because a block's parameters differ in size and records carry no sizes to weight by)."""
    rows = {}
    for record in run.dynamics:
        per_layer: dict[int, list[float]] = {}
        for name, stats in (record.get("params") or {}).items():
            layer, value = layer_of(name), stats.get("update_rms")
            if layer is not None and isinstance(value, int | float) and math.isfinite(value):
                per_layer.setdefault(layer, []).append(float(value))
        if per_layer:
            rows[int(record["step"])] = {k: float(np.median(v)) for k, v in per_layer.items()}
    frame = pd.DataFrame.from_dict(rows, orient="index").sort_index()
    return frame.reindex(sorted(frame.columns), axis=1)


def dynamics_run(bench: Bench, scenario: Scenario, optimizer: str) -> Run | None:
    """The final run whose dynamics a figure shows: the completed one at the lowest seed that has any."""
    runs = [r for r in bench.select(scenario.name, optimizer, "final") if r.dynamics and r.status == "completed"]
    return min(runs, key=lambda r: r.seed) if runs else None
