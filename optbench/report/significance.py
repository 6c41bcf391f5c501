"""Whether two optimizers' final losses differ beyond seed noise: Welch's t-test, singly and pairwise.

Welch's test does not assume equal variances, which matters because an optimizer's seed-to-seed spread
is itself one of the things that differs between optimizers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats


def welch_p(a: Sequence[float], b: Sequence[float], alternative: str = "two-sided") -> float:
    """p-value of Welch's t-test (two-sided, or "less": H1 mean(a) < mean(b)); NaN when either side has fewer
    than two values or both are constant (the test is undefined there)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return math.nan
    return float(stats.ttest_ind(a, b, equal_var=False, alternative=alternative).pvalue)


def pairwise_p(losses: Mapping[str, Sequence[float]]) -> pd.DataFrame:
    """Symmetric table of Welch p-values between every pair of optimizers; NaN on the diagonal."""
    names = list(losses)
    table = pd.DataFrame(math.nan, index=names, columns=names, dtype=float)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            table.loc[a, b] = table.loc[b, a] = welch_p(losses[a], losses[b])
    return table
