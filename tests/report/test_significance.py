"""Welch's t-test against scipy, and the pairwise table's shape."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from optbench.report.significance import pairwise_p, welch_p


def test_welch_matches_scipy_and_separates_clear_differences():
    a, b = [2.40, 2.41, 2.39], [2.30, 2.32, 2.31, 2.29]
    expected = stats.ttest_ind(a, b, equal_var=False).pvalue
    assert welch_p(a, b) == pytest.approx(expected, rel=1e-12)
    assert welch_p(a, b) < 0.05
    assert welch_p([2.40, 2.45, 2.35], [2.41, 2.36, 2.44]) > 0.5


def test_undefined_cases_are_nan():
    assert math.isnan(welch_p([2.4], [2.3, 2.31]))
    assert math.isnan(welch_p([2.4, 2.4], [2.3, 2.3]))


def test_pairwise_is_symmetric_with_an_empty_diagonal():
    losses = {"adamw": [2.40, 2.41, 2.39], "muon": [2.30, 2.32, 2.31], "lion": [2.45, 2.47, 2.44]}
    table = pairwise_p(losses)
    assert list(table.index) == list(table.columns) == ["adamw", "muon", "lion"]
    assert table.loc["adamw", "muon"] == table.loc["muon", "adamw"] == welch_p(losses["adamw"], losses["muon"])
    assert all(math.isnan(table.loc[n, n]) for n in losses)
