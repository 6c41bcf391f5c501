"""Steps to solve each synthetic problem, at the best lr of a small sweep over the optimizer's own grid.

The lr rule: the config's lr first, then every point of the optimizer's search-space grid for lr
(`grid_points(search_space["lr"])`), largest first; the fewest steps to the target wins. Each grid is the one the
benchmark tunes over, so sign-based, adaptive and lr-as-multiplier methods are each tried at the scale they work
at. Once an lr has reached the target, the others run only up to that many steps, since they can no longer win,
and a run whose objective leaves the problem (not finite, or 1000x where it started) is stopped.

The optimizer is built over a one-parameter model through the build plan, like any model, with its config as
given but the lr; where the plan gives that parameter to a matrix optimizer's backup (Rosenbrock's vector), the
backup's lr is swept over the backup's grid instead, and the note says so. Sophia's Hessian pass needs an output
distribution these problems do not have: it runs without one, so its Hessian estimate stays 0 and each of its
clipped steps is lr * sign(momentum).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from optbench import optim
from optbench.check.loop import Task, start, steps
from optbench.check.problems import Problem
from optbench.check.result import Outcome, failed, passed
from optbench.check.subject import Subject
from optbench.optim.search_space import SearchSpace, grid_points

DIVERGED = 1e3
"""A run whose objective exceeds this multiple of its start has left the problem."""


class Point(nn.Module):
    """A problem's variable as a model's one parameter."""

    def __init__(self, start: torch.Tensor):
        super().__init__()
        self.x = nn.Parameter(start.clone())


@dataclass(frozen=True)
class Sweep:
    taker: str
    """'' when the optimizer takes the problem itself, else 'backup NAME'."""
    lrs: list[float]
    changes: list[dict[str, Any]]
    """Per lr, the config change that sets it."""


def sweep(subject: Subject, problem: Problem) -> Sweep:
    cfg = subject.cfg
    if all(entry.part == "backup" for entry in optim.plan(cfg, Point(problem.start))):
        lrs = lr_candidates(cfg.backup.lr, optim.get(cfg.backup.name).search_space)
        return Sweep(f"backup {cfg.backup.name}", lrs,
                     [{"backup": dataclasses.replace(cfg.backup, lr=lr)} for lr in lrs])
    lrs = lr_candidates(cfg.lr, subject.search_space)
    return Sweep("", lrs, [{"lr": lr} for lr in lrs])


def lr_candidates(configured: float, space: SearchSpace) -> list[float]:
    """The configured lr, then the grid's other points from the largest down (a large lr that works sets a low
    step cap for the rest early; one that diverges is stopped early)."""
    grid = grid_points(space["lr"]) if "lr" in space else ()
    return [configured, *sorted(set(grid) - {configured}, reverse=True)]


def steps_to_target(subject: Subject, problem: Problem, changes: dict[str, Any], cap: int) -> tuple[int | None, float]:
    """(steps until the objective reached its target, None if not within `cap`; the lowest objective seen as a
    fraction of the start). The objective is read where the optimizer evaluates (Schedule-Free's average)."""
    model = Point(problem.start)
    run = start(subject, model, problem.budget, **changes)
    initial = problem.objective(problem.start).item()
    task = Task(lambda m, step: problem.loss(m.x, step))
    lowest = math.inf
    for step, _ in enumerate(steps(run, task, range(cap)), start=1):
        with run.hooks.eval_mode(), torch.no_grad():
            value = problem.objective(model.x).item()
        lowest = min(lowest, value / initial)
        if value <= problem.target * initial:
            return step, lowest
        if not math.isfinite(value) or value > DIVERGED * initial:
            break
    return None, lowest


def solve(subject: Subject, problem: Problem) -> Outcome:
    plan = sweep(subject, problem)
    best: tuple[int, float] | None = None
    lowest = math.inf
    for lr, changes in zip(plan.lrs, plan.changes):
        reached, low = steps_to_target(subject, problem, changes, best[0] - 1 if best else problem.budget)
        lowest = min(lowest, low)
        if reached is not None:
            best = (reached, lr)
    tried = (f"best of {len(plan.lrs)} lrs in [{min(plan.lrs):.3g}, {max(plan.lrs):.3g}]"
             + (f" for its {plan.taker}" if plan.taker else ""))
    measured = {"budget": problem.budget, "target": problem.target, "lrs": plan.lrs, "taken_by": plan.taker or None}
    if best is None:
        return failed(f"not within {problem.budget} steps", f"lowest objective {lowest:.2g} of its start, target "
                      f"{problem.target:g}; {tried}", steps=None, lr=None, lowest=lowest, **measured)
    return passed(f"{best[0]} steps at lr {best[1]:.3g}", f"budget {problem.budget}; {tried}", steps=best[0],
                  lr=best[1], **measured)
