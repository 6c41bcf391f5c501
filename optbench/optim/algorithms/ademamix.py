"""AdEMAMix (Pagliardini, Ablin & Grangier, 2024, "The AdEMAMix Optimizer: Better, Faster, Older",
arXiv:2409.03033, Algorithm 1).

AdamW with a second, slow EMA of the gradient (beta3 ~ 0.9999, not bias-corrected) added to the fast one:

    m1 = beta1 m1 + (1 - beta1) g;   m2 = beta3(t) m2 + (1 - beta3(t)) g;   v = beta2 v + (1 - beta2) g^2
    p <- p (1 - lr wd) - lr (m1 / (1 - beta1^t) + alpha(t) m2) / (sqrt(v / (1 - beta2^t)) + eps)

with the paper's warmups (Section 3), needed because a slow EMA started at zero is dominated by stale
early gradients:

    alpha(t) = min(t alpha / T_alpha, alpha)
    beta3(t) = min(exp(ln(beta1) ln(beta3) / ((1 - t/T_b3) ln(beta3) + (t/T_b3) ln(beta1))), beta3)

i.e. beta3's half-life grows linearly from beta1's to beta3's. Source: optbench (foreach). Reference:
pytorch-optimizer==4.1.0 `AdEMAMix`, which implements these two formulas exactly (with one T for both
warmups, `t_alpha_beta3`; decoupled decay needs weight_decouple=True, its default being L2); the tests
match it step by step. The authors' code (apple/ml-ademamix, pytorch/ademamix.py) computes the same
beta3(t) as f^-1((1-a) f(beta1) + a f(beta3)) with f(b) = ln(0.5)/ln(b + 1e-8) - 1, whose 1e-8 moves
beta3(t) by about 1e-8; this file follows the paper's formula, without that epsilon.

Warmup lengths: the authors' code defaults to none; the paper's language-model runs set
T_alpha = T_beta3 = the run's length, and so does the EPFL benchmark. Here `alpha_warmup` and
`beta3_warmup` default to None, meaning the run's length, which the trainer passes through `set_horizon`
(capability needs_horizon) and which is kept in the param groups so a resumed run keeps it; 0 means no
warmup. Built outside the trainer with no horizon set, None means no warmup.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from optbench.config.schema import OptimConfig
from optbench.errors import check, check_unit_interval
from optbench.optim.functional.closure import evaluate_closure
from optbench.optim.functional.moments import (adam_denominator, bias_correction, decay_, ema_, ema_sq_, pick,
                                               step_buckets, with_grads)
from optbench.optim.registry import Capabilities, OptimizerSpec, register
from optbench.optim.search_space import Choice, LogUniform


@dataclass
class AdEMAMixConfig(OptimConfig):
    name: str = "ademamix"
    lr: float = 1e-3
    weight_decay: float = 0.0
    """Decoupled: p <- p (1 - lr wd) (the paper's AdamW-style lambda)."""
    beta1: float = 0.9
    beta2: float = 0.999
    beta3: float = 0.9999
    """Decay of the slow EMA m2 (half-life ~6900 steps)."""
    alpha: float = 5.0
    """Weight of the slow EMA in the numerator (the paper uses 4 to 10; the authors' code defaults to 2)."""
    eps: float = 1e-8
    alpha_warmup: int | None = None
    """Steps of linear warmup of alpha from 0; None: the run's length (the paper's choice), 0: none."""
    beta3_warmup: int | None = None
    """Steps over which beta3's half-life grows from beta1's; None: the run's length, 0: none."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_unit_interval("optim", beta1=self.beta1, beta2=self.beta2, beta3=self.beta3)
        check(self.alpha >= 0.0, f"optim.alpha={self.alpha} must be non-negative")
        check(self.eps > 0.0, f"optim.eps={self.eps} must be positive")
        for key in ("alpha_warmup", "beta3_warmup"):
            value = getattr(self, key)
            check(value is None or value >= 0, f"optim.{key}={value} must be >= 0 (or null: the run's length)")


def alpha_schedule(step: int, alpha: float, warmup: int) -> float:
    """alpha(t) = min(t alpha / T, alpha); T = 0: alpha throughout."""
    return alpha if warmup <= 0 else min(step * alpha / warmup, alpha)


def beta3_schedule(step: int, beta_start: float, beta3: float, warmup: int) -> float:
    """beta3(t): the half-life 1/ln(beta) interpolated linearly from beta_start's (beta1) to beta3's over T
    steps, then beta3; T = 0: beta3 throughout."""
    if warmup <= 0 or step >= warmup or beta3 == 0.0:
        return beta3
    a = step / warmup
    if beta_start == 0.0:  # 1/ln(0) = 0: the half-life grows from 0, ln(beta3(t)) = ln(beta3) / a
        return math.exp(math.log(beta3) / a)
    log_start, log_end = math.log(beta_start), math.log(beta3)
    return min(math.exp(log_start * log_end / ((1.0 - a) * log_end + a * log_start)), beta3)


def mixed_update(exp_avgs: list[Tensor], exp_avgs_slow: list[Tensor], alpha: float,
                 correction1: float) -> list[Tensor]:
    """m1 / c1 + alpha m2 as new tensors: the fast, bias-corrected EMA plus the weighted slow one."""
    updates = torch._foreach_div(exp_avgs, correction1)
    torch._foreach_add_(updates, exp_avgs_slow, alpha=alpha)
    return updates


class AdEMAMix(torch.optim.Optimizer):
    """AdEMAMix over param groups with keys lr, beta1, beta2, beta3, alpha, eps, weight_decay, alpha_warmup,
    beta3_warmup (None: `horizon`) and horizon (set by `set_horizon`, 0 until then); state per parameter:
    step (int), exp_avg, exp_avg_sq, exp_avg_slow."""

    def __init__(self, params, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, beta3: float = 0.9999,
                 alpha: float = 5.0, eps: float = 1e-8, weight_decay: float = 0.0, alpha_warmup: int | None = None,
                 beta3_warmup: int | None = None):
        super().__init__(params, dict(lr=lr, beta1=beta1, beta2=beta2, beta3=beta3, alpha=alpha, eps=eps,
                                      weight_decay=weight_decay, alpha_warmup=alpha_warmup,
                                      beta3_warmup=beta3_warmup, horizon=0))

    def set_horizon(self, total_steps: int) -> None:
        """The run's length: the warmup of alpha and beta3 where their lengths are None."""
        for group in self.param_groups:
            group["horizon"] = int(total_steps)

    @staticmethod
    def _warmup(group: dict, key: str) -> int:
        return group["horizon"] if group[key] is None else group[key]

    @staticmethod
    def _init(p: Tensor) -> dict:
        return {"step": 0, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p),
                "exp_avg_slow": torch.zeros_like(p)}

    @torch.no_grad()
    def step(self, closure=None):
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            params, grads, states = with_grads(group, self.state, self._init)
            beta1, beta2 = group["beta1"], group["beta2"]
            for step, idx in step_buckets(states).items():
                t = step + 1
                alpha = alpha_schedule(t, group["alpha"], self._warmup(group, "alpha_warmup"))
                beta3 = beta3_schedule(t, beta1, group["beta3"], self._warmup(group, "beta3_warmup"))
                p, g = pick(params, idx), pick(grads, idx)
                m1 = [states[i]["exp_avg"] for i in idx]
                v = [states[i]["exp_avg_sq"] for i in idx]
                m2 = [states[i]["exp_avg_slow"] for i in idx]
                decay_(p, group["lr"], group["weight_decay"])
                ema_(m1, g, beta1)
                ema_sq_(v, g, beta2)
                ema_(m2, g, beta3)
                denom = adam_denominator(v, group["eps"], bias_correction(beta2, t))
                torch._foreach_addcdiv_(p, mixed_update(m1, m2, alpha, bias_correction(beta1, t)), denom,
                                        value=-group["lr"])
            for s in states:
                s["step"] += 1
        return loss


def build_ademamix(groups, cfg: AdEMAMixConfig) -> torch.optim.Optimizer:
    return AdEMAMix(groups, lr=cfg.lr, beta1=cfg.beta1, beta2=cfg.beta2, beta3=cfg.beta3, alpha=cfg.alpha,
                    eps=cfg.eps, weight_decay=cfg.weight_decay, alpha_warmup=cfg.alpha_warmup,
                    beta3_warmup=cfg.beta3_warmup)


register(OptimizerSpec(
    name="ademamix", config_cls=AdEMAMixConfig, build=build_ademamix, source="optbench",
    reference="Pagliardini, Ablin & Grangier 2024 (arXiv:2409.03033); pytorch-optimizer==4.1.0 AdEMAMix "
              "(apple/ml-ademamix warmup formulas)",
    search_space={"lr": LogUniform(1e-4, 1e-2), "beta3": Choice((0.999, 0.9999, 0.99995)),
                  "alpha": Choice((2.0, 5.0, 8.0, 10.0)), "weight_decay": Choice((0.0, 0.01, 0.1))},
    capabilities=Capabilities(fsdp="shards", needs_horizon=True),
))
