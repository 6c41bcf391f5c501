"""LAMB (You et al., 2020, "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes",
arXiv:1904.00962, Algorithm 2).

Adam's direction plus decoupled weight decay, rescaled per layer (per parameter tensor) so that its norm
is the norm of the weights:

    m_t = beta1 m + (1 - beta1) g;   v_t = beta2 v + (1 - beta2) g^2
    r_t = m_t / (1 - beta1^t) / (sqrt(v_t / (1 - beta2^t)) + eps) + wd p
    p  <- p - lr (||p|| / ||r_t||) r_t          (trust ratio 1 where ||p|| or ||r_t|| is 0)

Source: optbench (foreach). The scaling function phi of the paper is the identity (no clamp of ||p||), and
the trust ratio has no eps, as in NVIDIA apex FusedLAMB and timm's Lamb.

Reference: pytorch-optimizer==4.1.0 `Lamb` set to the paper's variant: weight_decouple=False (wd p inside
the trust-ratio-scaled update, not through the moments: its decoupled mode decays outside the trust
ratio), grad_averaging=True, rectify=False, adam=False, pre_norm=False. It cannot express the paper's bias
correction: it has none on v and divides the whole step, trust ratio included, by 1 - beta1^t (or nothing,
with adam_debias=True); it also clamps ||p|| at 10 and adds eps to ||r_t||. The tests therefore compare
`bias_correction=False` against it (adam_debias=True, clamp lifted) step by step, and the default
bias-corrected rule against the paper's equations written out per tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from optbench.config.schema import OptimConfig
from optbench.errors import check, check_unit_interval
from optbench.optim.functional.closure import evaluate_closure
from optbench.optim.functional.moments import (adam_denominator, bias_correction, ema_, ema_sq_, pick, step_buckets,
                                               with_grads)
from optbench.optim.registry import Capabilities, OptimizerSpec, register
from optbench.optim.search_space import Choice, LogUniform


@dataclass
class LambConfig(OptimConfig):
    name: str = "lamb"
    lr: float = 1e-3
    weight_decay: float = 0.01
    """Added to the Adam ratio before the trust ratio (the paper's r_t + lambda x_t)."""
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-6
    bias_correction: bool = True
    """Adam's bias correction of m and v (the paper's Algorithm 2); false: the raw EMAs (pytorch-optimizer's)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_unit_interval("optim", beta1=self.beta1, beta2=self.beta2)
        check(self.eps > 0.0, f"optim.eps={self.eps} must be positive")


def lamb_direction(params: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor], eps: float,
                   weight_decay: float, correction1: float, correction2: float) -> list[Tensor]:
    """r = m / c1 / (sqrt(v / c2) + eps) + wd p as new tensors (c1 = c2 = 1: no bias correction).

    Built inside the one buffer the denominator allocates: on CPU each fresh full-size tensor costs
    page faults comparable to an arithmetic pass.
    """
    updates = adam_denominator(exp_avg_sqs, eps, correction2)
    torch._foreach_reciprocal_(updates)
    torch._foreach_mul_(updates, exp_avgs)
    if correction1 != 1.0:
        torch._foreach_div_(updates, correction1)
    if weight_decay != 0.0:
        torch._foreach_add_(updates, params, alpha=weight_decay)
    return updates


def trust_ratios(params: list[Tensor], updates: list[Tensor]) -> Tensor:
    """||p|| / ||u|| per tensor (1 where either norm is 0), as one vector (no host sync)."""
    weight_norms = torch.stack(torch._foreach_norm(params))
    update_norms = torch.stack(torch._foreach_norm(updates))
    usable = (weight_norms > 0) & (update_norms > 0)
    return torch.where(usable, weight_norms / torch.where(usable, update_norms, 1.0), 1.0)


class Lamb(torch.optim.Optimizer):
    """LAMB over param groups with keys lr, beta1, beta2, eps, weight_decay, bias_correction;
    state per parameter: step (int), exp_avg, exp_avg_sq."""

    def __init__(self, params, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-6,
                 weight_decay: float = 0.01, bias_correction: bool = True):
        super().__init__(params, dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                                      bias_correction=bias_correction))

    @staticmethod
    def _init(p: Tensor) -> dict:
        return {"step": 0, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}

    @torch.no_grad()
    def step(self, closure=None):
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            params, grads, states = with_grads(group, self.state, self._init)
            beta1, beta2 = group["beta1"], group["beta2"]
            for step, idx in step_buckets(states).items():
                p, g = pick(params, idx), pick(grads, idx)
                m = [states[i]["exp_avg"] for i in idx]
                v = [states[i]["exp_avg_sq"] for i in idx]
                ema_(m, g, beta1)
                ema_sq_(v, g, beta2)
                t = step + 1
                c1, c2 = ((bias_correction(beta1, t), bias_correction(beta2, t)) if group["bias_correction"]
                          else (1.0, 1.0))
                updates = lamb_direction(p, m, v, group["eps"], group["weight_decay"], c1, c2)
                scales = trust_ratios(p, updates).mul_(-group["lr"])
                torch._foreach_addcmul_(p, updates, list(scales.unbind()))  # p += (-lr ratio) r, one pass
            for s in states:
                s["step"] += 1
        return loss


def build_lamb(groups, cfg: LambConfig) -> torch.optim.Optimizer:
    return Lamb(groups, lr=cfg.lr, beta1=cfg.beta1, beta2=cfg.beta2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                bias_correction=cfg.bias_correction)


register(OptimizerSpec(
    name="lamb", config_cls=LambConfig, build=build_lamb, source="optbench",
    reference="You et al. 2020 (arXiv:1904.00962); pytorch-optimizer==4.1.0 Lamb (bias_correction=False) and "
              "the paper's Algorithm 2",
    search_space={"lr": LogUniform(1e-4, 1e-2), "beta2": Choice((0.95, 0.99, 0.999)),
                  "weight_decay": Choice((0.0, 0.01, 0.1))},
    capabilities=Capabilities(fsdp="owner"),  # trust ratio per tensor
))
