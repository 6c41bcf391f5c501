"""ADOPT (Taniguchi et al., 2024, "ADOPT: Modified Adam Can Converge with Any beta2 with the Optimal Rate",
arXiv:2411.02853; the clipped form of its updated arXiv version).

Adam with two changes: the gradient is normalised by the second moment of the *previous* steps (so the
current gradient does not shrink its own step), and the momentum is taken of the normalised gradient:

    t = 0:   v_0 = g_0^2                                     (no parameter update)
    t >= 1:  m_t = beta1 m_{t-1} + (1 - beta1) clip(g_t / max(sqrt(v_{t-1}), eps), t^(1/4))
             p_t = p_{t-1} (1 - lr wd) - lr m_t
             v_t = beta2 v_{t-1} + (1 - beta2) g_t^2

Source: optbench (foreach), matching the authors' torch-adopt==0.1.0 `adopt.ADOPT` (iShohei220/adopt,
Apache-2.0) step by step in the tests. The authors' package qualifies as a source (CPU and GPU, plain tensor
state) but is a test-only dependency of optbench and builds on private torch.optim helpers; its foreach
path also decides "first step" from the first tensor of each device group, where this file keeps a step per
parameter. Deliberate difference in defaults: weight decay is decoupled (AdamW style, `decouple=True`) where
the package defaults to L2 (`decouple=False`); both are available.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from optbench.config.schema import OptimConfig
from optbench.errors import check, check_unit_interval
from optbench.optim.functional.closure import evaluate_closure
from optbench.optim.functional.moments import decay_, ema_, ema_sq_, pick, step_buckets, with_grads
from optbench.optim.registry import Capabilities, OptimizerSpec, register
from optbench.optim.search_space import Choice, LogUniform


@dataclass
class ADOPTConfig(OptimConfig):
    name: str = "adopt"
    lr: float = 1e-3
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.9999
    """The paper's default: ADOPT converges for any beta2, so the long memory of 0.9999 is safe."""
    eps: float = 1e-6
    """Floor of sqrt(v) (a max, not an addition, as in the reference)."""
    decouple: bool = True
    """Decoupled weight decay p <- p (1 - lr wd) (AdamW); false: L2, wd p added to the gradient."""
    clip_exponent: float | None = 0.25
    """The normalised gradient is clipped to [-t^c, t^c] at step t (the reference's clip_lambda = t**0.25,
    which keeps the convergence guarantee); None: unclipped, the first arXiv version."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_unit_interval("optim", beta1=self.beta1, beta2=self.beta2)
        check(self.eps > 0.0, f"optim.eps={self.eps} must be positive")
        check(self.clip_exponent is None or self.clip_exponent >= 0.0,
              f"optim.clip_exponent={self.clip_exponent} must be >= 0 (or null: no clipping)")


def clip_value(step: int, exponent: float | None) -> float | None:
    """The clipping bound step^exponent (None: no clipping)."""
    return None if exponent is None else step ** exponent


def normalized_gradient(grads: list[Tensor], exp_avg_sqs: list[Tensor], eps: float,
                        clip: float | None) -> list[Tensor]:
    """clip(g / max(sqrt(v_prev), eps), clip) as new tensors: the gradient scaled by the previous steps'
    second moment only."""
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_clamp_min_(denom, eps)  # max(., eps); FSDP2's DTensors have no _foreach_maximum_
    normed = torch._foreach_div(grads, denom)
    if clip is not None:
        torch._foreach_clamp_min_(normed, -clip)
        torch._foreach_clamp_max_(normed, clip)
    return normed


class ADOPT(torch.optim.Optimizer):
    """ADOPT over param groups with keys lr, beta1, beta2, eps, weight_decay, decouple, clip_exponent;
    state per parameter: step (int), exp_avg, exp_avg_sq."""

    def __init__(self, params, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.9999, eps: float = 1e-6,
                 weight_decay: float = 0.0, decouple: bool = True, clip_exponent: float | None = 0.25):
        super().__init__(params, dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                                      decouple=decouple, clip_exponent=clip_exponent))

    @staticmethod
    def _init(p: Tensor) -> dict:
        return {"step": 0, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}

    @torch.no_grad()
    def step(self, closure=None):
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            params, grads, states = with_grads(group, self.state, self._init)
            if not params:
                continue
            lr, wd = group["lr"], group["weight_decay"]
            if wd != 0.0 and not group["decouple"]:
                grads = torch._foreach_add(grads, params, alpha=wd)
            for step, idx in step_buckets(states).items():
                p, g = pick(params, idx), pick(grads, idx)
                m = [states[i]["exp_avg"] for i in idx]
                v = [states[i]["exp_avg_sq"] for i in idx]
                if step == 0:
                    torch._foreach_addcmul_(v, g, g)  # v_0 = g_0^2; the first step only measures
                else:
                    if group["decouple"]:
                        decay_(p, lr, wd)
                    ema_(m, normalized_gradient(g, v, group["eps"], clip_value(step, group["clip_exponent"])),
                         group["beta1"])
                    torch._foreach_add_(p, m, alpha=-lr)
                    ema_sq_(v, g, group["beta2"])
            for s in states:
                s["step"] += 1
        return loss


def build_adopt(groups, cfg: ADOPTConfig) -> torch.optim.Optimizer:
    return ADOPT(groups, lr=cfg.lr, beta1=cfg.beta1, beta2=cfg.beta2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                 decouple=cfg.decouple, clip_exponent=cfg.clip_exponent)


register(OptimizerSpec(
    name="adopt", config_cls=ADOPTConfig, build=build_adopt, source="optbench",
    reference="Taniguchi et al. 2024 (arXiv:2411.02853); torch-adopt==0.1.0 adopt.ADOPT (iShohei220/adopt)",
    search_space={"lr": LogUniform(1e-4, 1e-2), "beta2": Choice((0.999, 0.9999)),
                  "weight_decay": Choice((0.0, 0.01, 0.1))},
    capabilities=Capabilities(fsdp="shards"),
))
