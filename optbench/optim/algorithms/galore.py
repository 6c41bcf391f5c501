"""GaLore (Zhao, Zhang, Chen, Wang, Anandkumar, Tian, 2024, "GaLore: Memory-Efficient LLM Training by Gradient
Low-Rank Projection", arXiv 2403.03507): Adam run on the gradient projected onto its top singular subspace.

Per hidden matrix W (m x n; the side projected is the smaller one, see functional/low_rank.py):

    every T = update_proj_gap updates (and at the first):  Q <- top-r singular vectors of G_t (SVD)
    R_t = project(G_t, Q)                                  r x n or m x r
    m <- beta1 m + (1 - beta1) R_t,  v <- beta2 v + (1 - beta2) R_t^2       (moments in the low-rank space)
    W <- W - lr sqrt(1 - beta2^t) / (1 - beta1^t) * alpha * project_back(m / (sqrt(v) + eps), Q)
    W <- W (1 - lr wd)

Every other parameter (embeddings, head, vectors, and matrices that are not 2-D) takes the same AdamW step
without the projection, in the same optimizer: routing's `role` key picks the projected ones ("matrix").

Matches the authors' package galore-torch==1.0 (`galore_torch.GaLoreAdamW` + `GaLoreProjector`, Apache-2.0),
step for step, including its quirks: the moments are NOT reset or rotated when Q is refreshed (they carry over
into the new subspace, as in the reference), the bias corrections are folded into the step size with eps
outside them (transformers' AdamW, which GaLoreAdamW copies), and weight decay is applied after the update.
Defaults are the authors' LLaMA-130M C4 pretraining script (scripts/benchmark_c4/llama_130m.sh, the size
nearest GPT-2 124M): lr 0.01, rank 256, update_proj_gap 200, scale 0.25, proj_type std, weight decay 0,
with GaLoreAdamW's betas (0.9, 0.999) and eps 1e-6. Deliberate differences: the projector's basis lives in
the optimizer state as a tensor (the reference keeps a Python object there, which cannot be saved with
weights_only=True); proj_type "full" (two-sided) is left out; the unprojected parameters are updated with
torch._foreach_* ops (rounding-level differences from the reference's per-tensor loop).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from optbench.config.schema import OptimConfig
from optbench.errors import check, check_choice, check_unit_interval
from optbench.optim.functional.closure import evaluate_closure
from optbench.optim.functional.low_rank import (PROJ_TYPES, project, project_back, projection_side, refresh_due,
                                                svd_projection)
from optbench.optim.functional.moments import adam_denominator, bias_correction, ema_sq_, pick, step_buckets
from optbench.optim.registry import Capabilities, OptimizerSpec, register
from optbench.optim.search_space import Choice, LogUniform


@dataclass
class GaLoreConfig(OptimConfig):
    name: str = "galore"
    lr: float = 0.01
    weight_decay: float = 0.0
    beta1: float = 0.9
    """Adam's first-moment decay."""
    beta2: float = 0.999
    """Adam's second-moment decay."""
    eps: float = 1e-6
    """Added to sqrt(v), outside the bias correction (GaLoreAdamW's, from transformers' AdamW)."""
    rank: int = 256
    """Rank r of the projection (the authors' 130M/350M setting; 128 at 60M, 512 at 1B)."""
    update_proj_gap: int = 200
    """Recompute the SVD basis every this many updates."""
    scale: float = 0.25
    """alpha: multiplies the projected-back update of the projected matrices."""
    proj_type: str = "std"
    """std: project the smaller side; reverse_std: the larger; right / left: always that side."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_unit_interval("optim", beta1=self.beta1, beta2=self.beta2)
        check(self.eps > 0.0, f"optim.eps={self.eps} must be positive")
        check(self.rank >= 1, f"optim.rank={self.rank} must be >= 1")
        check(self.update_proj_gap >= 1, f"optim.update_proj_gap={self.update_proj_gap} must be >= 1")
        check(self.scale > 0.0, f"optim.scale={self.scale} must be positive")
        check_choice("optim.proj_type", self.proj_type, PROJ_TYPES)


def adam_step_size(lr: float, beta1: float, beta2: float, step: int) -> float:
    """lr sqrt(1 - beta2^t) / (1 - beta1^t): Adam's bias corrections folded into the step (eps stays outside)."""
    return lr * math.sqrt(bias_correction(beta2, step)) / bias_correction(beta1, step)


def adam_moments_(exp_avg: Tensor, exp_avg_sq: Tensor, grad: Tensor, beta1: float, beta2: float) -> None:
    """m <- beta1 m + (1 - beta1) g, v <- beta2 v + (1 - beta2) g^2, in place (one tensor)."""
    exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)


def normalized(exp_avg: Tensor, exp_avg_sq: Tensor, eps: float) -> Tensor:
    """m / (sqrt(v) + eps), a new tensor."""
    return exp_avg / exp_avg_sq.sqrt().add_(eps)


class LowRankAdamW(torch.optim.Optimizer):
    """Bookkeeping shared by GaLore and APOLLO: AdamW (decay after the update) on every parameter that is not
    projected, `_step_projected` on the 2-D parameters of groups with role "matrix". Per-parameter state is
    plain tensors and ints: step (updates made), exp_avg, exp_avg_sq, plus what the projection keeps."""

    def _is_projected(self, p: Tensor, group: dict) -> bool:
        return group.get("role") == "matrix" and p.dim() == 2

    @torch.no_grad()
    def step(self, closure=None):
        loss = evaluate_closure(closure)
        index = 0
        for group in self.param_groups:
            dense = []
            for p in group["params"]:
                if p.grad is not None:
                    if p.grad.is_sparse:
                        raise RuntimeError("sparse gradients are not supported")
                    if self._is_projected(p, group):
                        self._step_projected(p, group, index)
                    else:
                        dense.append(p)
                index += 1
            if dense:
                self._step_dense(dense, group)
        return loss

    def _step_dense(self, params: list[Tensor], group: dict) -> None:
        """AdamW over the unprojected tensors of one group, bucketed by step count (one foreach call each)."""
        states = []
        for p in params:
            state = self.state[p]
            if not state:
                state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
            state["step"] += 1
            states.append(state)
        lr, beta1, beta2, eps = group["lr"], group["beta1"], group["beta2"], group["eps"]
        for step, idx in step_buckets(states).items():
            ps, grads = pick(params, idx), [p.grad for p in pick(params, idx)]
            exp_avgs = [states[i]["exp_avg"] for i in idx]
            exp_avg_sqs = [states[i]["exp_avg_sq"] for i in idx]
            torch._foreach_mul_(exp_avgs, beta1)
            torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
            ema_sq_(exp_avg_sqs, grads, beta2)
            denom = adam_denominator(exp_avg_sqs, eps)
            torch._foreach_add_(ps, torch._foreach_div(exp_avgs, denom), alpha=-adam_step_size(lr, beta1, beta2, step))
            decay_after_(ps, lr, group["weight_decay"])

    def _step_projected(self, p: Tensor, group: dict, index: int) -> None:
        raise NotImplementedError


def decay_after_(params: list[Tensor], lr: float, weight_decay: float) -> None:
    """Decoupled weight decay applied AFTER the update, as galore-torch (and transformers' AdamW) do."""
    if weight_decay != 0.0:
        torch._foreach_add_(params, params, alpha=-lr * weight_decay)


class GaLoreAdamW(LowRankAdamW):
    """GaLore-AdamW; a projected matrix's state adds `projection` (its current SVD basis Q)."""

    def __init__(self, params, lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-6,
                 weight_decay: float = 0.0, rank: int = 256, update_proj_gap: int = 200, scale: float = 0.25,
                 proj_type: str = "std"):
        defaults = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, rank=rank,
                        update_proj_gap=update_proj_gap, scale=scale, proj_type=proj_type)
        super().__init__(params, defaults)

    def _step_projected(self, p: Tensor, group: dict, index: int) -> None:
        state = self.state[p]
        if not state:
            state["step"] = 0
        side = projection_side(p.shape, group["proj_type"])
        if "projection" not in state or refresh_due(state["step"], group["update_proj_gap"]):
            state["projection"] = svd_projection(p.grad, group["rank"], side)
        low_rank = project(p.grad, state["projection"], side)
        if "exp_avg" not in state:
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(low_rank), torch.zeros_like(low_rank)
        beta1, beta2 = group["beta1"], group["beta2"]
        adam_moments_(state["exp_avg"], state["exp_avg_sq"], low_rank, beta1, beta2)
        state["step"] += 1
        direction = project_back(normalized(state["exp_avg"], state["exp_avg_sq"], group["eps"]),
                                 state["projection"], side)
        p.add_(direction.mul_(group["scale"]), alpha=-adam_step_size(group["lr"], beta1, beta2, state["step"]))
        decay_after_([p], group["lr"], group["weight_decay"])


def build_galore(groups, cfg: GaLoreConfig) -> torch.optim.Optimizer:
    return GaLoreAdamW(groups, lr=cfg.lr, beta1=cfg.beta1, beta2=cfg.beta2, eps=cfg.eps,
                       weight_decay=cfg.weight_decay, rank=cfg.rank, update_proj_gap=cfg.update_proj_gap,
                       scale=cfg.scale, proj_type=cfg.proj_type)


register(OptimizerSpec(
    name="galore", config_cls=GaLoreConfig, build=build_galore, source="optbench",
    reference="Zhao et al. 2024, arXiv 2403.03507; galore-torch==1.0 (galore_torch.GaLoreAdamW, authors', Apache-2.0)",
    search_space={"lr": LogUniform(1e-3, 3e-2), "rank": Choice((128, 256, 512)),
                  "scale": Choice((0.125, 0.25, 0.5, 1.0)), "update_proj_gap": Choice((50, 200, 500))},
    capabilities=Capabilities(fsdp="owner"),  # SVD of each gradient matrix
))
