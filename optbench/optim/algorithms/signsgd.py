"""signSGD and Signum (Bernstein, Wang, Azizzadenesheli & Anandkumar, 2018, "signSGD: Compressed
Optimisation for Non-Convex Problems", arXiv:1802.04434, Algorithms 1 and 3).

    signsgd   p <- p (1 - lr wd) - lr sign(g)
    signum    m <- beta m + (1 - beta) g;   p <- p (1 - lr wd) - lr sign(m)

Source: optbench (foreach), one optimizer class for both (momentum 0 is signSGD). Reference:
pytorch-optimizer==4.1.0 `SignSGD`, whose momentum is the paper's EMA (`m.lerp_(g, 1 - momentum)`, not
SGD's `m = mu m + g`; the same up to a constant factor, which the sign discards anyway) and whose default
weight decay is decoupled, p <- p (1 - lr wd), as here; the tests match it step by step.

Deviation: the paper does not specify weight decay; it is decoupled here (MXNet's Signum `wd_lh`, AdamW's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from optbench.config.schema import OptimConfig
from optbench.errors import check_unit_interval
from optbench.optim.functional.closure import evaluate_closure
from optbench.optim.functional.moments import ema_, with_grads
from optbench.optim.functional.sign import sign_step_, signs
from optbench.optim.registry import Capabilities, OptimizerSpec, register
from optbench.optim.search_space import Choice, LogUniform


@dataclass
class SignSGDConfig(OptimConfig):
    name: str = "signsgd"
    lr: float = 1e-3
    """Every coordinate moves by exactly lr per step; no momentum averages the noise away, so the
    unaveraged sign needs the usual Adam-scale lr rather than Lion's smaller one."""
    weight_decay: float = 0.0
    """Decoupled: p <- p (1 - lr wd)."""


@dataclass
class SignumConfig(OptimConfig):
    name: str = "signum"
    lr: float = 3e-4
    """Between Lion's 1e-4 and signSGD's 1e-3; the range LM runs of Signum use (2e-4 to 5e-4)."""
    weight_decay: float = 0.0
    """Decoupled: p <- p (1 - lr wd)."""
    momentum: float = 0.9
    """EMA coefficient beta of m = beta m + (1 - beta) g (the paper's Signum)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_unit_interval("optim", momentum=self.momentum)


class Signum(torch.optim.Optimizer):
    """signSGD (momentum 0) or Signum over param groups with keys lr, momentum, weight_decay;
    state: momentum_buffer per parameter when momentum > 0."""

    def __init__(self, params, lr: float = 3e-4, momentum: float = 0.9, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            momentum = group["momentum"]
            init = (lambda p: {"momentum_buffer": torch.zeros_like(p)}) if momentum > 0 else (lambda p: {})
            params, grads, states = with_grads(group, self.state, init)
            if not params:
                continue
            if momentum > 0:
                buffers = [s["momentum_buffer"] for s in states]
                ema_(buffers, grads, momentum)
                grads = buffers
            sign_step_(params, signs(grads), group["lr"], group["weight_decay"])
        return loss


def build_signsgd(groups, cfg: SignSGDConfig) -> torch.optim.Optimizer:
    return Signum(groups, lr=cfg.lr, momentum=0.0, weight_decay=cfg.weight_decay)


def build_signum(groups, cfg: SignumConfig) -> torch.optim.Optimizer:
    return Signum(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


_REFERENCE = "Bernstein et al. 2018 (arXiv:1802.04434); pytorch-optimizer==4.1.0 SignSGD"

register(OptimizerSpec(
    name="signsgd", config_cls=SignSGDConfig, build=build_signsgd, source="optbench",
    reference=f"{_REFERENCE} (momentum=0)",
    search_space={"lr": LogUniform(1e-5, 1e-2), "weight_decay": Choice((0.0, 0.1, 1.0))},
    capabilities=Capabilities(fsdp="shards"),
))

register(OptimizerSpec(
    name="signum", config_cls=SignumConfig, build=build_signum, source="optbench",
    reference=f"{_REFERENCE} (momentum=0.9, the paper's EMA)",
    search_space={"lr": LogUniform(1e-5, 1e-2), "momentum": Choice((0.9, 0.95, 0.99)),
                  "weight_decay": Choice((0.0, 0.1, 1.0))},
    capabilities=Capabilities(fsdp="shards"),
))
