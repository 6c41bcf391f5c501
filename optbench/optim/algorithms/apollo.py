"""APOLLO and APOLLO-Mini (Zhu, Zhang, Cong, Liu, Park, Chandra, Long, Pan, Wang, Lee, 2024, "APOLLO: SGD-like
Memory, AdamW-level Performance", arXiv 2412.05270, MLSys 2025): AdamW's element-wise learning-rate scaling
coarsened to one factor per channel (APOLLO) or per tensor (APOLLO-Mini), the factors estimated by Adam run
on a random projection of the gradient.

Algorithm 1, per hidden matrix W (m x n; the smaller side is projected, the larger one holds the channels):

    every T = update_proj_gap updates (and at the first):  P <- N(0, 1/r) from a fresh seed (r x m)
    R_t = P G_t                                              (r x n; G_t W's full-rank gradient)
    m <- beta1 m + (1 - beta1) R_t,  v <- beta2 v + (1 - beta2) R_t^2,  R~_t = m_hat / (sqrt(v_hat) + eps)
    APOLLO:       s_j = ||R~_t[:, j]|| / ||R_t[:, j]||   (one factor per channel j),  G~_t = G_t diag(s)
    APOLLO-Mini:  s   = ||R~_t|| / ||R_t||               (one factor per tensor),      G~_t = s G_t
    norm-growth limiter (from Fira): if ||G~_t|| > gamma ||G~_{t-1}||, G~_t <- G~_t gamma ||G~_{t-1}|| / ||G~_t||
    W <- W - lr alpha G~_t,   W <- W (1 - lr wd)

Every other parameter (embeddings, head, vectors, matrices that are not 2-D) takes a plain AdamW step in the
same optimizer (routing's `role` key picks the projected ones), exactly as GaLore's does (shared bookkeeping:
`LowRankAdamW` in galore.py; the authors' code is built on galore-torch).

Follows the paper's Algorithm 1; no permissively licensed package implements it faithfully. The nearest is
pytorch_optimizer==4.1.0 `APOLLO` (Apache-2.0), which tests/optim/test_apollo.py checks our moments against
(same projections, same gradients); its update differs from the paper in five places, where we follow the
paper:
- it scales the PROJECTED gradient and maps it back, W -= P^T (R_t diag(s)) (a rank-r update), where the
  paper scales the full-rank gradient, W -= G_t diag(s) (a full-rank update: the point of APOLLO);
- it multiplies by sqrt(scale) and again by scale in the projector's project_back (scale^1.5); we take the
  paper's alpha = sqrt(scale), so `scale` keeps the meaning of the authors' public hyperparameter (128 for
  APOLLO-Mini, i.e. alpha = sqrt(128) ~ 11.3; 1 for APOLLO);
- it folds Adam's bias corrections into the step size (R~ = m / (sqrt(v) + eps), step lr sqrt(1 - beta2^t) /
  (1 - beta1^t)); the paper's R~ is bias-corrected itself. Not a rounding matter: the limiter compares the
  norms of consecutive scaled gradients, and the uncorrected ones grow ~2x over the first ten steps (1 /
  sqrt(1 - beta2^t) outpaces 1 / (1 - beta1^t)), so the folded form throttles the early updates, ours not;
- its decoupled decay uses the bias-corrected step size, where the paper's is lr wd;
- it refreshes P at t = T, 2T, ... counted from 1 (so the first projection lasts T - 1 steps), where Algorithm 1
  refreshes when t mod T = 0 counted from 0, as GaLore does.
The unprojected parameters fold the corrections as GaLoreAdamW does (that is AdamW either way). The
1e-8 added to ||R_t|| and to the previous norm in the limiter keep zero channels and zero gradients finite.
Neither the moments nor the limiter's memory are reset when P is refreshed (as in pytorch_optimizer).
Defaults: the authors' LLaMA pretraining recipes (lr 0.01, rank 256 / scale 1 / channel-wise for APOLLO;
rank 1 / scale 128 / tensor-wise for APOLLO-Mini; update_proj_gap 200; gamma 1.01) with GaLoreAdamW's betas
(0.9, 0.999), eps 1e-6 and weight decay 0. The random projection is regenerated from its seed at every step
rather than stored (state: an int seed per matrix, as the paper's "seed" in Algorithm 1), so the optimizer
state of a projected m x n matrix is the two r x max(m, n) moments and one scalar.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from optbench.config.schema import OptimConfig
from optbench.errors import check, check_choice, check_unit_interval
from optbench.optim.algorithms.galore import LowRankAdamW, adam_moments_, decay_after_
from optbench.optim.functional.low_rank import (channel_norms, project, projection_seed, projection_side,
                                                random_projection, refresh_due)
from optbench.optim.functional.moments import bias_correction
from optbench.optim.registry import Capabilities, OptimizerSpec, register
from optbench.optim.search_space import Choice, LogUniform

SCALE_TYPES = ("channel", "tensor")


@dataclass
class APOLLOConfig(OptimConfig):
    name: str = "apollo"
    lr: float = 0.01
    weight_decay: float = 0.0
    beta1: float = 0.9
    """Adam's first-moment decay (in the projected space for the hidden matrices)."""
    beta2: float = 0.999
    """Adam's second-moment decay."""
    eps: float = 1e-6
    """Added to sqrt(v), outside the bias correction."""
    rank: int = 256
    """Rank r of the random projection."""
    update_proj_gap: int = 200
    """Draw a new projection (from a new seed) every this many updates."""
    scale: float = 1.0
    """The update of a projected matrix is multiplied by alpha = sqrt(scale) (128 for APOLLO-Mini)."""
    scale_type: str = "channel"
    """channel: one scaling factor per channel of the unprojected side (APOLLO); tensor: one per matrix (Mini)."""
    norm_growth_limit: float = 1.01
    """gamma: the scaled gradient's norm grows by at most this factor per step; 0 disables the limiter."""
    seed: int = 0
    """Seeds the random projections (with each matrix's index and refresh count)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_unit_interval("optim", beta1=self.beta1, beta2=self.beta2)
        check(self.eps > 0.0, f"optim.eps={self.eps} must be positive")
        check(self.rank >= 1, f"optim.rank={self.rank} must be >= 1")
        check(self.update_proj_gap >= 1, f"optim.update_proj_gap={self.update_proj_gap} must be >= 1")
        check(self.scale > 0.0, f"optim.scale={self.scale} must be positive")
        check_choice("optim.scale_type", self.scale_type, SCALE_TYPES)
        check(self.norm_growth_limit == 0.0 or self.norm_growth_limit >= 1.0,
              f"optim.norm_growth_limit={self.norm_growth_limit} must be >= 1 (or 0 to disable)")
        check(self.seed >= 0, f"optim.seed={self.seed} must be >= 0")


@dataclass
class APOLLOMiniConfig(APOLLOConfig):
    name: str = "apollo-mini"
    rank: int = 1
    """Rank 1: SGD-like memory (two 1 x max(m, n) moments per matrix)."""
    scale: float = 128.0
    """alpha = sqrt(128): compensates the rank-1 estimate's smaller scaling factor."""
    scale_type: str = "tensor"
    """One scaling factor per matrix."""


def adam_direction(exp_avg: Tensor, exp_avg_sq: Tensor, beta1: float, beta2: float, step: int, eps: float) -> Tensor:
    """R~ = m_hat / (sqrt(v_hat) + eps), both moments bias-corrected (the paper's AdamW step in the low-rank space)."""
    return (exp_avg / bias_correction(beta1, step)) / (exp_avg_sq / bias_correction(beta2, step)).sqrt().add_(eps)


def scaling_factor(normalized_low_rank: Tensor, low_rank: Tensor, side: str, scale_type: str) -> Tensor:
    """s = ||R~|| / ||R||, per channel (a column of the full gradient on the left side, a row on the right,
    shaped to broadcast over it) or per tensor (a 0-dim tensor)."""
    if scale_type == "channel":
        return channel_norms(normalized_low_rank, side) / (channel_norms(low_rank, side) + 1e-8)
    return normalized_low_rank.norm() / (low_rank.norm() + 1e-8)


def limit_norm_growth_(update: Tensor, previous_norm: Tensor | None, gamma: float) -> Tensor:
    """Fira's norm-growth limiter, in place: shrink `update` so that ||update|| <= gamma ||previous||, and return
    its norm after the shrinking (the next step's `previous_norm`). No limit on the first step or with gamma 0."""
    norm = update.norm()
    if previous_norm is None or gamma == 0.0:
        return norm
    shrink = (norm / (previous_norm + 1e-8)).clamp_min(gamma) / gamma
    update.div_(shrink)
    return norm / shrink


class APOLLO(LowRankAdamW):
    """APOLLO / APOLLO-Mini; a projected matrix's state: step, seed (of its current projection), exp_avg and
    exp_avg_sq (r x n or m x r), scaled_norm (the last scaled gradient's norm, a 0-dim tensor)."""

    def __init__(self, params, lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-6,
                 weight_decay: float = 0.0, rank: int = 256, update_proj_gap: int = 200, scale: float = 1.0,
                 scale_type: str = "channel", norm_growth_limit: float = 1.01, seed: int = 0):
        defaults = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, rank=rank,
                        update_proj_gap=update_proj_gap, scale=scale, scale_type=scale_type,
                        norm_growth_limit=norm_growth_limit, seed=seed)
        super().__init__(params, defaults)

    def _step_projected(self, p: Tensor, group: dict, index: int) -> None:
        state = self.state[p]
        if not state:
            state["step"] = 0
        gap, grad = group["update_proj_gap"], p.grad
        side = projection_side(p.shape)
        if "seed" not in state or refresh_due(state["step"], gap):
            state["seed"] = projection_seed(group["seed"], index, state["step"] // gap)
        basis = random_projection(state["seed"], p.shape, group["rank"], side, p.device, grad.dtype)
        low_rank = project(grad, basis, side)
        if "exp_avg" not in state:
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(low_rank), torch.zeros_like(low_rank)
        beta1, beta2 = group["beta1"], group["beta2"]
        adam_moments_(state["exp_avg"], state["exp_avg_sq"], low_rank, beta1, beta2)
        state["step"] += 1
        compensated = adam_direction(state["exp_avg"], state["exp_avg_sq"], beta1, beta2, state["step"], group["eps"])
        scaled = grad * scaling_factor(compensated, low_rank, side, group["scale_type"])
        state["scaled_norm"] = limit_norm_growth_(scaled, state.get("scaled_norm"), group["norm_growth_limit"])
        p.add_(scaled, alpha=-group["lr"] * math.sqrt(group["scale"]))
        decay_after_([p], group["lr"], group["weight_decay"])


def build_apollo(groups, cfg: APOLLOConfig) -> torch.optim.Optimizer:
    return APOLLO(groups, lr=cfg.lr, beta1=cfg.beta1, beta2=cfg.beta2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                  rank=cfg.rank, update_proj_gap=cfg.update_proj_gap, scale=cfg.scale, scale_type=cfg.scale_type,
                  norm_growth_limit=cfg.norm_growth_limit, seed=cfg.seed)


REFERENCE = ("Zhu et al. 2024, arXiv 2412.05270, Algorithm 1 (followed: no faithful permissive implementation); "
             "moments checked against pytorch_optimizer==4.1.0 APOLLO")

register(OptimizerSpec(
    name="apollo", config_cls=APOLLOConfig, build=build_apollo, source="optbench", reference=REFERENCE,
    search_space={"lr": LogUniform(1e-3, 3e-2), "rank": Choice((128, 256, 512)),
                  "update_proj_gap": Choice((50, 200, 500))},
    capabilities=Capabilities(fsdp="owner"),  # channel norms of each projected matrix
))

register(OptimizerSpec(
    name="apollo-mini", config_cls=APOLLOMiniConfig, build=build_apollo, source="optbench", reference=REFERENCE,
    search_space={"lr": LogUniform(1e-3, 3e-2), "scale": Choice((32.0, 128.0, 512.0))},
    capabilities=Capabilities(fsdp="owner"),  # the norm of each projected matrix
))
