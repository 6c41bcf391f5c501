"""Conda, Column-Normalized Adam (Wang, Zhou, Dong, Li, Li, Zhou, Lao, Fang & Lin, 2025, "Conda:
Column-Normalized Adam for Training Large Language Models Faster", arXiv:2509.24218, Algorithm 1).

Adam whose second moment lives in the singular basis of the momentum. For a matrix parameter (n x m):

    M = beta1 M + (1 - beta1) G
    Q = singular vectors of M, recomputed when t mod T == 0 (and at the first step), kept in between:
        n >= m: Q = V^T (m x m), projection X -> X Q^T;   n < m: Q = U (n x n), projection X -> Q^T X
    V = beta2 V + (1 - beta2) proj(G)^2                    (in the projected basis)
    P <- P - lr sqrt(1 - beta2^t) / (1 - beta1^t) * scale * back(proj(M) / (sqrt(V) + eps))
    P <- P (1 - lr wd)                                     (decoupled decay, after the step)

i.e. the update is normalised per column of the rotated momentum, not per entry of the raw one. The basis
is full rank (no memory saving, unlike GaLore): "Conda projects updates into an orthogonal subspace and
applies column-wise second moment normalization". Parameters that are not 2-D (norm gains, biases) get
the same Adam step without the projection.

Source: optbench (foreach for the unprojected tensors, a loop with one SVD each for the matrices).
Reference: pytorch-optimizer==4.1.0 `Conda` (projection_type 'std'), matched step by step in the tests;
like it, every 2-D parameter is projected (embeddings and head included). Its defaults are the authors'
(jie040109/Conda, conda_torch/conda.py and CondaProjector): lr 1e-3, betas (0.9, 0.999), eps 1e-8, no
weight decay, update_proj_gap 2000, scale 1; the paper's own runs use scale 0.25 with lr 6e-3 to 1e-2 and
beta2 0.99. Differences from the reference, neither of which changes a step:
- the basis is kept in the optimizer state as a tensor (`basis`), so a checkpoint loads with
  weights_only=True and a resumed run continues bit for bit (the reference stores a Python projector
  object in the state);
- step counts are per parameter rather than per group.
Bases are recomputed at steps 1, T, 2T, ... (1-based t mod T = 0, the paper's condition, as in
pytorch-optimizer); the authors' code tests the 0-based step count, i.e. refreshes at 1, T + 1, 2T + 1, ...
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from optbench.config.schema import OptimConfig
from optbench.errors import check, check_unit_interval
from optbench.optim.functional.closure import evaluate_closure
from optbench.optim.functional.moments import bias_correction, ema_, ema_sq_, pick, step_buckets, with_grads
from optbench.optim.registry import Capabilities, OptimizerSpec, register
from optbench.optim.search_space import Choice, LogUniform


@dataclass
class CondaConfig(OptimConfig):
    name: str = "conda"
    lr: float = 1e-3
    weight_decay: float = 0.0
    """Decoupled: p <- p (1 - lr wd), after the step."""
    beta1: float = 0.9
    beta2: float = 0.999
    """The paper's LLM runs use 0.99."""
    eps: float = 1e-8
    update_proj_gap: int = 2000
    """Recompute each matrix's singular basis every this many steps (T)."""
    scale: float = 1.0
    """Multiplies the back-projected update of matrices (the paper's runs: 0.25)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_unit_interval("optim", beta1=self.beta1, beta2=self.beta2)
        check(self.eps > 0.0, f"optim.eps={self.eps} must be positive")
        check(self.update_proj_gap >= 1, f"optim.update_proj_gap={self.update_proj_gap} must be >= 1")
        check(self.scale > 0.0, f"optim.scale={self.scale} must be positive")


def singular_basis(m: Tensor) -> Tensor:
    """V^T (m x m) of a tall or square n x m matrix, U (n x n) of a wide one: an orthogonal basis of its
    smaller side, from an SVD in float32 (float64 matrices: in float64)."""
    u, _, vh = torch.linalg.svd(m if m.dtype == torch.float64 else m.float(), full_matrices=False)
    return (vh if m.shape[0] >= m.shape[1] else u).to(m.dtype)


def project(x: Tensor, basis: Tensor) -> Tensor:
    """x in the basis' coordinates: x Q^T for a tall x (Q = V^T), Q^T x for a wide one (Q = U)."""
    return x @ basis.T if x.shape[0] >= x.shape[1] else basis.T @ x


def project_back(y: Tensor, basis: Tensor) -> Tensor:
    """The inverse of `project` (Q is orthogonal): y Q for a tall y, Q y for a wide one."""
    return y @ basis if y.shape[0] >= y.shape[1] else basis @ y


def adam_direction(exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor], eps: float) -> list[Tensor]:
    """m / (sqrt(v) + eps) as new tensors (bias corrections go into the step size)."""
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denom, eps)
    return torch._foreach_div(exp_avgs, denom)


def conda_step_size(lr: float, beta1: float, beta2: float, step: int) -> float:
    """lr sqrt(1 - beta2^t) / (1 - beta1^t): Adam's bias corrections folded into the step."""
    return lr * math.sqrt(bias_correction(beta2, step)) / bias_correction(beta1, step)


class Conda(torch.optim.Optimizer):
    """Conda over param groups with keys lr, beta1, beta2, eps, weight_decay, update_proj_gap, scale. State
    per parameter: step (int), exp_avg, exp_avg_sq (in the projected basis for matrices) and, for 2-D
    parameters, basis (the current singular basis)."""

    def __init__(self, params, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 0.0, update_proj_gap: int = 2000, scale: float = 1.0):
        super().__init__(params, dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                                      update_proj_gap=update_proj_gap, scale=scale))

    @staticmethod
    def _init(p: Tensor) -> dict:
        return {"step": 0, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}

    @torch.no_grad()
    def step(self, closure=None):
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            params, grads, states = with_grads(group, self.state, self._init)
            beta1, beta2, lr, wd = group["beta1"], group["beta2"], group["lr"], group["weight_decay"]
            for step, idx in step_buckets(states).items():
                t = step + 1
                step_size = conda_step_size(lr, beta1, beta2, t)
                vectors = [i for i in idx if params[i].dim() != 2]
                if vectors:
                    p, g = pick(params, vectors), pick(grads, vectors)
                    m = [states[i]["exp_avg"] for i in vectors]
                    v = [states[i]["exp_avg_sq"] for i in vectors]
                    ema_(m, g, beta1)
                    ema_sq_(v, g, beta2)
                    torch._foreach_add_(p, adam_direction(m, v, group["eps"]), alpha=-step_size)
                    if wd != 0.0:
                        torch._foreach_mul_(p, 1.0 - lr * wd)
                for i in idx:
                    if params[i].dim() == 2:
                        self._matrix_step(params[i], grads[i], states[i], group, t, step_size)
            for s in states:
                s["step"] += 1
        return loss

    @staticmethod
    def _matrix_step(p: Tensor, grad: Tensor, state: dict, group: dict, t: int, step_size: float) -> None:
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1.0 - group["beta1"])
        if "basis" not in state or t % group["update_proj_gap"] == 0:
            state["basis"] = singular_basis(exp_avg)
        g, m = project(grad, state["basis"]), project(exp_avg, state["basis"])
        exp_avg_sq.mul_(group["beta2"]).addcmul_(g, g, value=1.0 - group["beta2"])
        direction = project_back(m / exp_avg_sq.sqrt().add_(group["eps"]), state["basis"])
        p.add_(direction.mul_(group["scale"]), alpha=-step_size)
        if group["weight_decay"] != 0.0:
            p.mul_(1.0 - group["lr"] * group["weight_decay"])


def build_conda(groups, cfg: CondaConfig) -> torch.optim.Optimizer:
    return Conda(groups, lr=cfg.lr, beta1=cfg.beta1, beta2=cfg.beta2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                 update_proj_gap=cfg.update_proj_gap, scale=cfg.scale)


register(OptimizerSpec(
    name="conda", config_cls=CondaConfig, build=build_conda, source="optbench",
    reference="Wang et al. 2025 (arXiv:2509.24218); pytorch-optimizer==4.1.0 Conda (projection 'std'); "
              "jie040109/Conda conda_torch",
    search_space={"lr": LogUniform(1e-4, 3e-2), "beta2": Choice((0.95, 0.99, 0.999)),
                  "scale": Choice((0.25, 0.5, 1.0)), "update_proj_gap": Choice((200, 500, 2000)),
                  "weight_decay": Choice((0.0, 0.01, 0.1))},
    capabilities=Capabilities(fsdp="owner"),  # SVD of each momentum matrix
))
