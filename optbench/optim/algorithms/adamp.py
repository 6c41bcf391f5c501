"""AdamP (Heo et al., 2021, "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
Weights", ICLR 2021, arXiv:2006.08217, Algorithm 2).

Adam whose update loses its radial component on weights that look scale-invariant (a normalisation layer
follows them), so that momentum stops inflating their norm and shrinking their effective step:

    m, v as Adam;  u = m / (sqrt(v / (1 - beta2^t)) + eps)      (nesterov: beta1 m + (1 - beta1) g over that)
    for view in (per output channel, whole tensor):                 first view whose test fires, if any
        if max |cos(g, p)| over the view's rows < delta / sqrt(row length):
            u <- u - p_hat <p_hat, u>  per row  (p_hat = p / (||p|| + eps));  weight decay scaled by wd_ratio
    p <- p (1 - lr wd ratio) - lr / (1 - beta1^t) u

Only tensors of two or more dimensions are tested and projected, as in the reference (`len(p.shape) > 1`):
routing's vectors (biases, norm gains) take plain Adam steps with ratio 1; embeddings and the head are
tested per row (the channel view is `view(size(0), -1)`), then as a whole.

Source: optbench (foreach moments; the cosine tests and projections per tensor), matching the authors'
adamp==0.3.0 `AdamP` (clovaai/AdamP, MIT) step by step in the tests (bit for bit when m is rounded as the
package rounds it: mul + add where moments.ema_ lerps), with its defaults (delta 0.1, wd_ratio 0.1,
nesterov off). Where the reference decides each tensor's projection with a host sync
(`cosine_sim.max() < ...` per tensor), this file evaluates every tensor's two tests on the device and reads
them back once per step and group.
"""

from __future__ import annotations

import math
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
class AdamPConfig(OptimConfig):
    name: str = "adamp"
    lr: float = 1e-3
    weight_decay: float = 0.0
    """Decoupled (p <- p (1 - lr wd ratio)); the package's default 0."""
    beta1: float = 0.9
    beta2: float = 0.999
    """The paper's and package's value."""
    eps: float = 1e-8
    """Adam's denominator eps, also the cosine's and the weight normalisation's (as in the reference)."""
    delta: float = 0.1
    """A view counts as scale-invariant when max |cos(g, p)| < delta / sqrt(row length)."""
    wd_ratio: float = 0.1
    """Weight decay multiplier on projected tensors."""
    nesterov: bool = False
    """Nesterov momentum in the direction: (beta1 m + (1 - beta1) g) / denominator."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_unit_interval("optim", beta1=self.beta1, beta2=self.beta2)
        check(self.eps > 0.0, f"optim.eps={self.eps} must be positive")
        check(self.delta > 0.0, f"optim.delta={self.delta} must be positive")
        check(self.wd_ratio >= 0.0, f"optim.wd_ratio={self.wd_ratio} must be >= 0")


def channel_view(x: Tensor) -> Tensor:
    """One row per output channel (first dimension)."""
    return x.reshape(x.size(0), -1)


def layer_view(x: Tensor) -> Tensor:
    """The whole tensor as one row."""
    return x.reshape(1, -1)


VIEWS = (channel_view, layer_view)


def scale_invariance_tests(grad: Tensor, param: Tensor, delta: float, eps: float) -> Tensor:
    """[channel test, layer test]: max over rows of |cos(g, p)| < delta / sqrt(row length), per view, as a bool
    tensor (no host sync). Both views come from one pass of per-row sums (the layer's are their totals), with
    torch's cosine, x.y / (max(|x|, eps) max(|y|, eps)); the reference runs cosine_similarity once per view."""
    g, p = channel_view(grad), channel_view(param)
    dots, g_sq, p_sq = (g * p).sum(dim=1), g.square().sum(dim=1), p.square().sum(dim=1)
    channel = dots / (g_sq.sqrt().clamp_min(eps) * p_sq.sqrt().clamp_min(eps))
    layer = dots.sum() / (g_sq.sum().sqrt().clamp_min(eps) * p_sq.sum().sqrt().clamp_min(eps))
    return torch.stack([channel.abs().max() < delta / math.sqrt(g.size(1)), layer.abs() < delta / math.sqrt(g.numel())])


def project_(update: Tensor, param: Tensor, view, eps: float) -> None:
    """u <- u - p_hat <p_hat, u> in place, per row of `view`: the update without its radial component."""
    expand = [-1] + [1] * (param.dim() - 1)
    unit = param / view(param).norm(dim=1).view(expand).add_(eps)
    update.sub_(unit * view(unit * update).sum(dim=1).view(expand))


def projected_directions_(params: list[Tensor], grads: list[Tensor], updates: list[Tensor], delta: float,
                          eps: float) -> list[bool]:
    """Project each update of a tensor with >= 2 dims on the first view whose test fires; returns which were
    projected. The tests of all tensors are read back together."""
    matrices = [i for i, p in enumerate(params) if p.dim() > 1]
    if not matrices:
        return [False] * len(params)
    tests = torch.cat([scale_invariance_tests(grads[i], params[i], delta, eps) for i in matrices]).tolist()
    projected = [False] * len(params)
    for k, i in enumerate(matrices):
        fired = next((view for view, hit in zip(VIEWS, tests[2 * k:2 * k + 2]) if hit), None)
        if fired is not None:
            project_(updates[i], params[i], fired, eps)
            projected[i] = True
    return projected


def nesterov_momentum(exp_avgs: list[Tensor], grads: list[Tensor], beta1: float) -> list[Tensor]:
    """beta1 m + (1 - beta1) g as new tensors (two products and a sum, rounded as the reference rounds them)."""
    momentum = torch._foreach_mul(exp_avgs, beta1)
    torch._foreach_add_(momentum, torch._foreach_mul(grads, 1.0 - beta1))
    return momentum


def decay_by_ratio_(params: list[Tensor], projected: list[bool], lr_wd: float, wd_ratio: float) -> None:
    """Decoupled weight decay p <- p (1 - lr wd), with lr wd scaled by wd_ratio on projected tensors."""
    for ratio, members in ((1, [p for p, proj in zip(params, projected) if not proj]),
                           (wd_ratio, [p for p, proj in zip(params, projected) if proj])):
        if members:
            torch._foreach_mul_(members, 1.0 - lr_wd * ratio)


class AdamP(torch.optim.Optimizer):
    """AdamP over param groups with keys lr, beta1, beta2, eps, weight_decay, delta, wd_ratio, nesterov;
    state per parameter: step (int), exp_avg, exp_avg_sq."""

    def __init__(self, params, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 0.0, delta: float = 0.1, wd_ratio: float = 0.1, nesterov: bool = False):
        super().__init__(params, dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                                      delta=delta, wd_ratio=wd_ratio, nesterov=nesterov))

    @staticmethod
    def _init(p: Tensor) -> dict:
        return {"step": 0, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}

    @torch.no_grad()
    def step(self, closure=None):
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            params, grads, states = with_grads(group, self.state, self._init)
            lr, wd, eps, beta1 = group["lr"], group["weight_decay"], group["eps"], group["beta1"]
            for step, idx in step_buckets(states).items():
                t = step + 1
                p, g = pick(params, idx), pick(grads, idx)
                m = [states[i]["exp_avg"] for i in idx]
                v = [states[i]["exp_avg_sq"] for i in idx]
                ema_(m, g, beta1)
                ema_sq_(v, g, group["beta2"])
                denom = adam_denominator(v, eps, bias_correction(group["beta2"], t))
                direction = nesterov_momentum(m, g, beta1) if group["nesterov"] else m
                direction = torch._foreach_div(direction, denom)
                projected = projected_directions_(p, g, direction, group["delta"], eps)
                if wd > 0.0:
                    decay_by_ratio_(p, projected, lr * wd, group["wd_ratio"])
                torch._foreach_add_(p, direction, alpha=-lr / bias_correction(beta1, t))
            for s in states:
                s["step"] += 1
        return loss


def build_adamp(groups, cfg: AdamPConfig) -> torch.optim.Optimizer:
    return AdamP(groups, lr=cfg.lr, beta1=cfg.beta1, beta2=cfg.beta2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                 delta=cfg.delta, wd_ratio=cfg.wd_ratio, nesterov=cfg.nesterov)


register(OptimizerSpec(
    name="adamp", config_cls=AdamPConfig, build=build_adamp, source="optbench",
    reference="Heo et al. 2021 (arXiv:2006.08217, ICLR); adamp==0.3.0 AdamP (clovaai/AdamP)",
    search_space={"lr": LogUniform(1e-4, 1e-2), "beta2": Choice((0.95, 0.98, 0.99, 0.999)),
                  "weight_decay": Choice((0.0, 0.01, 0.1))},
    capabilities=Capabilities(fsdp="owner"),  # cosine tests per row and per tensor
))
