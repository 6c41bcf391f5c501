"""AlgoPerf-style performance profiles across scenarios (Dahl et al., "Benchmarking Neural Network
Training Algorithms", 2023, section 4.5).

For scenario s and optimizer o, t[s, o] is the steps its final runs need to reach the scenario's target
(inf if not reached or no target); r[s, o] = t[s, o] / min_o t[s, o]. The profile rho_o(tau) is the
fraction of scenarios with r <= tau, and the score is the area under rho over [1, tau_max], normalised
to [0, 1].
"""

from __future__ import annotations

import numpy as np
import pandas as pd

TAU_MAX = 4.0
"""AlgoPerf's upper limit: an optimizer needing more than four times the best one's steps gets nothing."""


def ratios(steps: pd.DataFrame) -> pd.DataFrame:
    """r[s, o] from t[s, o] (scenarios as rows, optimizers as columns; NaN counts as inf). A scenario no
    optimizer solves has inf for all."""
    t = steps.astype(float).fillna(np.inf)
    best = t.min(axis=1)
    r = t.div(best.where(np.isfinite(best) & (best > 0)), axis=0)
    # best == 0 (target met at the first eval): whoever also met it at step 0 ties for best.
    zero = best == 0
    r.loc[zero] = np.where(t.loc[zero] == 0, 1.0, np.inf)
    return r.fillna(np.inf)


def rho(r: pd.DataFrame, taus: np.ndarray) -> pd.DataFrame:
    """rho_o(tau) for each tau (rows) and optimizer (columns)."""
    values = (r.to_numpy()[None, :, :] <= taus[:, None, None]).mean(axis=1)
    return pd.DataFrame(values, index=pd.Index(taus, name="tau"), columns=r.columns)


def scores(r: pd.DataFrame, tau_max: float = TAU_MAX) -> pd.Series:
    """Area under rho over [1, tau_max] / (tau_max - 1), exact for the step function: a scenario with
    ratio r <= tau_max contributes (tau_max - r) / (tau_max - 1), averaged over scenarios."""
    clipped = np.clip(r.to_numpy(), 1.0, None)
    area = np.where(clipped <= tau_max, (tau_max - clipped) / (tau_max - 1), 0.0)
    return pd.Series(area.mean(axis=0), index=r.columns, name="score")
