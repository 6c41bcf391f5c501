"""The power-law fit and D_eff/D speedup on data that follows L(D) = 2 + 50 D^-0.3 exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from optbench.report.speedup import PowerLaw, fit_power_law, select_fit, speedup
from tests.report.synthetic import law


def test_fit_recovers_the_law_from_a_curve():
    tokens = np.arange(1, 11) * 1e6
    fit = fit_power_law(tokens, [law(d) for d in tokens], "curve")
    assert fit.E == pytest.approx(2.0, abs=1e-3)
    assert fit.A == pytest.approx(50.0, abs=1e-3)
    assert fit.alpha == pytest.approx(0.3, abs=1e-3)
    assert fit.points == 10


def test_fit_through_exactly_three_points():
    tokens = [1e6, 1e7, 1e8]
    fit = fit_power_law(tokens, [law(d) for d in tokens], "ladder")
    assert (fit.E, fit.A, fit.alpha) == pytest.approx((2.0, 50.0, 0.3), abs=1e-3)


def test_speedup_is_twice_when_the_loss_is_the_baselines_at_twice_the_tokens():
    fit = PowerLaw(E=2.0, A=50.0, alpha=0.3, source="exact", points=3)
    assert speedup(fit, law(2e7), 1e7) == pytest.approx(2.0, abs=1e-3)
    assert speedup(fit, law(1e7), 2e7) == pytest.approx(0.5, abs=1e-3)


def test_loss_at_or_below_the_floor_is_infinite_and_unknowns_are_nan():
    fit = PowerLaw(E=2.0, A=50.0, alpha=0.3, source="exact", points=3)
    assert math.isinf(speedup(fit, 2.0, 1e7))
    assert math.isinf(speedup(fit, 1.9, 1e7))
    assert math.isnan(speedup(None, 2.5, 1e7))
    assert math.isnan(speedup(fit, math.nan, 1e7))


def test_too_few_points_give_no_fit():
    assert fit_power_law([1e6, 2e6], [law(1e6), law(2e6)], "two") is None
    assert fit_power_law([1e6, 1e6, 1e6], [2.5, 2.5, 2.5], "one token count") is None


def test_select_prefers_a_ladder_of_three_and_falls_back_to_the_curve():
    ladder = [(d, law(d)) for d in (1e6, 1e7, 1e8)]
    other = [(d, 3.0 + 10.0 * d ** -0.5) for d in (1e5, 2e5, 4e5, 8e5)]
    chosen = select_fit("L", ladder, other)
    assert chosen.source.startswith("ladder 'L'") and chosen.E == pytest.approx(2.0, abs=1e-3)
    fallback = select_fit("L", ladder[:2], other)
    assert fallback.source.startswith("within-run")
    assert (fallback.E, fallback.A, fallback.alpha) == pytest.approx((3.0, 10.0, 0.5), abs=1e-3)
    assert select_fit(None, ladder, other).source.startswith("within-run")
    assert select_fit(None, [], other[:2]) is None


def test_a_within_run_fit_is_anchored_so_the_baseline_is_one():
    from optbench.report.speedup import anchored

    tokens = [1e3, 2e3, 4e3, 8e3, 16e3]
    fit = select_fit(None, [], [(d, 2.0 + 50.0 * d ** -0.3) for d in tokens])
    assert fit.within_run and fit.scale == 1.0
    bent = 2.0 + 50.0 * 16e3 ** -0.3 - 0.02  # a decayed schedule ends below the curve's own law
    fit = anchored(fit, bent, 16e3)
    assert speedup(fit, bent, 16e3) == pytest.approx(1.0, rel=1e-9)
    assert speedup(fit, bent + 0.01, 16e3) < 1.0 < speedup(fit, bent - 0.01, 16e3)
    assert "anchored at the baseline's final loss" in fit.source
