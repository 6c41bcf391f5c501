"""Schedule-Free AdamW and SGD (Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, 2024, "The Road Less
Scheduled", arXiv 2405.15682).

Source: the authors' package schedulefree==1.4.1 (facebookresearch/schedule_free, Apache-2.0),
`schedulefree.AdamWScheduleFree` and `schedulefree.SGDScheduleFree` (the foreach versions), built on our
param groups. The update keeps two sequences per parameter: z (the base optimizer's iterate, in the
optimizer state) and the average x of the z's; the model holds y = (1 - beta) z + beta x, where gradients
are taken. `optimizer.eval()` moves the model to x (where it is evaluated and sampled), `train()` back to y.

Deliberate deviation: the package's `train()` recomputes y from x and z by interpolation, which is not
exact in floating point. Here `eval()` keeps a copy of y (one transient copy of the weights, freed by
`train()`) so that the round trip restores the training point bit for bit: evaluating or saving a
checkpoint (which the trainer does at x for sampling) never perturbs training, and resume stays exact.

Schedules: Schedule-Free replaces the decaying schedule, so run it with `schedule=constant`. The package
reads `group["lr"]` at every step, scales it by its own warmup and weights the average by
lr_max ** weight_lr_power; the trainer's schedule rewrites `group["lr"]` before every step. So warm up
EITHER with the trainer (`schedule.warmup_steps=N`, the default `optim.warmup_steps=0`): the package then
sees the warming-up lr and weights the average exactly as its own warmup would; OR with the package
(`optim.warmup_steps=N` and `schedule.warmup_steps=0`). Setting both multiplies the two ramps. A decaying
schedule (cosine, ...) still runs, but shrinks y's steps under a uniformly weighted average: not the
method of the paper. Checkpoints are written in train mode (y and z, the state to resume from); the
trainer stores the eval-mode weights x beside them for sampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import version

import schedulefree
import torch

from optbench.config.schema import OptimConfig
from optbench.errors import check, check_unit_interval
from optbench.optim.registry import Capabilities, OptimizerSpec, register
from optbench.optim.search_space import Choice, LogUniform

SOURCE = f"schedulefree=={version('schedulefree')}"


def _check_schedule_free(cfg) -> None:
    """Constraints shared by both variants."""
    check(cfg.warmup_steps >= 0, f"optim.warmup_steps={cfg.warmup_steps} must be >= 0")
    check(cfg.r >= 0.0, f"optim.r={cfg.r} must be >= 0")
    check(cfg.weight_lr_power >= 0.0, f"optim.weight_lr_power={cfg.weight_lr_power} must be >= 0")


@dataclass
class ScheduleFreeAdamWConfig(OptimConfig):
    name: str = "sf-adamw"
    lr: float = 0.0025
    """The package's default; the authors find 1x-10x the lr of a scheduled AdamW works."""
    weight_decay: float = 0.0
    """Computed at y and added to the Adam-normalised gradient (AdamW-style)."""
    beta1: float = 0.9
    """The interpolation/averaging constant (the momentum of Schedule-Free); 0.95-0.98 for long runs."""
    beta2: float = 0.999
    eps: float = 1e-8
    warmup_steps: int = 0
    """The package's own linear warmup; leave 0 when the trainer warms up (schedule.warmup_steps)."""
    r: float = 0.0
    """Polynomial weighting of the average: weight of step t is t**r * lr_max**weight_lr_power."""
    weight_lr_power: float = 2.0
    """During warmup, weight the average by lr_max to this power (0: uniform average)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0.0 < self.beta1 < 1.0, f"optim.beta1={self.beta1} must be in (0, 1)")
        check_unit_interval("optim", beta2=self.beta2)
        check(self.eps > 0.0, f"optim.eps={self.eps} must be positive")
        _check_schedule_free(self)


@dataclass
class ScheduleFreeSGDConfig(OptimConfig):
    name: str = "sf-sgd"
    lr: float = 1.0
    """The package's default; the authors find 10x-50x a classical SGD lr a good start."""
    weight_decay: float = 0.0
    """L2: added to the gradient at y."""
    momentum: float = 0.9
    """The interpolation/averaging constant beta of Schedule-Free."""
    warmup_steps: int = 0
    """The package's own linear warmup; leave 0 when the trainer warms up (schedule.warmup_steps)."""
    r: float = 0.0
    """Polynomial weighting of the average: weight of step t is t**r * lr_max**weight_lr_power."""
    weight_lr_power: float = 2.0
    """During warmup, weight the average by lr_max to this power (0: uniform average)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0.0 < self.momentum < 1.0, f"optim.momentum={self.momentum} must be in (0, 1)")
        _check_schedule_free(self)


class _ExactModes:
    """Mixin: `eval()` remembers the training point y, `train()` puts it back bit for bit."""

    def _init_modes(self) -> None:
        self._train_point: dict[torch.Tensor, torch.Tensor] = {}

    @torch.no_grad()
    def eval(self) -> None:
        for group in self.param_groups:
            if group["train_mode"]:
                for p in group["params"]:
                    if "z" in self.state[p]:
                        self._train_point[p] = p.detach().clone()
        super().eval()

    @torch.no_grad()
    def train(self) -> None:
        super().train()  # y from x and z by interpolation: exact up to rounding ...
        for p, y in self._train_point.items():
            p.copy_(y)  # ... so put back the y that eval() left
        self._train_point.clear()

    def load_state_dict(self, state_dict: dict) -> None:
        self._train_point.clear()
        super().load_state_dict(state_dict)


class AdamWScheduleFree(_ExactModes, schedulefree.AdamWScheduleFree):
    def __init__(self, params, **hparams):
        super().__init__(params, **hparams)
        self._init_modes()


class SGDScheduleFree(_ExactModes, schedulefree.SGDScheduleFree):
    def __init__(self, params, **hparams):
        super().__init__(params, **hparams)
        self._init_modes()


def build_sf_adamw(groups, cfg: ScheduleFreeAdamWConfig) -> torch.optim.Optimizer:
    optimizer = AdamWScheduleFree(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                  weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps, r=cfg.r,
                                  weight_lr_power=cfg.weight_lr_power)
    optimizer.train()  # the package refuses to step before train(); loading a state keeps its mode
    return optimizer


def build_sf_sgd(groups, cfg: ScheduleFreeSGDConfig) -> torch.optim.Optimizer:
    optimizer = SGDScheduleFree(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                warmup_steps=cfg.warmup_steps, r=cfg.r, weight_lr_power=cfg.weight_lr_power)
    optimizer.train()
    return optimizer


PAPER = "Defazio et al. 2024, The Road Less Scheduled (arXiv 2405.15682)"

register(OptimizerSpec(
    name="sf-adamw", config_cls=ScheduleFreeAdamWConfig, build=build_sf_adamw, source=SOURCE,
    reference=f"{PAPER}; {SOURCE} AdamWScheduleFree (facebookresearch/schedule_free)",
    search_space={"lr": LogUniform(3e-4, 3e-2), "beta1": Choice((0.9, 0.95, 0.98)),
                  "weight_decay": Choice((0.0, 0.01, 0.1))},
    capabilities=Capabilities(fsdp="shards", train_eval_modes=True),
))

register(OptimizerSpec(
    name="sf-sgd", config_cls=ScheduleFreeSGDConfig, build=build_sf_sgd, source=SOURCE,
    reference=f"{PAPER}; {SOURCE} SGDScheduleFree (facebookresearch/schedule_free)",
    search_space={"lr": LogUniform(0.01, 10.0), "momentum": Choice((0.9, 0.95, 0.98)),
                  "weight_decay": Choice((0.0, 1e-5, 1e-4))},
    capabilities=Capabilities(fsdp="shards", train_eval_modes=True),
))
