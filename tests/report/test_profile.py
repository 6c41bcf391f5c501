"""AlgoPerf performance profiles on a hand-computed case."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from optbench.report.profile import ratios, rho, scores

INF = math.inf
# s1: a fastest, b twice as slow, c never; s2: b fastest, a 2x, c 4x; s3: nobody reaches the target.
STEPS = pd.DataFrame({"a": [100, 300, INF], "b": [200, 150, INF], "c": [INF, 600, np.nan]},
                     index=["s1", "s2", "s3"])


def test_ratios_to_the_best_optimizer():
    r = ratios(STEPS)
    assert r.loc["s1"].tolist() == [1.0, 2.0, INF]
    assert r.loc["s2"].tolist() == [2.0, 1.0, 4.0]
    assert r.loc["s3"].tolist() == [INF, INF, INF]


def test_rho_counts_scenarios_within_tau():
    profile = rho(ratios(STEPS), np.array([1.0, 1.5, 2.0, 4.0]))
    assert profile["a"].tolist() == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3])
    assert profile["b"].tolist() == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3])
    assert profile["c"].tolist() == pytest.approx([0, 0, 0, 1 / 3])


def test_score_is_the_normalised_area_under_rho():
    r = ratios(STEPS)
    got = scores(r, tau_max=4.0)
    # a: s1 contributes (4-1)/3, s2 (4-2)/3, s3 nothing; averaged over three scenarios.
    assert got["a"] == pytest.approx(5 / 9)
    assert got["b"] == pytest.approx(5 / 9)
    assert got["c"] == pytest.approx(0.0)
    taus = np.linspace(1, 4, 300_001)
    numeric = np.trapezoid(rho(r, taus).to_numpy(), taus, axis=0) / 3
    assert numeric == pytest.approx(got.to_numpy(), abs=1e-4)


def test_target_met_at_step_zero_ties_for_best():
    r = ratios(pd.DataFrame({"a": [0.0], "b": [0.0], "c": [50.0]}))
    assert r.iloc[0].tolist() == [1.0, 1.0, INF]
