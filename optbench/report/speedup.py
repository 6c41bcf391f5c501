"""Speedup over the baseline as D_eff / D, the definition of Marin's "Fantastic Pretraining Optimizers".

The baseline's loss is fitted against tokens with L(D) = E + A * D^-alpha. An optimizer that reaches loss
L with D tokens is worth D_eff = (A / (L - E))^(1/alpha) baseline tokens, so its speedup is D_eff / D.
A loss at or below the fitted floor E is one the baseline never reaches: D_eff is infinite.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import least_squares

MIN_POINTS = 3
"""Three parameters need at least three points."""


@dataclass(frozen=True)
class PowerLaw:
    E: float
    A: float
    alpha: float
    source: str
    """Which data the fit used, in words (shown in the report)."""
    points: int
    within_run: bool = False
    scale: float = 1.0
    """Multiplies D_eff. A within-run fit is anchored so the baseline's own final loss is worth exactly the
    tokens it used (scale = D / D_eff(baseline)): a decaying schedule bends the end of a single curve below
    the power law, and unanchored the baseline would not come out at 1.00x against itself."""

    def loss(self, tokens: float) -> float:
        return self.E + self.A * tokens ** -self.alpha

    def tokens_for(self, loss: float) -> float:
        """Tokens the fitted baseline needs to reach `loss`; inf at or below the floor E."""
        if not math.isfinite(loss):
            return math.nan
        if loss <= self.E:
            return math.inf
        return (self.A / (loss - self.E)) ** (1.0 / self.alpha)


def fit_power_law(tokens: Sequence[float], losses: Sequence[float], source: str) -> PowerLaw | None:
    """Least-squares fit of L = E + A D^-alpha; None with fewer than three usable points.

    The fit is parametrised around the data's mean log-token so the amplitude is of order one, and
    started from the best of a scan over E (for fixed E the law is a line in log-log space).
    """
    D, L = np.asarray(tokens, float), np.asarray(losses, float)
    keep = np.isfinite(D) & np.isfinite(L) & (D > 0) & (L > 0)
    D, L = D[keep], L[keep]
    if len(np.unique(D)) < MIN_POINTS:
        return None
    x = np.log(D)
    center = float(x.mean())
    x = x - center

    def residuals(p: np.ndarray) -> np.ndarray:
        E, log_b, alpha = p
        return E + np.exp(log_b - alpha * x) - L

    start = _scan_floor(x, L)
    low, high = [0.0, -np.inf, 1e-6], [float(L.min()), np.inf, 10.0]
    start[0] = min(max(start[0], low[0]), high[0] * (1 - 1e-9))
    start[2] = min(max(start[2], low[2] * 10), high[2] * 0.999)
    result = least_squares(residuals, start, bounds=(low, high), x_scale="jac",
                           xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=10_000)
    E, log_b, alpha = result.x
    return PowerLaw(E=float(E), A=float(math.exp(log_b + alpha * center)), alpha=float(alpha),
                    source=source, points=len(D))


def _scan_floor(x: np.ndarray, L: np.ndarray) -> np.ndarray:
    """(E, log B, alpha) minimising the squared loss error over a grid of floors E in [0, min L)."""
    best, best_err = np.array([0.0, 0.0, 0.5]), math.inf
    for E in L.min() * (1 - np.geomspace(1e-4, 1.0, 200)):
        slope, intercept = np.polyfit(x, np.log(L - E), 1)
        err = float(np.sum((E + np.exp(intercept + slope * x) - L) ** 2))
        if -slope > 0 and err < best_err:
            best, best_err = np.array([E, intercept, -slope]), err
    return best


def speedup(fit: PowerLaw | None, loss: float, tokens: float) -> float:
    """D_eff / D; inf when the loss is at or below the fitted floor, NaN without a fit or a loss."""
    if fit is None or not math.isfinite(loss) or not tokens > 0:
        return math.nan
    return fit.scale * fit.tokens_for(loss) / tokens


def anchored(fit: PowerLaw, baseline_loss: float, baseline_tokens: float) -> PowerLaw:
    """The within-run fit with `scale` set so speedup(baseline) == 1 (see PowerLaw.scale)."""
    own = fit.tokens_for(baseline_loss)
    if not (math.isfinite(own) and own > 0 and baseline_tokens > 0):
        return fit
    return replace(fit, scale=baseline_tokens / own,
                   source=f"{fit.source}, anchored at the baseline's final loss (D_eff x {baseline_tokens / own:.3g})")


def select_fit(ladder: str | None, ladder_points: Sequence[tuple[float, float]],
               curve_points: Sequence[tuple[float, float]]) -> PowerLaw | None:
    """The ladder fit (the baseline's final losses over scenarios differing only in token budget) when the
    ladder has at least three; otherwise a fit of the baseline's own val-loss curve in this scenario."""
    if ladder is not None and len(ladder_points) >= MIN_POINTS:
        tokens, losses = zip(*ladder_points)
        fit = fit_power_law(tokens, losses, f"ladder '{ladder}': baseline final losses of "
                                            f"{len(ladder_points)} scenarios")
        if fit is not None:
            return fit
    if len(curve_points) < MIN_POINTS:
        return None
    tokens, losses = zip(*curve_points)
    fit = fit_power_law(tokens, losses, "within-run: the baseline's val-loss curve in this scenario")
    return replace(fit, within_run=True) if fit is not None else None
