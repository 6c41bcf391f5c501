"""Synthetic problems with a known minimum, in the spirit of HeavyBall's LightBench and optax's optimizer tests:
each is a starting point, the loss the optimizer sees at each step, the objective whose value decides success, a
target fraction of the starting objective, and a step budget.

Scales are an LM's, so that the optimizers' own lr grids (tuned for LM weights) fit: entries start at 0.02, the
init std of optbench's models, and the curvatures (0.1 to 10 for the quadratics, up to about 100 in Rosenbrock's
valley) leave SGD's grid [1e-3, 1] stable lrs. The quadratics are matrices, so a matrix-only optimizer (Muon)
takes them itself; Rosenbrock is a 2-vector, which such an optimizer hands to its backup like any other vector.

Targets and budgets are set so that the reference optimizers (AdamW, SGD with momentum, Lion, Muon, SOAP) meet
each with room to spare at the lr rule of convergence.py, and so does every built-in optimizer at its defaults
but one: LAMB on Rosenbrock, whose steps are a fraction of the norm of a point this small (its grid tops out at
1e-2; lr 0.1 would do). Failing one is a failure like any other check's, but it says that no lr of the
optimizer's own grid solves in time a problem every reference optimizer solves: speed or grid, rather than a bug.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class Problem:
    name: str
    start: Tensor
    """Where every run starts; its shape decides the role (2-D: matrix, 1-D: vector)."""
    loss: Callable[[Tensor, int], Tensor]
    """(point, step) -> what the optimizer backpropagates: the objective, or a noisy draw of it."""
    objective: Callable[[Tensor], Tensor]
    target: float
    """Success: objective <= target * objective(start)."""
    budget: int
    """Steps allowed to reach the target."""


ROWS, COLS = 8, 16
INIT_STD = 0.02
CURVATURE = 10.0
CONDITION = 100.0
"""Curvatures from CURVATURE / CONDITION to CURVATURE: a_i b_j over rows and columns each log-spaced over a
decade, so the curvature is Kronecker-factored as Shampoo and SOAP assume, and axis-aligned as Adam does."""
ROSENBROCK_SCALE, ROSENBROCK_B = 10.0, 10.0


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _curvature() -> Tensor:
    span = math.log10(CONDITION) / 2  # decades each factor spans
    return CURVATURE * torch.logspace(0, -span, ROWS)[:, None] * torch.logspace(0, -span, COLS)[None, :]


def _matrix_start() -> Tensor:
    return torch.randn(ROWS, COLS, generator=_generator(0)) * INIT_STD


def _quadratic_form(curvature: Tensor) -> Callable[[Tensor], Tensor]:
    return lambda w: 0.5 * (curvature * w.square()).sum()


def quadratic() -> Problem:
    """1/2 sum c_ij w_ij^2 over a matrix: an ill-conditioned bowl (see CONDITION)."""
    objective = _quadratic_form(_curvature())
    return Problem("quadratic", _matrix_start(), lambda w, step: objective(w), objective, 1e-2, 300)


def noisy_quadratic() -> Problem:
    """The quadratic seen through noise as large as its signal at the start: step t's loss has its minimum at a
    random point xi_t ~ N(0, INIT_STD^2) (a minibatch's), whose mean is the true minimum 0."""
    form = _quadratic_form(_curvature())

    def loss(w: Tensor, step: int) -> Tensor:
        return form(w - torch.randn(ROWS, COLS, generator=_generator(10_000 + step)) * INIT_STD)

    return Problem("noisy-quadratic", _matrix_start(), loss, form, 1e-1, 300)


def rosenbrock() -> Problem:
    """Rosenbrock's valley (1 - x)^2 + b (y - x^2)^2 from (-1.2, 1), in coordinates shrunk 10x (p = (x, y) / 10, so
    the path is an LM-sized 0.3 long) and scaled 1/100 (so the curvature stays the valley's own). b = 10 rather
    than 100: in the classic valley SGD's stable lr crawls along the floor for thousands of steps."""
    s, b = ROSENBROCK_SCALE, ROSENBROCK_B

    def objective(p: Tensor) -> Tensor:
        x, y = p[0] * s, p[1] * s
        return ((1 - x).square() + b * (y - x.square()).square()) / s ** 2

    return Problem("rosenbrock", torch.tensor([-1.2, 1.0]) / s, lambda p, step: objective(p), objective, 2e-2, 500)


@functools.cache
def problems() -> tuple[Problem, ...]:
    return quadratic(), rosenbrock(), noisy_quadratic()
