"""Tuning that cannot stop at a grid edge.

A best value on the outermost point of its grid (or in the outermost cell of a TPE range) says only that the
optimum may lie further out: a leaderboard that compares such an optimizer is comparing a grid, not an
optimizer. Once an optimizer's own tuning is over, the bench therefore walks outward from the best
configuration, one hyperparameter at a time, on the line through the best (the other hyperparameters at their
best values, as a researcher extending a sweep by hand would): one step beyond the edge, by the grid's own
step, for as long as the new point is the best, until the optimum is interior, the next step would cross a hard
bound, or the suite's extension budget (`tuning.extend` steps per hyperparameter) is spent.

Every hyperparameter the method varied is handled alike (one its trial budget never moved is at its default,
not at an edge): log-spaced values step by their ratio, linear ones by their gap,
integers by their ratio rounded, and values in [0, 1) such as betas and momenta by the ratio of 1 - value (after
0.9 and 0.99 comes 0.999). A value on the end of its own domain (weight decay 0, a boolean) is no edge at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from optbench.optim.search_space import Dimension, grid_points

PENDING, BOUND, BUDGET = "pending", "bound", "budget"
"""Why a best value still sits on an edge: extension not yet run, the next step crosses a hard bound, or the
suite's extension budget is spent."""

LR_CEILING = 1.0
"""A learning rate never steps above 1, or above the top of its declared range where that is higher (a
multiplier such as Prodigy's or VeLO's lr)."""


@dataclass(frozen=True)
class Edge:
    """A tuned hyperparameter whose best value lies in the outermost cell of what was tried."""

    key: str
    side: str
    """"low" or "high"."""
    outward: Any
    """The next value beyond the edge, or None where there is none (see `reason`)."""
    reason: str | None
    """None where `outward` may still be tried; else BOUND or BUDGET (PENDING is the caller's to say)."""


def explored(configs: list[dict[str, Any]]) -> set[str]:
    """The hyperparameters the method itself varied (at least two values among `configs`, its own points): only
    those have an edge. One it never moved (a trial budget spent on others) sits at its default, not at an edge."""
    values: dict[str, set] = {}
    for config in configs:
        for key, value in config.items():
            values.setdefault(key, set()).add(repr(value))
    return {key for key, seen in values.items() if len(seen) > 1}


def ladder(dim: Dimension, tried: list[Any]) -> list[Any]:
    """The values of one hyperparameter in order: its grid points and the extension values tried beyond them."""
    return sorted(set(grid_points(dim)) | set(tried), key=_order)


def find_edge(key: str, dim: Dimension, best: Any, extended: list[Any], steps_left: int) -> Edge | None:
    """Where the best value of `key` sits on the edge of its ladder (grid points and the extension values
    `extended` already tried), the edge and what lies beyond it; None where it is interior, where the
    hyperparameter is categorical, or where the best value is the end of its own domain."""
    if not _numeric(best):
        return None
    values = ladder(dim, extended)
    if len(values) < 2 or not all(_numeric(v) for v in values):
        return None  # one point is a fixed value, not a range; strings and booleans have no outside
    if best > values[-2]:
        side, edge, inner = "high", values[-1], values[-2]
    elif best < values[1]:
        side, edge, inner = "low", values[0], values[1]
    else:
        return None
    if _at_domain_end(key, edge, side):
        return None
    outward = _step(key, edge, inner, side)
    if outward is None or not _within_bounds(key, outward, max(grid_points(dim), key=_order)):
        return Edge(key, side, None, BOUND)
    if steps_left <= 0:
        return Edge(key, side, None, BUDGET)
    return Edge(key, side, outward, None)


def _order(value: Any) -> tuple:
    return (0, float(value), "") if _numeric(value) else (1, 0.0, str(value))


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _unit_interval(key: str) -> bool:
    """Averaging coefficients (betas, momenta) live in [0, 1); their scale is 1 - value."""
    name = key.rsplit(".", 1)[-1]
    return name.startswith("beta") or name == "momentum"


def _at_domain_end(key: str, edge: float, side: str) -> bool:
    return side == "low" and edge == 0 and not _unit_interval(key)


def _step(key: str, edge: float, inner: float, side: str) -> float | None:
    """One step beyond `edge`, the size of the step from `inner` to it."""
    if _unit_interval(key):
        if not 0 <= inner < 1 or not 0 <= edge < 1 or edge == inner:
            return None
        ratio = (1 - edge) / (1 - inner)
        return 1 - _round((1 - edge) * ratio, 1 - edge)  # rounded in 1 - value: 0.9975 stays 0.9975
    if edge > 0 and inner > 0:
        value = edge * (edge / inner)
    else:
        value = edge + (edge - inner)
    if isinstance(edge, int) and isinstance(inner, int):
        value = int(round(value))
        if value == edge:
            value = edge + (1 if side == "high" else -1)
        return value
    return _round(value, edge)


def _round(value: float, like: float) -> float:
    """Three significant figures, as the grids are written (3.16e-3), or more where needed to stay distinct."""
    for digits in (3, 4, 6, 9):
        rounded = float(f"{value:.{digits}g}")
        if rounded != like:
            return rounded
    return value


def _within_bounds(key: str, value: float, top: float) -> bool:
    if _unit_interval(key):
        return 0 <= value < 1
    if key.rsplit(".", 1)[-1] == "lr":
        return 0 < value <= max(LR_CEILING, top)
    return True
