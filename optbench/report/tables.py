"""Tables for people and for files: runs.csv, and the leaderboard and p-values formatted as text.

Raw numbers stay in the CSV files; here NaN becomes a dash, inf becomes "not reached", bytes become
MiB, and the speedup says when a loss lies below the baseline fit's floor.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from optbench.report.load import Bench
from optbench.report.speedup import PowerLaw

DASH = "—"


def runs_table(bench: Bench) -> pd.DataFrame:
    """Every run, one row each, hyperparameters flattened into hp_<name> columns."""
    rows = []
    for run in bench.runs:
        row = {"scenario": run.scenario, "optimizer": run.optimizer, "phases": "+".join(run.phases),
               "seed": run.seed}
        row.update({f"hp_{k}": v for k, v in sorted(run.hparams.items())})
        row.update({"status": run.status, "final_val_loss": run.final_loss, "tokens": run.tokens,
                    "wall_s": run.value("wall_s"), "run_dir": str(run.path.relative_to(bench.out))})
        rows.append(row)
    table = pd.DataFrame(rows)
    hp = sorted(c for c in table.columns if c.startswith("hp_"))
    order = ["scenario", "optimizer", "phases", "seed", *hp, "status", "final_val_loss", "tokens", "wall_s",
             "run_dir"]
    return table[order].sort_values(["scenario", "optimizer", "phases", "seed", "run_dir"], kind="stable")


def display_leaderboard(table: pd.DataFrame, fit: PowerLaw | None, has_target: bool) -> pd.DataFrame:
    """The leaderboard as strings with readable headers; the target columns only with a target."""
    rows = []
    for row in table.to_dict("records"):
        shown = {
            "#": str(row["rank"]),
            "optimizer": row["optimizer"],
            "final val loss": _loss(row),
            "val perplexity": _number(row["final_ppl"], "{:.4g}"),
            "best hyperparameters": hparams_text(json.loads(row["hparams"]), row.get("at_grid_edge") or ""),
            "speedup (D_eff/D)": speedup_text(row["speedup"], fit),
        }
        if has_target:
            shown["steps to target"] = _reached(row["steps_to_target"], "{:.0f}")
            shown["time to target"] = _reached(row["wall_s_to_target"], "{:.3g} s")
        shown.update({
            "step time vs baseline": _ratio_of(row["step_time_ratio"], row["step_time_s"] * 1e3, "{:.3g} ms"),
            "state bytes/param": _ratio_of(row["state_ratio"], row["state_bytes_per_param"], "{:.3g}", first=True),
            "peak memory": _number(row["peak_mem_bytes"] / 2**20, "{:.0f} MiB"),
            "p vs baseline": p_text(row["p_value"]),
            "tuning trials": _trials(row),
        })
        rows.append(shown)
    return pd.DataFrame(rows)


def display_pairwise(pairwise: pd.DataFrame) -> pd.DataFrame:
    shown = pairwise.apply(lambda column: column.map(p_text))
    shown.index.name = "p-value"
    return shown.reset_index()


def display_scores(scores: pd.Series, steps: pd.DataFrame) -> pd.DataFrame:
    """Scores, best first, with the number of scenarios whose target each optimizer reached."""
    reached = np.isfinite(steps.to_numpy()).sum(axis=0)
    reached = dict(zip(steps.columns, reached))
    ordered = scores.sort_values(ascending=False, kind="stable")
    return pd.DataFrame({"optimizer": ordered.index, "AlgoPerf score": [f"{s:.3f}" for s in ordered],
                         "targets reached": [f"{reached[n]}/{len(steps)}" for n in ordered.index]})


def fit_text(fit: PowerLaw | None) -> str:
    if fit is None:
        return ("no speedup: the baseline has neither a ladder of three scenarios nor three evals with "
                "tokens > 0 in this scenario to fit L(D) = E + A·D^-α to")
    return (f"baseline fit L(D) = E + A·D^-α, {fit.source} ({fit.points} points): "
            f"E = {fit.E:.4g}, A = {fit.A:.4g}, α = {fit.alpha:.4g}")


def speedup_text(value: float, fit: PowerLaw | None) -> str:
    if math.isinf(value) and fit is not None:
        return f"below fitted floor E={fit.E:.4g}"
    return _number(value, "{:.2f}×")


def p_text(p: float) -> str:
    if math.isnan(p):
        return DASH
    return "<1e-4" if p < 1e-4 else f"{p:.4f}"


def hparams_text(hparams: dict[str, Any], edges: str = "") -> str:
    """k=v pairs; a value at the edge of its tuning grid is starred (the optimum may lie outside the grid)."""
    starred = set(filter(None, edges.split(",")))
    return ", ".join((f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}") + ("*" if k in starred else "")
                     for k, v in hparams.items()) or DASH


def _loss(row: dict[str, Any]) -> str:
    if math.isnan(row["final_loss_mean"]):
        return f"{DASH} (n=0)"
    std = "" if math.isnan(row["final_loss_std"]) else f" ± {row['final_loss_std']:.4f}"
    return f"{row['final_loss_mean']:.4f}{std} (n={row['n_final']})"


def _reached(value: float, template: str) -> str:
    return "not reached" if math.isinf(value) else _number(value, template)


def _number(value: float, template: str) -> str:
    return DASH if math.isnan(value) else template.format(value)


def _ratio_of(ratio: float, value: float, template: str, first: bool = False) -> str:
    """"1.05× (12 ms)", or for the state "8 (1.00×)"; just the value when there is no ratio."""
    if math.isnan(value):
        return DASH
    if math.isnan(ratio):
        return template.format(value)
    return f"{template.format(value)} ({ratio:.2f}×)" if first else f"{ratio:.2f}× ({template.format(value)})"


def _trials(row: dict[str, Any]) -> str:
    parts = [f"{row[k]} {k}" for k in ("diverged", "pruned", "failed", "incomplete") if row[k]]
    return f"{row['tune_trials']}" + (f" ({', '.join(parts)})" if parts else "")


def display_loss_at_steps(table: pd.DataFrame) -> pd.DataFrame:
    """PyLO's results table: per optimizer, val loss mean ± sd over seeds at each shown step."""
    steps = [c.removeprefix("loss@") for c in table.columns if c.startswith("loss@")]
    return pd.DataFrame([{
        "optimizer": row["optimizer"],
        "seeds": str(row["n"]),
        **{f"step {step}": _mean_sd(row[f"loss@{step}"], row[f"sd@{step}"]) for step in steps},
    } for row in table.to_dict("records")])


def display_stability(table: pd.DataFrame) -> pd.DataFrame:
    """Per optimizer: spikes per final run, divergence of final and tuning runs, the largest attention logit."""
    return pd.DataFrame([{
        "optimizer": row["optimizer"],
        "loss spikes / run": _number(row["loss_spikes_per_run"], "{:.2g}"),
        "grad spikes / run": _number(row["grad_spikes_per_run"], "{:.2g}"),
        "final runs diverged": f"{row['final_diverged']}/{row['n_final']}",
        "tuning divergence": (DASH if not row["tune_ended"] else
                              f"{row['tune_divergence_rate']:.0%} ({row['tune_diverged']}/{row['tune_ended']})"),
        "max attention logit": _number(row["max_attn_logit"], "{:.3g}"),
    } for row in table.to_dict("records")])


def _mean_sd(mean: float, sd: float) -> str:
    return _number(mean, "{:.4f}") + ("" if math.isnan(sd) else f" ± {sd:.4f}")


# ----------------------------------------------------------------------------- statistics (statistics.py)


def display_target(table: pd.DataFrame, target: float, alpha: float) -> pd.DataFrame:
    """modded-nanogpt's rule per optimizer: one-sample t-test of H1: mean final loss < target."""
    return pd.DataFrame([{
        "optimizer": row["optimizer"],
        "final val loss": _loss(row),
        "t": _number(row["t_vs_target"], "{:.2f}"),
        f"p (mean < {target:g})": p_text(row["p_below_target"]),
        f"below target at α={alpha:g}": verdict_text(row["p_below_target"], alpha),
    } for row in table.to_dict("records")])


def display_pairs(pairs: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Each pair, the lower mean first: the gap, the one-sided Welch p, and the seeds that would resolve it."""
    return pd.DataFrame([{
        "better": row["better"],
        "worse": row["worse"],
        "gap": _number(row["gap"], "{:.4f}"),
        "p (better < worse)": p_text(row["p_less"]),
        f"significant at α={alpha:g}": verdict_text(row["p_less"], alpha, "yes", "no"),
        "seeds run": f"{row['n_better']} / {row['n_worse']}",
        "seeds needed (each, power 0.8)": seeds_text(row["seeds_needed"]),
    } for row in pairs.to_dict("records")])


def display_burden(burden: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame([{
        "optimizer": row["optimizer"],
        "tuning trials": str(row["tune_trials"]),
        "best tuning loss": _number(row["best_tune_loss"], "{:.4f}"),
        "trials to within 1% of best": _number(row["trials_to_1pct"], "{:.0f}"),
    } for row in burden.to_dict("records")])


def display_studies(studies: pd.DataFrame) -> pd.DataFrame:
    """AlgoPerf's repeated tuning studies: the score (median of the studies' bests), its spread, each study."""
    return pd.DataFrame([{
        "optimizer": row["optimizer"],
        "studies": str(row["studies"]),
        "median of study bests": _number(row["median_best"], "{:.4f}"),
        "spread (max − min)": _number(row["spread"], "{:.4f}"),
        "each study's best": ", ".join(_number(b, "{:.4f}") for b in row["bests"]),
        "each study's hyperparameters": "; ".join(hparams_text(h) if h is not None else DASH for h in row["chosen"]),
        "trials to within 1% (median)": _number(row["median_trials_to_1pct"], "{:.0f}"),
    } for row in studies.to_dict("records")])


def display_neighbours(table: pd.DataFrame) -> pd.DataFrame:
    """Per optimizer and tuned hyperparameter: the loss at the best value and one grid step either side."""
    return pd.DataFrame([{
        "optimizer": row["optimizer"],
        "hyperparameter": row["hparam"],
        "one step below": _neighbour(row["below_value"], row["below_loss"], row["below_note"]),
        "best": _neighbour(row["best"], row["loss_at_best"], row["note_at_best"]),
        "one step above": _neighbour(row["above_value"], row["above_loss"], row["above_note"]),
    } for row in table.to_dict("records")])


def verdict_text(p: float, alpha: float, yes: str = "pass", no: str = "fail") -> str:
    if p is None or math.isnan(p):
        return DASH
    return yes if p < alpha else no


def seeds_text(n: float) -> str:
    if math.isnan(n):
        return DASH
    return "more than 10000" if math.isinf(n) else f"{n:.0f}"


def _value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _neighbour(value: Any, loss: float, note: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return note or DASH
    return f"{_value(value)}: " + (f"{loss:.4f}" if not math.isnan(loss) else (note or DASH))
