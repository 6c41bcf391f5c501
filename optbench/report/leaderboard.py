"""One scenario's leaderboard: a row per optimizer with final runs, measured against the baseline.

The numbers stay raw here (floats, NaN for unknown, inf for "never"); tables.py formats them for reading.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from optbench.bench.extend import explored, find_edge
from optbench.bench.suite import Scenario, search_space
from optbench.report import measures, statistics
from optbench.report.load import MISSING, Bench, Run
from optbench.report.significance import pairwise_p, welch_p
from optbench.report.speedup import PowerLaw, anchored, select_fit, speedup

INCOMPLETE = (MISSING, "running", "interrupted")
"""Statuses of tuning runs that never finished, whatever the reason (a dead worker, a stopped bench)."""


@dataclass
class ScenarioResult:
    scenario: Scenario
    fit: PowerLaw | None
    table: pd.DataFrame
    """One row per optimizer with final runs, best mean final loss first."""
    pairwise: pd.DataFrame
    """Welch p-values between the final losses of every two optimizers."""
    alpha: float = statistics.ALPHA
    """The significance level of the pass/fail verdicts (the suite's, or statistics.ALPHA)."""
    pairs: pd.DataFrame = field(default_factory=pd.DataFrame)
    """One-sided Welch tests and seeds needed per pair of optimizers (statistics.pairs_table)."""
    burden: pd.DataFrame = field(default_factory=pd.DataFrame)
    """Per optimizer with tuning runs: trials until within 1% of its best tuning loss."""
    neighbours: pd.DataFrame = field(default_factory=pd.DataFrame)
    """Per optimizer and tuned hyperparameter: the loss one grid step either side of the best."""
    studies: pd.DataFrame = field(default_factory=pd.DataFrame)
    """Per optimizer, with tuning.studies > 1: AlgoPerf's repeated tuning studies (statistics.repeated_studies)."""
    without_final: list[str] = field(default_factory=list)
    """Optimizers of the suite with no final run in this scenario (not on the leaderboard)."""


def scenario_result(bench: Bench, scenario: Scenario) -> ScenarioResult:
    suite = bench.suite
    baseline = bench.select(scenario.name, suite.baseline, "final")
    fit = baseline_fit(bench, scenario)
    alpha = statistics.alpha_of(suite)
    rows, losses, without, burden, ablation = [], {}, [], [], []
    for entry in [e for e in suite.optimizers if suite.runs_in(e, scenario)]:
        tuning = bench.select(scenario.name, entry.name, "tune")
        finals = bench.select(scenario.name, entry.name, "final")
        if tuning:
            trials, best, total = statistics.trials_to_within(tuning)
            burden.append({"optimizer": entry.name, "trials_to_1pct": trials, "tune_trials": total,
                           "best_tune_loss": best})
            chosen = finals[0].hparams if finals else _best_tuning_hparams(tuning)
            if chosen is not None:
                table = statistics.neighbours(search_space(entry), chosen, tuning, extended_values(tuning))
                table.insert(0, "optimizer", entry.name)
                ablation.append(table)
        if not finals:
            without.append(entry.name)
            continue
        losses[entry.name] = measures.final_losses(finals)
        rows.append(_row(bench, scenario, entry.name, finals, tuning, baseline, fit, alpha))
    table = pd.DataFrame(rows)
    if len(table):
        table = _add_ratios(table, suite.baseline)
        table = table.sort_values("final_loss_mean", na_position="last", kind="stable").reset_index(drop=True)
        table.insert(1, "rank", np.arange(1, len(table) + 1))
    burden_table = pd.DataFrame(burden, columns=["optimizer", "trials_to_1pct", "tune_trials", "best_tune_loss"])
    if len(table):
        found = dict(zip(burden_table["optimizer"], burden_table["trials_to_1pct"]))
        table["tune_trials_to_1pct"] = [found.get(name, math.nan) for name in table["optimizer"]]
    return ScenarioResult(scenario=scenario, fit=fit, table=table, pairwise=pairwise_p(losses),
                          without_final=without, alpha=alpha, pairs=statistics.pairs_table(losses, alpha),
                          burden=burden_table,
                          neighbours=pd.concat(ablation, ignore_index=True) if ablation else pd.DataFrame(),
                          studies=repeated_studies(bench, scenario))


def repeated_studies(bench: Bench, scenario: Scenario) -> pd.DataFrame:
    """One row per optimizer when the suite ran several tuning studies (tuning.studies), best median first."""
    suite = bench.suite
    if suite.tuning.studies < 2:
        return pd.DataFrame()
    rows = []
    for entry in [e for e in suite.optimizers if suite.runs_in(e, scenario)]:
        runs = bench.select(scenario.name, entry.name, "tune", study=None)
        by_study = {k: [r for r in runs if r.study == k] for k in range(suite.tuning.studies)}
        rows.append({"optimizer": entry.name, **statistics.repeated_studies(by_study)})
    return pd.DataFrame(rows).sort_values("median_best", kind="stable").reset_index(drop=True)


def _best_tuning_hparams(runs: list[Run]) -> dict | None:
    done = measures.completed(runs)
    return min(done, key=lambda r: r.final_loss).hparams if done else None


def baseline_fit(bench: Bench, scenario: Scenario) -> PowerLaw | None:
    """The power law converting a loss into baseline tokens for this scenario (see speedup.select_fit)."""
    baseline = bench.suite.baseline
    ladder_points = []
    if scenario.ladder is not None:
        for other in bench.suite.scenarios:
            done = measures.completed(bench.select(other.name, baseline, "final"))
            if other.ladder == scenario.ladder and done:
                ladder_points.append((float(np.mean([r.tokens for r in done])),
                                      float(np.mean([r.final_loss for r in done]))))
    finals = measures.completed(bench.select(scenario.name, baseline, "final"))
    curve = measures.mean_curve(finals)
    fit = select_fit(scenario.ladder, ladder_points, list(zip(curve.index, curve["mean"])))
    if fit is not None and fit.within_run:
        fit = anchored(fit, float(np.mean([r.final_loss for r in finals])), float(np.mean([r.tokens for r in finals])))
    return fit


def _row(bench: Bench, scenario: Scenario, name: str, finals: list[Run], tune_runs: list[Run], baseline: list[Run],
         fit: PowerLaw | None, alpha: float) -> dict:
    done = measures.completed(finals)
    losses = measures.final_losses(finals)
    mean = float(losses.mean()) if len(losses) else math.nan
    tokens = float(np.mean([r.tokens for r in done])) if done else math.nan
    # Diverged runs count as never reaching the target; runs that never finished tell nothing.
    ended = [r for r in finals if r.status in ("completed", "diverged")]
    steps, seconds = measures.steps_to_target(ended, scenario.target_loss)
    tuning = Counter(r.status for r in tune_runs)
    is_baseline = name == bench.suite.baseline
    base_losses = measures.final_losses(baseline)
    t, p_target = (statistics.target_test(losses, scenario.target_loss) if scenario.target_loss is not None
                   else (math.nan, math.nan))
    return {
        "scenario": scenario.name,
        "optimizer": name,
        "n_final": len(losses),
        "final_loss_mean": mean,
        "final_loss_std": float(losses.std(ddof=1)) if len(losses) > 1 else math.nan,
        "final_ppl": math.exp(mean) if math.isfinite(mean) else math.nan,  # of the mean loss: the geometric mean
        "hparams": json.dumps(finals[0].hparams, sort_keys=True),
        "at_grid_edge": ",".join(at_grid_edge(bench, name, finals[0].hparams, tune_runs)),
        "tokens": tokens,
        "speedup": speedup(fit, mean, tokens),
        "steps_to_target": steps,
        "wall_s_to_target": seconds,
        "step_time_s": measures.median_step_time(done),
        "state_bytes_per_param": measures.state_bytes_per_param(done),
        "peak_mem_bytes": measures.median([r.value("peak_mem_bytes") for r in done]),
        "p_value": math.nan if is_baseline else welch_p(losses, measures.final_losses(baseline)),
        "tune_trials": sum(tuning.values()),
        "diverged": tuning["diverged"],
        "pruned": tuning["pruned"],
        "failed": tuning["failed"],
        "incomplete": sum(tuning[s] for s in INCOMPLETE),
        "t_vs_target": t,
        "p_below_target": p_target,
        "below_target": (None if math.isnan(p_target) else bool(p_target < alpha)),
        "p_below_baseline": math.nan if is_baseline else statistics.welch_less_p(losses, base_losses),
        "seeds_vs_baseline": math.nan if is_baseline else statistics.seeds_needed(losses, base_losses, alpha),
    }


def at_grid_edge(bench: Bench, name: str, hparams: dict, tuning: list[Run]) -> list[str]:
    """Tuned hyperparameters whose best value still sits on the edge of what was tried: the bench could not
    extend past it (a hard bound, or the suite's extension budget), or has not yet; the optimum may lie beyond,
    so the optimizer may be under-tuned there."""
    tried = extended_values(tuning)
    varied = explored([run.hparams for run in tuning if run.extension is None])
    edges = []
    for key, dim in search_space(bench.suite.optimizer(name)).items():
        if key not in varied:
            continue  # never moved by the tuning: at its default, not at an edge
        extended = tried.get(key, [])
        edge = find_edge(key, dim, hparams.get(key), extended, bench.suite.tuning.extend - len(extended))
        if edge is not None:
            edges.append(key)
    return edges


def extended_values(tuning: list[Run]) -> dict[str, list]:
    """Per hyperparameter, the values its tuning runs tried beyond the grid."""
    tried: dict[str, list] = {}
    for run in tuning:
        if run.extension is not None and run.hparams.get(run.extension) not in tried.setdefault(run.extension, []):
            tried[run.extension].append(run.hparams[run.extension])
    return tried


def _add_ratios(table: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Step time and optimizer state relative to the baseline's row (NaN without one)."""
    base = table[table["optimizer"] == baseline]
    for column, ratio in (("step_time_s", "step_time_ratio"), ("state_bytes_per_param", "state_ratio")):
        reference = float(base[column].iloc[0]) if len(base) else math.nan
        position = table.columns.get_loc(column) + 1
        table.insert(position, ratio, table[column] / reference if reference > 0 else math.nan)
    return table
