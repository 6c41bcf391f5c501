"""AdaBelief (Zhuang et al., 2020, "AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed
Gradients", NeurIPS 2020, arXiv:2010.07468).

Adam whose second moment is the EMA of the squared *deviation* of the gradient from its EMA (the "belief"
in the gradient: a step is large where the gradient is close to what the momentum predicted):

    m_t = beta1 m_{t-1} + (1 - beta1) g_t
    s_t = beta2 s_{t-1} + (1 - beta2) (g_t - m_t)^2 + eps            (eps enters the state, Algorithm 2)
    plain:      p <- p - lr / (1 - beta1^t) * m_t / (sqrt(s_t / (1 - beta2^t)) + eps)
    rectified:  rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t),  rho_inf = 2 / (1 - beta2) - 1   (RAdam's)
                rho_t >= 5: p <- p - lr r_t sqrt(1 - beta2^t) / (1 - beta1^t) * m_t / (sqrt(s_t) + eps),
                            r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
                otherwise:  p <- p - lr / (1 - beta1^t) * m_t    (SGD with momentum; or no step at all)
    decoupled weight decay p <- p (1 - lr wd) before the update (or L2: g <- g + wd p).

Source: optbench (foreach), matching the authors' adabelief-pytorch==0.2.1 `AdaBelief`
(juntang-zhuang/Adabelief-Optimizer; MIT per its PyPI classifier) step by step in the tests, bit for bit
when m is rounded as the package rounds it (mul + add where moments.ema_ lerps). Defaults are the
package's: eps 1e-16, weight_decouple=True, rectify=True, degenerated_to_sgd=True. The package is not the
source: it prints banners on construction, loops per parameter and keeps its rectification cache in the
param groups. Left out: its `amsgrad` (off by default; its rectified branch ignores the max anyway) and
`fixed_decay` (decay without lr, off by default).

At the defaults the rectification is a built-in warm-up over ~1/(1 - beta2) = 1000 steps (r_t, the step's
fraction of the unrectified one, is below 0.14 through step 40), so a 40-step run barely moves; beta2=0.95
or rectify=false learn at once.
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
class AdaBeliefConfig(OptimConfig):
    name: str = "adabelief"
    lr: float = 1e-3
    weight_decay: float = 0.0
    """The package's default; decoupled (AdamW style) unless `decouple` is false."""
    beta1: float = 0.9
    beta2: float = 0.999
    """The paper's and package's value (also its transformer recommendation), not the LLM 0.95: s_t is a
    variance around the momentum, and the rectification below is calibrated on beta2's window."""
    eps: float = 1e-16
    """Added to s_t every step and to the denominator; 1e-16 is the package's default since 0.1.0 (its
    recommendation for transformers; 1e-8 for CNNs)."""
    decouple: bool = True
    """Decoupled weight decay p <- p (1 - lr wd) (the package's weight_decouple=True); false: L2 in the gradient."""
    rectify: bool = True
    """RAdam's variance rectification (the package's default since 0.1.0); false: the plain AdaBelief step."""
    degenerated_to_sgd: bool = True
    """rectify: while rho_t < 5 take an SGD-with-momentum step (true) or no step (false), as the package."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_unit_interval("optim", beta1=self.beta1, beta2=self.beta2)
        check(self.eps > 0.0, f"optim.eps={self.eps} must be positive")


def belief_(exp_avg_vars: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], beta2: float,
            eps: float) -> None:
    """s <- beta2 s + (1 - beta2) (g - m)^2 + eps, in place (m already updated with g)."""
    residuals = torch._foreach_sub(grads, exp_avgs)
    ema_sq_(exp_avg_vars, residuals, beta2)
    torch._foreach_add_(exp_avg_vars, eps)


def sma_length(beta2: float, step: int) -> tuple[float, float]:
    """(rho_t, rho_inf): the length of the approximated simple moving average after `step` steps and its limit
    (Liu et al. 2020, RAdam)."""
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    beta2_t = beta2 ** step
    return rho_inf - 2.0 * step * beta2_t / (1.0 - beta2_t), rho_inf


def rectified_step_size(beta1: float, beta2: float, step: int) -> float | None:
    """sqrt(1 - beta2^t) r_t / (1 - beta1^t), RAdam's rectified step per unit lr, or None while rho_t < 5
    (the variance of the adaptive rate is not yet tractable). Same order of operations as the reference."""
    rho, rho_inf = sma_length(beta2, step)
    if rho < 5.0:
        return None
    return math.sqrt((1.0 - beta2 ** step) * (rho - 4.0) / (rho_inf - 4.0) * (rho - 2.0) / rho * rho_inf
                     / (rho_inf - 2.0)) / bias_correction(beta1, step)


class AdaBelief(torch.optim.Optimizer):
    """AdaBelief over param groups with keys lr, beta1, beta2, eps, weight_decay, decouple, rectify,
    degenerated_to_sgd; state per parameter: step (int), exp_avg, exp_avg_var."""

    def __init__(self, params, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-16,
                 weight_decay: float = 0.0, decouple: bool = True, rectify: bool = True,
                 degenerated_to_sgd: bool = True):
        super().__init__(params, dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                                      decouple=decouple, rectify=rectify, degenerated_to_sgd=degenerated_to_sgd))

    @staticmethod
    def _init(p: Tensor) -> dict:
        return {"step": 0, "exp_avg": torch.zeros_like(p), "exp_avg_var": torch.zeros_like(p)}

    @torch.no_grad()
    def step(self, closure=None):
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            params, grads, states = with_grads(group, self.state, self._init)
            if not params:
                continue
            lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
            beta1, beta2 = group["beta1"], group["beta2"]
            if group["decouple"]:
                decay_(params, lr, wd)
            elif wd != 0.0:
                grads = torch._foreach_add(grads, params, alpha=wd)
            for step, idx in step_buckets(states).items():
                t = step + 1
                p, g = pick(params, idx), pick(grads, idx)
                m = [states[i]["exp_avg"] for i in idx]
                s = [states[i]["exp_avg_var"] for i in idx]
                ema_(m, g, beta1)
                belief_(s, g, m, beta2, eps)
                if not group["rectify"]:
                    denom = adam_denominator(s, eps, bias_correction(beta2, t))
                    torch._foreach_addcdiv_(p, m, denom, value=-lr / bias_correction(beta1, t))
                    continue
                step_size = rectified_step_size(beta1, beta2, t)
                if step_size is not None:
                    torch._foreach_addcdiv_(p, m, adam_denominator(s, eps), value=-step_size * lr)
                elif group["degenerated_to_sgd"]:
                    torch._foreach_add_(p, m, alpha=-lr / bias_correction(beta1, t))
            for st in states:
                st["step"] += 1
        return loss


def build_adabelief(groups, cfg: AdaBeliefConfig) -> torch.optim.Optimizer:
    return AdaBelief(groups, lr=cfg.lr, beta1=cfg.beta1, beta2=cfg.beta2, eps=cfg.eps,
                     weight_decay=cfg.weight_decay, decouple=cfg.decouple, rectify=cfg.rectify,
                     degenerated_to_sgd=cfg.degenerated_to_sgd)


register(OptimizerSpec(
    name="adabelief", config_cls=AdaBeliefConfig, build=build_adabelief, source="optbench",
    reference="Zhuang et al. 2020 (arXiv:2010.07468); adabelief-pytorch==0.2.1 AdaBelief "
              "(juntang-zhuang/Adabelief-Optimizer)",
    search_space={"lr": LogUniform(1e-4, 1e-2), "beta2": Choice((0.95, 0.98, 0.99, 0.999)),
                  "weight_decay": Choice((0.0, 0.01, 0.1))},
    capabilities=Capabilities(fsdp="shards"),
))
