"""Default tuning ranges: each optimizer declares one distribution per hyperparameter it tunes.

Plain data, read by the sweep layer (which maps them onto Optuna distributions or a grid).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union


@dataclass(frozen=True)
class LogUniform:
    """A positive value spread evenly in log space (learning rates, epsilons)."""

    low: float
    high: float
    grid: tuple[float, ...] = ()
    """Points a grid search visits; empty: every half decade from low to high (`grid_points`)."""


@dataclass(frozen=True)
class Uniform:
    low: float
    high: float
    grid: tuple[float, ...] = ()


@dataclass(frozen=True)
class Choice:
    """One of a few discrete values (betas from a short list, booleans, integers)."""

    values: tuple[Any, ...]


Dimension = Union[LogUniform, Uniform, Choice]
SearchSpace = dict[str, Dimension]


def grid_points(dim: Dimension) -> tuple[Any, ...]:
    """The values a grid search tries: explicit points, or for a log range each half decade in it."""
    if isinstance(dim, Choice):
        return dim.values
    if dim.grid:
        return dim.grid
    if isinstance(dim, LogUniform):
        points, value = [], dim.low
        while value <= dim.high * (1 + 1e-9):
            points.append(min(max(float(f"{value:.3g}"), dim.low), dim.high))  # rounded, never out of range
            value *= 10 ** 0.5
        return tuple(points)
    step = (dim.high - dim.low) / 4
    return tuple(dim.low + i * step for i in range(5))


def around_lr(lr: float) -> LogUniform:
    """A decade either side of a default lr, gridded every half decade: the range of an optimizer that declares no
    search space of its own (a plugin's), centred where its author put the default."""
    grid = tuple(float(f"{lr * 10 ** (k / 2):.3g}") for k in range(-2, 3))
    return LogUniform(grid[0], grid[-1], grid)
