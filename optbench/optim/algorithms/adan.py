"""Adan (Xie, Zhou, Li, Lin & Yan, 2022, "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing
Deep Models", arXiv:2208.06677, Algorithm 1 without restarts).

Adam with a Nesterov-style correction estimated from gradient differences, g_t - g_{t-1} (zero at t = 1):

    m = beta1 m + (1 - beta1) g                          first moment
    d = beta2 d + (1 - beta2) (g - g_prev)               moment of the gradient difference
    n = beta3 n + (1 - beta3) (g + beta2 (g - g_prev))^2 second moment of the Nesterov gradient
    u = (m / (1 - beta1^t) + beta2 d / (1 - beta2^t)) / (sqrt(n / (1 - beta3^t)) + eps)
    p <- (p - lr u) / (1 + lr wd)                        proximal decay (the paper's; no_prox=False)
    p <- p (1 - lr wd) - lr u                            AdamW-style decay (no_prox=True)

The betas are the code's, i.e. one minus the paper's (the paper's beta1 = 0.02 is beta1 = 0.98 here), as
in the authors' code. With max_grad_norm > 0 every gradient is first scaled by min(1, max_grad_norm /
(||g||_global + eps)), the global norm taken over all param groups.

Source: optbench (foreach). Matches the authors' reference, sail-sg/Adan adan.py (commit d00ff62,
`_multi_tensor_adan`, defaults lr 1e-3, betas (0.98, 0.92, 0.99), eps 1e-8, no_prox False, max_grad_norm 0).
pytorch-optimizer==4.1.0 `Adan` computes the same update (its weight_decouple=False is the official
no_prox=False, True is no_prox=True); the tests match it step by step with and without clipping, and
check the official proximal form on a hand-computed case. Deliberate differences from the official code,
none of which changes a step in an ordinary run:
- step counts are per parameter (the official keeps one per group, which only differs where a parameter
  skips steps without a gradient); the official re-initialisation of g_prev when the group's step is 1
  exists for `restart_opt`, whose restart strategy the paper leaves out of all but one experiment and
  which is not offered here;
- the gradients in p.grad are left untouched (the official scales them in place by the clip factor);
- the clip factor stays a tensor (no host sync) and uses the constructor's eps (the official reads the
  eps of whichever group its loop visited last; routing gives every group the same eps).
Default weight decay is 0.02, which the authors' README calls suitable for all of the paper's experiments
(the class's own default is 0).
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
class AdanConfig(OptimConfig):
    name: str = "adan"
    lr: float = 1e-3
    weight_decay: float = 0.02
    """Proximal by default: p <- (p - lr u) / (1 + lr wd); AdamW-style with no_prox."""
    beta1: float = 0.98
    """Decay of the gradient EMA (the paper's 1 - beta1 = 0.02)."""
    beta2: float = 0.92
    """Decay of the gradient-difference EMA; also the weight of that EMA in the update."""
    beta3: float = 0.99
    """Decay of the second moment of the Nesterov gradient g + beta2 (g - g_prev)."""
    eps: float = 1e-8
    max_grad_norm: float = 0.0
    """Clip the global gradient norm to this inside the optimizer; 0: no clipping (the reference's default)."""
    no_prox: bool = False
    """Decay as AdamW, p (1 - lr wd), instead of the paper's proximal division by 1 + lr wd."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_unit_interval("optim", beta1=self.beta1, beta2=self.beta2, beta3=self.beta3)
        check(self.eps > 0.0, f"optim.eps={self.eps} must be positive")
        check(self.max_grad_norm >= 0.0, f"optim.max_grad_norm={self.max_grad_norm} must be non-negative")


def clip_coefficient(grads: list[Tensor], max_norm: float, eps: float) -> Tensor:
    """min(1, max_norm / (||grads||_2 + eps)) over all tensors together, as a 0-d tensor."""
    norms = torch._foreach_norm(grads)
    total = torch.stack([n.to(torch.float32) for n in norms]).square().sum().sqrt()
    return torch.clamp(max_norm / (total + eps), max=1.0)


def nesterov_moments_(exp_avgs: list[Tensor], exp_avg_diffs: list[Tensor], exp_avg_sqs: list[Tensor],
                      grads: list[Tensor], prev_grads: list[Tensor], beta1: float, beta2: float,
                      beta3: float) -> None:
    """Adan's three EMAs in place: m of g, d of g - g_prev, n of (g + beta2 (g - g_prev))^2."""
    diffs = torch._foreach_sub(grads, prev_grads)
    ema_(exp_avgs, grads, beta1)
    ema_(exp_avg_diffs, diffs, beta2)
    torch._foreach_mul_(diffs, beta2)
    torch._foreach_add_(diffs, grads)  # the Nesterov gradient g + beta2 (g - g_prev)
    ema_sq_(exp_avg_sqs, diffs, beta3)


def adan_step_(params: list[Tensor], exp_avgs: list[Tensor], exp_avg_diffs: list[Tensor], denom: list[Tensor],
               lr: float, beta2: float, correction1: float, correction2: float, weight_decay: float,
               no_prox: bool) -> None:
    """p <- p - lr (m / c1 + beta2 d / c2) / denom, with proximal (p / (1 + lr wd) after) or AdamW-style
    (p (1 - lr wd) before) decay."""
    if no_prox and weight_decay != 0.0:
        torch._foreach_mul_(params, 1.0 - lr * weight_decay)
    torch._foreach_addcdiv_(params, exp_avgs, denom, value=-lr / correction1)
    torch._foreach_addcdiv_(params, exp_avg_diffs, denom, value=-lr * beta2 / correction2)
    if not no_prox and weight_decay != 0.0:
        torch._foreach_div_(params, 1.0 + lr * weight_decay)


class Adan(torch.optim.Optimizer):
    """Adan over param groups with keys lr, beta1, beta2, beta3, eps, weight_decay, no_prox; max_grad_norm
    (global, over all groups) is read from the defaults. State per parameter: step (int), exp_avg,
    exp_avg_diff, exp_avg_sq, prev_grad (the last, clipped gradient)."""

    # Defaults are AdanConfig's, declared there once (this once said weight_decay=0.0 against the config's 0.02).
    def __init__(self, params, lr: float = AdanConfig.lr, beta1: float = AdanConfig.beta1,
                 beta2: float = AdanConfig.beta2, beta3: float = AdanConfig.beta3, eps: float = AdanConfig.eps,
                 weight_decay: float = AdanConfig.weight_decay, max_grad_norm: float = AdanConfig.max_grad_norm,
                 no_prox: bool = AdanConfig.no_prox):
        super().__init__(params, dict(lr=lr, beta1=beta1, beta2=beta2, beta3=beta3, eps=eps,
                                      weight_decay=weight_decay, max_grad_norm=max_grad_norm, no_prox=no_prox))

    @staticmethod
    def _init(p: Tensor) -> dict:
        return {"step": 0, "exp_avg": torch.zeros_like(p), "exp_avg_diff": torch.zeros_like(p),
                "exp_avg_sq": torch.zeros_like(p)}

    @torch.no_grad()
    def step(self, closure=None):
        loss = evaluate_closure(closure)
        collected = [with_grads(group, self.state, self._init) for group in self.param_groups]
        max_norm = self.defaults["max_grad_norm"]
        all_grads = [g for _, grads, _ in collected for g in grads]
        coef = clip_coefficient(all_grads, max_norm, self.defaults["eps"]) if max_norm > 0 and all_grads else None
        for group, (params, grads, states) in zip(self.param_groups, collected):
            if coef is not None:
                grads = torch._foreach_mul(grads, coef)
            for s, g in zip(states, grads):
                if "prev_grad" not in s:  # first step: g - g_prev = 0
                    s["prev_grad"] = g.clone()
            for step, idx in step_buckets(states).items():
                t = step + 1
                p, g = pick(params, idx), pick(grads, idx)
                m, d, n = ([states[i][key] for i in idx] for key in ("exp_avg", "exp_avg_diff", "exp_avg_sq"))
                prev = [states[i]["prev_grad"] for i in idx]
                nesterov_moments_(m, d, n, g, prev, group["beta1"], group["beta2"], group["beta3"])
                denom = adam_denominator(n, group["eps"], bias_correction(group["beta3"], t))
                adan_step_(p, m, d, denom, group["lr"], group["beta2"], bias_correction(group["beta1"], t),
                           bias_correction(group["beta2"], t), group["weight_decay"], group["no_prox"])
                for last, grad in zip(prev, g):  # copy_ one by one: FSDP2's DTensors have no _foreach_copy_
                    last.copy_(grad)
            for s in states:
                s["step"] += 1
        return loss


def build_adan(groups, cfg: AdanConfig) -> torch.optim.Optimizer:
    return Adan(groups, lr=cfg.lr, beta1=cfg.beta1, beta2=cfg.beta2, beta3=cfg.beta3, eps=cfg.eps,
                weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, no_prox=cfg.no_prox)


register(OptimizerSpec(
    name="adan", config_cls=AdanConfig, build=build_adan, source="optbench",
    reference="Xie et al. 2022 (arXiv:2208.06677); sail-sg/Adan adan.py @ d00ff62; "
              "pytorch-optimizer==4.1.0 Adan (step-by-step test)",
    search_space={"lr": LogUniform(1e-4, 3e-2), "beta1": Choice((0.9, 0.98, 0.99)),
                  "beta3": Choice((0.99, 0.995, 0.999)), "weight_decay": Choice((0.0, 0.02, 0.1))},
    capabilities=Capabilities(fsdp="shards"),  # elementwise; max_grad_norm's global norm reduces over the DTensors
))
