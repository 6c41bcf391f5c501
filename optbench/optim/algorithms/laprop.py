"""LaProp (Ziyin, Wang & Ueda, 2020, "LaProp: Separating Momentum and Adaptivity in Adam",
arXiv:2002.04839, Algorithm 1).

Adam with the order of momentum and normalisation swapped: the momentum accumulates gradients already
divided by the second moment, so the two betas no longer interact (any beta1 < 1 with any beta2 is stable):

    v = beta2 v + (1 - beta2) g^2
    m = beta1 m + (1 - beta1) lr g / (sqrt(v / (1 - beta2^t)) + eps)
    p <- p - m / c1,   c1 = EMA_beta1 of lr over the steps so far / lr   (1 - beta1^t for a constant lr)
    p <- p (1 - lr wd)

The learning rate enters the momentum, and the bias correction c1 is an EMA of the learning rates seen
(the authors' `exp_avg_lr_1`), so a schedule changes the step gradually rather than rescaling past momentum.

Source: optbench (foreach). Reference: pytorch-optimizer==4.1.0 `LaProp` (defaults lr 4e-4, betas
(0.9, 0.999), eps 1e-15, no weight decay: the authors' Z-T-WANG/LaProp-Optimizer laprop.py defaults),
matched step by step in the tests. Weight decay is pytorch-optimizer's (decoupled, scaled by lr, applied
after the step); the authors' code subtracts wd p unscaled by lr. Where the two references differ in the
denominator, this file follows the paper and the authors' code, sqrt(v / (1 - beta2^t)) + eps;
pytorch-optimizer computes (sqrt(v + 1e-15) + eps) / sqrt(1 - beta2^t), whose 1e-15 under the root is a
floor of about 3e-8 on the denominator (larger than the default eps), so the two agree wherever g^2 is far
above 1e-15 and not on coordinates whose gradient is rounding noise (see the tests). The centered and
AMSGrad variants of the authors' code are not offered.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from optbench.config.schema import OptimConfig
from optbench.errors import check, check_unit_interval
from optbench.optim.functional.closure import evaluate_closure
from optbench.optim.functional.moments import (adam_denominator, bias_correction, decay_, ema_sq_, pick,
                                               step_buckets, with_grads)
from optbench.optim.registry import Capabilities, OptimizerSpec, register
from optbench.optim.search_space import Choice, LogUniform


@dataclass
class LaPropConfig(OptimConfig):
    name: str = "laprop"
    lr: float = 4e-4
    weight_decay: float = 0.0
    """Decoupled: p <- p (1 - lr wd), after the step."""
    beta1: float = 0.9
    """Momentum of the normalised gradient; independent of beta2 (no beta1 <= sqrt(beta2) constraint)."""
    beta2: float = 0.999
    eps: float = 1e-15

    def __post_init__(self) -> None:
        super().__post_init__()
        check_unit_interval("optim", beta1=self.beta1, beta2=self.beta2)
        check(self.eps > 0.0, f"optim.eps={self.eps} must be positive")


def lr_average(avg: float, lr: float, beta: float) -> float:
    """One step of the EMA of learning rates: beta avg + (1 - beta) lr."""
    return avg * beta + (1.0 - beta) * lr


def momentum_of_normalized_(exp_avgs: list[Tensor], grads: list[Tensor], denom: list[Tensor], lr: float,
                            beta1: float) -> None:
    """m <- beta1 m + (1 - beta1) lr g / denom, in place."""
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_addcdiv_(exp_avgs, grads, denom, value=(1.0 - beta1) * lr)


class LaProp(torch.optim.Optimizer):
    """LaProp over param groups with keys lr, beta1, beta2, eps, weight_decay. State per parameter: step
    (int), exp_avg, exp_avg_sq, exp_avg_lr_1 (float: the EMA of learning rates behind the bias correction)."""

    def __init__(self, params, lr: float = 4e-4, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-15,
                 weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay))

    @staticmethod
    def _init(p: Tensor) -> dict:
        return {"step": 0, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p), "exp_avg_lr_1": 0.0}

    @torch.no_grad()
    def step(self, closure=None):
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            params, grads, states = with_grads(group, self.state, self._init)
            lr, beta1, beta2 = group["lr"], group["beta1"], group["beta2"]
            for s in states:
                s["exp_avg_lr_1"] = lr_average(s["exp_avg_lr_1"], lr, beta1)
            for step, idx in step_buckets(states).items():
                t = step + 1
                p, g = pick(params, idx), pick(grads, idx)
                m = [states[i]["exp_avg"] for i in idx]
                v = [states[i]["exp_avg_sq"] for i in idx]
                ema_sq_(v, g, beta2)
                momentum_of_normalized_(m, g, adam_denominator(v, group["eps"], bias_correction(beta2, t)), lr, beta1)
                # p - m / c1 with c1 = exp_avg_lr_1 / lr, per tensor (each has its own EMA of lr)
                scales = [-1.0 / (states[i]["exp_avg_lr_1"] / lr) if lr != 0.0 else -1.0 for i in idx]
                torch._foreach_add_(p, torch._foreach_mul(m, scales))
                decay_(p, lr, group["weight_decay"])
            for s in states:
                s["step"] += 1
        return loss


def build_laprop(groups, cfg: LaPropConfig) -> torch.optim.Optimizer:
    return LaProp(groups, lr=cfg.lr, beta1=cfg.beta1, beta2=cfg.beta2, eps=cfg.eps, weight_decay=cfg.weight_decay)


register(OptimizerSpec(
    name="laprop", config_cls=LaPropConfig, build=build_laprop, source="optbench",
    reference="Ziyin, Wang & Ueda 2020 (arXiv:2002.04839); pytorch-optimizer==4.1.0 LaProp "
              "(Z-T-WANG/LaProp-Optimizer laprop.py for the denominator)",
    search_space={"lr": LogUniform(1e-4, 1e-2), "beta1": Choice((0.8, 0.9, 0.95)),
                  "beta2": Choice((0.95, 0.99, 0.999)), "weight_decay": Choice((0.0, 0.01, 0.1))},
    capabilities=Capabilities(fsdp="shards"),
))
