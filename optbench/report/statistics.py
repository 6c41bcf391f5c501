"""Statistics a reader can act on (issue 12, item 6): does an optimizer reach the target, is one better
than another, how many seeds would settle a gap, how long tuning took, and how sharp the optimum is.

    target_test         modded-nanogpt track 3's rule: one-sample t-test, H1: mean final loss < target
    welch_less_p        its pairwise form: one-sided Welch test, H1: mean(A) < mean(B)
    seeds_needed        seeds per optimizer for a one-sided two-sample t-test to resolve a gap (power 0.8)
    trials_to_within    tuning burden: trials (in trial order) until within 1% of the best tuning loss
    repeated_studies    AlgoPerf's repeated tuning studies: median over studies of each study's best, its spread
    neighbours          Marin's ablation: the loss one grid step either side of the best, per tuned key

Every function is pure over numbers or `Run` lists; NaN means "undefined here" (too few seeds, no spread).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from optbench.bench.extend import ladder
from optbench.optim.search_space import Dimension
from optbench.report.load import Run
from optbench.report.significance import welch_p

ALPHA = 0.05
"""The significance level when the suite names none (the suite has no such field yet)."""
POWER = 0.8
WITHIN = 0.01
"""Tuning burden: a trial counts as 'found' when its final loss is within 1% of the best tuning loss."""
MAX_SEEDS = 10_000
"""seeds_needed gives up above this (returns inf): the gap is, for practical purposes, unresolvable."""


def alpha_of(suite: Any) -> float:
    """The suite's significance level (a field `alpha`, or `significance.alpha`) or ALPHA."""
    for value in (getattr(suite, "alpha", None), getattr(getattr(suite, "significance", None), "alpha", None)):
        if isinstance(value, int | float) and 0 < value < 1:
            return float(value)
    return ALPHA


# ----------------------------------------------------------------------------- (a) target and pairwise


def _testable(values: np.ndarray) -> bool:
    return len(values) >= 2 and np.ptp(values) > 0


def target_test(losses: Sequence[float], target: float) -> tuple[float, float]:
    """(t, p) of the one-sample t-test of H1: mean(losses) < target (modded-nanogpt track 3):
    t = (mean - target) / (s / sqrt(n)), p = T_{n-1}(t). NaN with fewer than two losses or no spread."""
    x = np.asarray(losses, float)
    if not _testable(x):
        return math.nan, math.nan
    result = stats.ttest_1samp(x, target, alternative="less")
    return float(result.statistic), float(result.pvalue)


def welch_less_p(a: Sequence[float], b: Sequence[float]) -> float:
    """One-sided Welch p-value of H1: mean(a) < mean(b); NaN when undefined (see welch_p)."""
    return welch_p(a, b, alternative="less")


# ----------------------------------------------------------------------------- (b) power


def power_one_sided(n: int, effect: float, alpha: float) -> float:
    """Exact power of the one-sided two-sample t-test with n per group at standardised effect d = gap/sd:
    1 - F_nct(t_{1-alpha, 2n-2}; df = 2n-2, ncp = d·sqrt(n/2))."""
    df = 2 * n - 2
    return float(stats.nct.sf(stats.t.ppf(1 - alpha, df), df, effect * math.sqrt(n / 2)))


def seeds_needed(a: Sequence[float], b: Sequence[float], alpha: float = ALPHA, power: float = POWER) -> float:
    """Seeds per optimizer (equal n) for the one-sided two-sample t-test at `alpha` to detect the measured
    gap |mean(a) - mean(b)| with probability `power`, given the measured spread.

    The sd is the Welch-style average of the two sample variances, sd = sqrt((s_a² + s_b²)/2) (equal to
    the pooled sd at equal n, and not dominated by the larger sample otherwise). The power is computed
    exactly with the noncentral t distribution (scipy.stats.nct), not the normal approximation
    n ≈ 2 (z_{1-α} + z_power)² / d², which is only the starting point of the search: the answer is the
    smallest n ≥ 2 whose exact power reaches `power`. NaN with fewer than two seeds a side; inf when the
    gap is zero or more than MAX_SEEDS are needed; 2 when there is no spread but a gap.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2:
        return math.nan
    gap = abs(float(a.mean() - b.mean()))
    sd = math.sqrt((float(a.var(ddof=1)) + float(b.var(ddof=1))) / 2)
    if gap == 0:
        return math.inf
    if sd == 0:
        return 2.0
    effect = gap / sd
    z = stats.norm.ppf(1 - alpha) + stats.norm.ppf(power)
    guess = max(2, int(math.ceil(2 * (z / effect) ** 2)))
    if guess > MAX_SEEDS:
        return math.inf
    n = guess
    # The t-test needs at least the normal approximation's n; walk down (rarely) then up to the first n.
    while n > 2 and power_one_sided(n - 1, effect, alpha) >= power:
        n -= 1
    while power_one_sided(n, effect, alpha) < power:
        n += 1
        if n > MAX_SEEDS:
            return math.inf
    return float(n)


def pairs_table(losses: Mapping[str, Sequence[float]], alpha: float = ALPHA) -> pd.DataFrame:
    """One row per pair of optimizers, the lower mean final loss first as `better`: the gap, the
    one-sided Welch p of H1: mean(better) < mean(worse), whether it is significant at alpha, and
    the seeds per optimizer that would resolve the gap."""
    rows = []
    means = {k: float(np.mean(v)) if len(v) else math.nan for k, v in losses.items()}
    for x, y in combinations(losses, 2):
        better, worse = (x, y) if not means[y] < means[x] else (y, x)
        p = welch_less_p(losses[better], losses[worse])
        rows.append({"better": better, "worse": worse, "gap": means[worse] - means[better], "p_less": p,
                     "significant": bool(p < alpha) if not math.isnan(p) else None,
                     "n_better": len(losses[better]), "n_worse": len(losses[worse]),
                     "seeds_needed": seeds_needed(losses[better], losses[worse], alpha)})
    return pd.DataFrame(rows, columns=["better", "worse", "gap", "p_less", "significant", "n_better", "n_worse",
                                       "seeds_needed"])


# ----------------------------------------------------------------------------- (c) tuning burden


def trial_order(runs: Sequence[Run]) -> list[Run]:
    """Tuning runs in the order their trials started: trial.json's `trial` number where the bench wrote
    one, else the modification time of the run's env.json (written once when the run starts), else the
    directory name. load.py itself returns runs sorted by path, which is a hash, not an order."""
    def key(run: Run) -> tuple[float, float, str]:
        number = run.trial
        try:
            started = (run.path / "env.json").stat().st_mtime
        except OSError:
            started = math.inf
        return (math.inf if number is None else float(number), started, run.path.name)
    return sorted(runs, key=key)


def trials_to_within(runs: Sequence[Run], within: float = WITHIN) -> tuple[float, float, int]:
    """(trials, best loss, trials run): the 1-based position, in trial order, of the first tuning trial
    whose final loss is within `within` (relative) of the best final loss of all of them; every trial
    counts, diverged and failed ones too. NaN when no trial completed."""
    ordered = trial_order(runs)
    losses = np.array([r.final_loss for r in ordered], float)
    if not np.isfinite(losses).any():
        return math.nan, math.nan, len(ordered)
    best = float(np.nanmin(losses))
    bound = best + within * abs(best)
    first = next(i for i, loss in enumerate(losses) if math.isfinite(loss) and loss <= bound)
    return float(first + 1), best, len(ordered)


def repeated_studies(studies: Mapping[int, Sequence[Run]]) -> dict[str, Any]:
    """AlgoPerf's repeated tuning studies of one optimizer: each study's best tuning loss and the hyperparameters
    that gave it, the median over studies (the optimizer's score) and the spread (max - min), and the median
    tuning burden. A study without a finite loss counts with an infinite best, as AlgoPerf counts a failure."""
    bests, chosen, burdens = [], [], []
    for index in sorted(studies):
        trials, best, _ = trials_to_within(studies[index])
        bests.append(best if math.isfinite(best) else math.inf)
        done = [r for r in studies[index] if math.isfinite(r.final_loss)]
        chosen.append(min(done, key=lambda r: r.final_loss).hparams if done else None)
        burdens.append(trials)
    finite = [b for b in bests if math.isfinite(b)]
    return {"studies": len(bests), "median_best": float(np.median(bests)) if bests else math.nan,
            "spread": (max(finite) - min(finite)) if len(finite) == len(bests) and finite else math.nan,
            "bests": bests, "chosen": chosen, "median_trials_to_1pct": float(np.nanmedian(burdens))
            if any(math.isfinite(b) for b in burdens) else math.nan}


# ----------------------------------------------------------------------------- (d) neighbours


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-3, abs_tol=1e-12)
    return a == b


def _find(runs: Sequence[Run], hparams: dict[str, Any]) -> list[Run]:
    return [r for r in runs if set(r.hparams) == set(hparams)
            and all(_same(r.hparams[k], v) for k, v in hparams.items())]


def _outcome(runs: Sequence[Run]) -> tuple[float, str]:
    """The best final loss of runs at one configuration, or why there is none."""
    if not runs:
        return math.nan, "not run"
    losses = [r.final_loss for r in runs if math.isfinite(r.final_loss)]
    if losses:
        return min(losses), ""
    return math.nan, runs[0].status


def neighbours(space: Mapping[str, Dimension], best: dict[str, Any], tune_runs: Sequence[Run],
               extended: Mapping[str, list] | None = None) -> pd.DataFrame:
    """Per tuned hyperparameter of `best`: the tuning loss at best, and at one grid step below and above
    with every other hyperparameter held at best (the grid as extended beyond its edges, `extended`). A missing
    neighbour says why: 'not run', 'edge of grid', 'off grid' (best is not a grid point), or the status of a
    run without a loss (diverged, ...)."""
    rows = []
    centre, centre_note = _outcome(_find(tune_runs, best))
    for key, dim in space.items():
        if key not in best:
            continue
        points = ladder(dim, (extended or {}).get(key, []))
        where = [i for i, p in enumerate(points) if _same(p, best[key])]
        row = {"hparam": key, "best": best[key], "loss_at_best": centre, "note_at_best": centre_note}
        for side, step in (("below", -1), ("above", 1)):
            if not where:
                value, loss, note = None, math.nan, "off grid"
            elif not 0 <= where[0] + step < len(points):
                value, loss, note = None, math.nan, "edge of grid"
            else:
                value = points[where[0] + step]
                loss, note = _outcome(_find(tune_runs, {**best, key: value}))
            row.update({f"{side}_value": value, f"{side}_loss": loss, f"{side}_note": note})
        rows.append(row)
    return pd.DataFrame(rows, columns=["hparam", "best", "loss_at_best", "note_at_best", "below_value",
                                       "below_loss", "below_note", "above_value", "above_loss", "above_note"])
