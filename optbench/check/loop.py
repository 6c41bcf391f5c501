"""The trainer's step in miniature, for every check: backward, the optimizer's hooks (loss feed, horizon, Sophia's
Hessian pass), step, zero the gradients; and the bitwise comparison of parameters the checks share."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from optbench.check.subject import Subject
from optbench.training.optimizer_hooks import OptimizerHooks


@dataclass(frozen=True)
class Task:
    """What a model is trained on: the loss at each step and, for Sophia's Hessian pass, the logits."""

    loss: Callable[[nn.Module, int], torch.Tensor]
    logits: Callable[[nn.Module, int], torch.Tensor] | None = None
    """None where the model has no output distribution (the synthetic problems): no Hessian pass is made."""


@dataclass(frozen=True)
class Run:
    """A model, the optimizer over it and the hooks its capabilities ask for."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    hooks: OptimizerHooks


SEED = 0
"""torch's global stream is seeded before each run, as the trainer seeds it (train.seed), for optimizers that draw
from it (random projections, noise); callers keep theirs through runner.run_check's isolated_rng."""


def start(subject: Subject, model: nn.Module, horizon: int, state: dict | None = None, **changes) -> Run:
    """Seed torch's stream, build the optimizer over `model`, load `state` (a resume), and tell it the run's
    length, in the trainer's order."""
    torch.manual_seed(SEED)
    optimizer = subject.build(model, **changes)
    if state is not None:
        optimizer.load_state_dict(state)
    hooks = OptimizerHooks(optimizer, subject.capabilities)
    hooks.before_training(horizon)
    return Run(model, optimizer, hooks)


def steps(run: Run, task: Task, numbers: range, after_backward: Callable[[int], None] | None = None) -> Iterator[float]:
    """Take the steps `numbers` (0-based), yielding each one's training loss; `after_backward(step)` may change the
    gradients before the update (the untouched-parameters check removes some)."""
    for step in numbers:
        loss = task.loss(run.model, step)
        loss.backward()
        if after_backward is not None:
            after_backward(step)
        run.hooks.before_step(loss.item())
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        if task.logits is not None and run.hooks.wants_hessian(step + 1):
            generator = torch.Generator().manual_seed(step)
            run.hooks.hessian_pass(lambda: task.logits(run.model, step), generator)
        yield loss.item()


def train(run: Run, task: Task, numbers: range, after_backward: Callable[[int], None] | None = None) -> list[float]:
    return list(steps(run, task, numbers, after_backward))


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter's value, copied."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def differing(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> list[str]:
    """Names whose tensors are not bitwise equal (dtype included)."""
    return [name for name, value in before.items()
            if value.dtype != after[name].dtype or not torch.equal(value, after[name])]
