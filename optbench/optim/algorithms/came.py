"""CAME (Luo, Ren, Zheng, Jiang, Jiang & You, 2023, "CAME: Confidence-guided Adaptive Memory Efficient
Optimization", ACL 2023, arXiv:2307.02047, Algorithm 1).

Adafactor's factored second moment plus a momentum whose step is rescaled by a factored "instability"
matrix, the EMA of how far the new update lies from the momentum (confidence: small deviation, big step):

    R, C <- factored EMA (beta2) of g^2 + eps1          u = g / sqrt(V_hat(R, C))       u <- u / max(1, RMS(u) / d)
    m = beta1 m + (1 - beta1) u
    R', C' <- factored EMA (beta3) of (u - m)^2 + eps2   s = m / sqrt(S_hat(R', C'))
    p <- p (1 - lr wd) - lr s

For tensors of 2 or more dimensions the statistics are factored over the last two (row and column means,
V_hat = R C^T / mean(R), see optbench/optim/functional/factored.py); vectors keep a full second moment and
step by m itself (no instability matrix), as the reference does. No bias correction, no relative step size.

Source: optbench (the authors' code is a per-tensor loop and so is this). Reference: came-pytorch==0.1.3
(yangluo7/CAME, the authors' package, MIT), matched step by step in the tests; defaults are its README's
(lr 2e-4, weight decay 1e-2, betas (0.9, 0.999, 0.9999), eps (1e-30, 1e-16), clip threshold 1). Weight
decay is decoupled and scaled by lr, applied before the step, as there. Differences in bookkeeping only:
the reference's unused state["RMS"] is not kept; `eps1`, `eps2` are two fields instead of a tuple; the
README's advice for pre-training is an lr 1-3x smaller than AdamW's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from optbench.config.schema import OptimConfig
from optbench.errors import check, check_unit_interval
from optbench.optim.functional.closure import evaluate_closure
from optbench.optim.functional.factored import (clip_by_rms_, factored_ema_, factored_rsqrt, factored_zeros,
                                                is_factored)
from optbench.optim.registry import Capabilities, OptimizerSpec, register
from optbench.optim.search_space import Choice, LogUniform


@dataclass
class CAMEConfig(OptimConfig):
    name: str = "came"
    lr: float = 2e-4
    weight_decay: float = 1e-2
    """Decoupled: p <- p (1 - lr wd), before the step."""
    beta1: float = 0.9
    """Decay of the momentum of the normalised update."""
    beta2: float = 0.999
    """Decay of the (factored) second moment of the gradient."""
    beta3: float = 0.9999
    """Decay of the (factored) instability (u - m)^2; the README suggests 0.9995 to 0.99995."""
    eps1: float = 1e-30
    """Added to g^2 before it enters the second moment."""
    eps2: float = 1e-16
    """Added to (u - m)^2 before it enters the instability statistics."""
    clip_threshold: float = 1.0
    """Updates u are scaled down to RMS <= clip_threshold (Adafactor's d)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_unit_interval("optim", beta1=self.beta1, beta2=self.beta2, beta3=self.beta3)
        check(self.eps1 > 0.0, f"optim.eps1={self.eps1} must be positive")
        check(self.eps2 > 0.0, f"optim.eps2={self.eps2} must be positive")
        check(self.clip_threshold > 0.0, f"optim.clip_threshold={self.clip_threshold} must be positive")


def normalized_update(grad: Tensor, state: dict, beta2: float, eps1: float, clip_threshold: float) -> Tensor:
    """u = g / sqrt(V_t), V_t the (factored for matrices) EMA of g^2 + eps1, RMS-clipped; updates V_t."""
    sq = grad.square().add_(eps1)
    if "exp_avg_sq_row" in state:
        factored_ema_(state["exp_avg_sq_row"], state["exp_avg_sq_col"], sq, beta2)
        update = factored_rsqrt(state["exp_avg_sq_row"], state["exp_avg_sq_col"]).mul_(grad)
    else:
        v = state["exp_avg_sq"]
        v.mul_(beta2).add_(sq, alpha=1.0 - beta2)
        update = v.rsqrt().mul_(grad)
    return clip_by_rms_(update, clip_threshold)


def confident_step(update: Tensor, state: dict, beta1: float, beta3: float, eps2: float) -> Tensor:
    """Updates the momentum m with u and returns the step m / sqrt(S_hat), S the factored EMA of the
    instability (u - m)^2 + eps2; for vectors the step is m."""
    exp_avg = state["exp_avg"]
    exp_avg.mul_(beta1).add_(update, alpha=1.0 - beta1)
    if "exp_avg_res_row" not in state:
        return exp_avg
    instability = (update - exp_avg).square_().add_(eps2)
    factored_ema_(state["exp_avg_res_row"], state["exp_avg_res_col"], instability, beta3)
    return factored_rsqrt(state["exp_avg_res_row"], state["exp_avg_res_col"]).mul_(exp_avg)


class CAME(torch.optim.Optimizer):
    """CAME over param groups with keys lr, beta1, beta2, beta3, eps1, eps2, clip_threshold, weight_decay.
    State per parameter: step (int), exp_avg, and exp_avg_sq_row/_col with exp_avg_res_row/_col (tensors of 2
    or more dimensions) or exp_avg_sq (vectors), in float32 for low-precision parameters."""

    # Defaults are CAMEConfig's, declared there once (this once said weight_decay=0.0 against the config's 0.01).
    def __init__(self, params, lr: float = CAMEConfig.lr, beta1: float = CAMEConfig.beta1,
                 beta2: float = CAMEConfig.beta2, beta3: float = CAMEConfig.beta3, eps1: float = CAMEConfig.eps1,
                 eps2: float = CAMEConfig.eps2, clip_threshold: float = CAMEConfig.clip_threshold,
                 weight_decay: float = CAMEConfig.weight_decay):
        super().__init__(params, dict(lr=lr, beta1=beta1, beta2=beta2, beta3=beta3, eps1=eps1, eps2=eps2,
                                      clip_threshold=clip_threshold, weight_decay=weight_decay))

    @staticmethod
    def _init(grad: Tensor) -> dict:
        state = {"step": 0, "exp_avg": torch.zeros_like(grad)}
        if is_factored(grad):
            state["exp_avg_sq_row"], state["exp_avg_sq_col"] = factored_zeros(grad)
            state["exp_avg_res_row"], state["exp_avg_res_col"] = factored_zeros(grad)
        else:
            state["exp_avg_sq"] = torch.zeros_like(grad)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            lr, weight_decay = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("CAME does not support sparse gradients")
                grad = p.grad.float() if p.grad.dtype in (torch.float16, torch.bfloat16) else p.grad
                state = self.state[p]
                if not state:
                    state.update(self._init(grad))
                state["step"] += 1
                update = normalized_update(grad, state, group["beta2"], group["eps1"], group["clip_threshold"])
                step = confident_step(update, state, group["beta1"], group["beta3"], group["eps2"])
                # p - (lr wd) p and p - (lr step), in the reference's arithmetic: the tiny LM's attention key
                # bias has an exactly-zero gradient up to ~1e-10 of rounding noise, which normalisation by
                # sqrt(g^2) amplifies to full-size steps, so any rounding difference shows.
                if weight_decay != 0.0:
                    p.add_(p, alpha=-lr * weight_decay)
                p.sub_((step * lr).to(p.dtype))
        return loss


def build_came(groups, cfg: CAMEConfig) -> torch.optim.Optimizer:
    return CAME(groups, lr=cfg.lr, beta1=cfg.beta1, beta2=cfg.beta2, beta3=cfg.beta3, eps1=cfg.eps1, eps2=cfg.eps2,
                clip_threshold=cfg.clip_threshold, weight_decay=cfg.weight_decay)


register(OptimizerSpec(
    name="came", config_cls=CAMEConfig, build=build_came, source="optbench",
    reference="Luo et al. 2023 (ACL, arXiv:2307.02047); came-pytorch==0.1.3 (yangluo7/CAME)",
    search_space={"lr": LogUniform(3e-5, 3e-3), "beta3": Choice((0.9995, 0.9999, 0.99995)),
                  "weight_decay": Choice((0.0, 0.01, 0.1))},
    capabilities=Capabilities(fsdp="owner"),  # factored statistics: row and column means
))
