"""Shampoo (Gupta, Koren & Singer 2018, "Shampoo: Preconditioned Stochastic Tensor Optimization",
arXiv 1802.09568) with layer-wise learning-rate grafting (Anil, Gupta, Koren, Regan & Singer 2020,
"Scalable Second Order Optimization for Deep Learning", arXiv 2002.09018), in the form of Meta's
distributed_shampoo (Shi et al. 2023, arXiv 2309.06497; facebookresearch/optimizers,
distributed_shampoo/distributed_shampoo.py @ b91f46b4045d9fb251d3a6c60a9c1f0fc9f3b032 with
preconditioner/shampoo_preconditioner_list.py, adagrad_preconditioner_list.py and matrix_functions.py
@ 4b06b239eec2127da174e3f9772b057f0a44d3d5). Per step t, for a matrix G (order k: a factor per dimension,
exponent -1/(2k)):

    L <- beta2 L + (1 - beta2) G G^T,  R <- beta2 R + (1 - beta2) G^T G    (or sums: statistics="sum")
    every precondition_frequency steps from start_preconditioning_step on:
        L^ = (L / (1 - beta2^t) + eps I)^{-1/4},  R^ likewise                 (eigh, float32)
    m <- beta1 m + (1 - beta1) G,  m^ = m / (1 - beta1^t)                    (Nesterov: see `nesterov`)
    D = L^ m^ R^                                    Shampoo's direction
    A = grafted optimizer's direction from m^ (Adam: m^ / (sqrt(v / (1 - beta2g^t)) + eps_g))
    D <- D ||A|| / (||D|| + 1e-16)                   grafting: Shampoo's direction, the graft's norm
    before start_preconditioning_step: D = A
    W <- W (1 - lr wd) - lr D                        decoupled weight decay

Norms are per block: a tensor with a dimension above max_preconditioner_dim is cut into blocks of at
most that size along every dimension, each with its own factors, as the reference does; for layers
within the limit a block is the layer.

Defaults are the reference README's AdamW recipe ("Example 4", README @ d705fcd492fe: lr 1e-3, betas
(0.9, 0.999), epsilon 1e-12, weight_decay 1e-5, max_preconditioner_dim 8192, precondition_frequency 100,
decoupled decay, Adam grafting with beta2 0.999); start_preconditioning_step -1 means
precondition_frequency, as there, so the first 99 steps are AdamW's. Grafting epsilon 1e-8 is
AdamGraftingConfig's default and the README's advice ("grafting_epsilon equal to the previous epsilon",
AdamW's 1e-8); its AdamW example itself writes 1e-12.

Deliberate deviations from distributed_shampoo:
- Vectors (gains, biases) take the grafted optimizer's step alone (the reference gives them a full
  n x n factor with exponent -1/2): as Scalable Shampoo's skip_preconditioning_rank_lt option does,
  because an n^2 factor for a bias buys little and costs an eigendecomposition.
- merge_dims defaults to False (reference: use_merge_dims=True): merging folds every matrix with at
  most max_preconditioner_dim entries (a 64 x 128 layer, say) into one vector with a full-matrix
  factor, which is no longer the Kronecker-factored algorithm of the paper; set it True to merge.
- Nesterov is `beta3 = beta1^2` of the reference (its NAdam-like "filtered gradient" interpolation), the
  Nesterov form that acts on beta1; the reference's separate SGD-style `momentum`/`dampening`
  (default 0, dropped in its later versions) are left out, as are coupled (L2) weight decay, iterate
  averaging and the eigenvalue-corrected / eigendecomposed variants (SOAP is its own optimizer here).
- The grafted step alone is computed with torch.optim.AdamW's arithmetic (W (1 - lr wd), then
  addcdiv of m by sqrt(v) / sqrt(1 - beta2^t) + eps at lr / (1 - beta1^t)): the same numbers as the
  reference's up to rounding, and bit-equal to AdamW, so before preconditioning starts it IS AdamW.
"""

from __future__ import annotations

from dataclasses import dataclass

import functools

import torch
from torch import Tensor

from optbench.config.schema import OptimConfig
from optbench.errors import check, check_choice, check_unit_interval
from optbench.optim.functional.closure import evaluate_closure
from optbench.optim.functional.preconditioners import (contract, inverse_root, merge_small_dims, split_blocks,
                                                       update_factors_)
from optbench.optim.functional.sharding import run_sharded
from optbench.optim.registry import Capabilities, OptimizerSpec, register
from optbench.optim.search_space import Choice, LogUniform

GRAFTINGS = ("adam", "rmsprop", "adagrad", "sgd", "none")
STATISTICS = ("ema", "sum")
REFERENCE_COMMIT = "b91f46b4045d9fb251d3a6c60a9c1f0fc9f3b032"


@dataclass
class ShampooConfig(OptimConfig):
    name: str = "shampoo"
    lr: float = 1e-3
    weight_decay: float = 1e-5
    """Decoupled (AdamW-style), as the reference's use_decoupled_weight_decay=True."""
    beta1: float = 0.9
    """EMA of the gradient (the reference's filtered gradient), shared by Shampoo and the graft."""
    beta2: float = 0.999
    """EMA of the Kronecker factors (statistics="ema")."""
    epsilon: float = 1e-12
    """Added to the (bias-corrected) factors' diagonal before their inverse roots."""
    nesterov: bool = False
    """Nesterov on beta1: use beta1 m_t + (1 - beta1) g_t, bias-corrected (reference's beta3 = beta1^2)."""
    statistics: str = "ema"
    """ema: factors are EMAs with beta2 (bias-corrected); sum: AdaGrad-style sums (the 2018 paper)."""
    precondition_frequency: int = 100
    """Recompute the inverse roots every this many steps."""
    start_preconditioning_step: int = -1
    """Graft alone before this step, Shampoo from it; -1: precondition_frequency. Must be >= the frequency."""
    max_preconditioner_dim: int = 8192
    """Block tensors so that no dimension of a block (and of its factors) exceeds this."""
    merge_dims: bool = False
    """Merge neighbouring dimensions while their product stays <= max_preconditioner_dim (reference: True)."""
    bias_correction: bool = True
    """Bias-correct m (beta1) and the factor EMAs (beta2) as the reference does."""
    grafting: str = "adam"
    """adam | rmsprop | adagrad | sgd | none: whose per-block step norm Shampoo's direction takes."""
    grafting_beta2: float = 0.999
    """Second-moment decay of Adam / RMSprop grafting."""
    grafting_eps: float = 1e-8
    """Epsilon of Adam / RMSprop / AdaGrad grafting, added to the square root of the second moment."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_unit_interval("optim", beta1=self.beta1)
        check(0.0 <= self.beta2 < 1.0, f"optim.beta2={self.beta2} must be in [0, 1) (statistics=sum for sums)")
        check_unit_interval("optim", grafting_beta2=self.grafting_beta2)
        check(self.epsilon > 0.0, f"optim.epsilon={self.epsilon} must be positive")
        check(self.grafting_eps > 0.0, f"optim.grafting_eps={self.grafting_eps} must be positive")
        check_choice("optim.statistics", self.statistics, STATISTICS)
        check_choice("optim.grafting", self.grafting, GRAFTINGS)
        check(self.precondition_frequency >= 1,
              f"optim.precondition_frequency={self.precondition_frequency} must be >= 1")
        check(self.start_preconditioning_step == -1 or self.start_preconditioning_step >= self.precondition_frequency,
              f"optim.start_preconditioning_step={self.start_preconditioning_step} must be -1 or >= "
              f"precondition_frequency={self.precondition_frequency}")
        check(self.max_preconditioner_dim >= 1,
              f"optim.max_preconditioner_dim={self.max_preconditioner_dim} must be >= 1")


def first_moment_(exp_avg: Tensor, grad: Tensor, beta1: float, nesterov: bool) -> Tensor:
    """Update m <- beta1 m + (1 - beta1) g in place; return the gradient estimate's numerator: m, or with
    Nesterov beta1 m + (1 - beta1) g (the reference's beta3 = beta1^2 interpolation of m_{t-1} and g)."""
    if nesterov:
        estimate = exp_avg.lerp(grad, 1.0 - beta1 * beta1)
        exp_avg.lerp_(grad, 1.0 - beta1)
        return estimate
    return exp_avg.lerp_(grad, 1.0 - beta1)


def first_moment_correction(beta1: float, step: int, nesterov: bool) -> float:
    """The estimate's bias correction 1 - beta3 beta1^(t-1): 1 - beta1^t, with Nesterov 1 - beta1^(t+1)."""
    if nesterov:
        return 1.0 - beta1 * beta1 * beta1 ** (step - 1)
    return 1.0 - beta1 ** step  # written as torch.optim.Adam does, for bit-equal steps


def update_graft_(graft: Tensor | None, grad: Tensor, grafting: str, beta2: float) -> None:
    """The grafted optimizer's second moment, in place: an EMA (adam, rmsprop) or a sum (adagrad) of g^2."""
    if grafting in ("adam", "rmsprop"):
        graft.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    elif grafting == "adagrad":
        graft.addcmul_(grad, grad)


def graft_denominator(graft: Tensor | None, grafting: str, beta2: float, eps: float, step: int) -> Tensor | None:
    """sqrt(v^) + eps of the grafted optimizer (Adam bias-corrects v, RMSprop and AdaGrad do not), with
    torch.optim.Adam's arithmetic; None for sgd/none, whose direction is the gradient estimate itself."""
    if grafting in ("sgd", "none"):
        return None
    root = graft.sqrt()
    if grafting == "adam":
        root.div_((1.0 - beta2 ** step) ** 0.5)
    return root.add_(eps)


def shampoo_direction(estimate: Tensor, inv_roots: list[Tensor]) -> Tensor:
    """L^ X R^ (one inverse root per dimension), in float32."""
    return contract(estimate.float(), inv_roots)


def graft_norm_(direction: Tensor, graft: Tensor) -> Tensor:
    """Rescale Shampoo's direction to the graft's norm, in place: D ||A|| / (||D|| + 1e-16)."""
    return direction.mul_(torch.linalg.vector_norm(graft) / (torch.linalg.vector_norm(direction) + 1e-16))


class Shampoo(torch.optim.Optimizer):
    """Bookkeeping around the functions above. Per-parameter state (plain tensors and ints): step;
    exp_avg (if beta1 > 0); graft (the grafted optimizer's second moment, unless sgd/none); for tensors
    of order >= 2, factors and inv_roots: one list per block, one float32 matrix per dimension."""

    def __init__(self, params, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-12,
                 weight_decay: float = 1e-5, nesterov: bool = False, statistics: str = "ema",
                 precondition_frequency: int = 100, start_preconditioning_step: int = -1,
                 max_preconditioner_dim: int = 8192, merge_dims: bool = False, bias_correction: bool = True,
                 grafting: str = "adam", grafting_beta2: float = 0.999, grafting_eps: float = 1e-8):
        if start_preconditioning_step == -1:
            start_preconditioning_step = precondition_frequency
        defaults = dict(lr=lr, beta1=beta1, beta2=beta2, epsilon=epsilon, weight_decay=weight_decay,
                        nesterov=nesterov, statistics=statistics, precondition_frequency=precondition_frequency,
                        start_preconditioning_step=start_preconditioning_step,
                        max_preconditioner_dim=max_preconditioner_dim, merge_dims=merge_dims,
                        bias_correction=bias_correction, grafting=grafting, grafting_beta2=grafting_beta2,
                        grafting_eps=grafting_eps)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = evaluate_closure(closure)
        stepped = [(p, group) for group in self.param_groups for p in group["params"] if p.grad is not None]
        due = [(p, group) for p, group in stepped if self._accumulate(p, group)]
        run_sharded([(functools.partial(self._inverse_roots, p, group),  # spread over data-parallel ranks
                      [root for roots in self.state[p]["inv_roots"] for root in roots]) for p, group in due])
        for p, group in stepped:
            self._update(p, group)
        return loss

    def _shape(self, p: Tensor, group: dict) -> tuple[int, ...]:
        """The shape Shampoo sees: the parameter's, or with merge_dims its small dimensions merged."""
        if group["merge_dims"]:
            return merge_small_dims(p.shape, group["max_preconditioner_dim"])
        return tuple(p.shape)

    def _init_state(self, p: Tensor, group: dict) -> None:
        state = self.state[p]
        state["step"] = 0
        if group["beta1"] > 0.0:
            state["exp_avg"] = torch.zeros_like(p)
        if group["grafting"] not in ("sgd", "none"):
            state["graft"] = torch.zeros_like(p)
        if p.dim() >= 2:
            blocks = split_blocks(torch.empty(self._shape(p, group), device="meta"), group["max_preconditioner_dim"])
            state["factors"] = [[torch.zeros(d, d, dtype=torch.float32, device=p.device) for d in b.shape]
                                for b in blocks]
            state["inv_roots"] = [[torch.eye(d, dtype=torch.float32, device=p.device) for d in b.shape]
                                  for b in blocks]

    def _accumulate(self, p: Tensor, group: dict) -> bool:
        """Statistics from this gradient: Kronecker factors (matrices) and the graft's second moment.

        True when the inverse roots are due (computed by `step`, sharded across ranks)."""
        state = self.state[p]
        if not state:
            self._init_state(p, group)
        state["step"] += 1
        t, shape = state["step"], self._shape(p, group)
        update_graft_(state.get("graft"), p.grad, group["grafting"], group["grafting_beta2"])
        if p.dim() < 2:
            return False
        ema = group["statistics"] == "ema"
        for factors, g in zip(state["factors"], split_blocks(p.grad.reshape(shape), group["max_preconditioner_dim"])):
            update_factors_(factors, g, group["beta2"] if ema else None)
        start, frequency = group["start_preconditioning_step"], group["precondition_frequency"]
        return t == start or (t > start and t % frequency == 0)

    def _inverse_roots(self, p: Tensor, group: dict) -> None:
        state = self.state[p]
        ema, t = group["statistics"] == "ema", state["step"]
        factor_correction = 1.0 - group["beta2"] ** t if ema and group["bias_correction"] else 1.0
        for factors, inv_roots in zip(state["factors"], state["inv_roots"]):
            for factor, inv_root in zip(factors, inv_roots):
                inv_root.copy_(inverse_root(factor / factor_correction, 2 * len(factors), group["epsilon"]))

    def _update(self, p: Tensor, group: dict) -> None:
        state = self.state[p]
        t, grad, grafting = state["step"], p.grad, group["grafting"]
        matrix = p.dim() >= 2
        shape, block = self._shape(p, group), group["max_preconditioner_dim"]

        # Direction: the graft's alone (vectors; matrices before start), else Shampoo's at the graft's norm.
        lr, decay = group["lr"], 1.0 - group["lr"] * group["weight_decay"]
        if group["beta1"] > 0.0:
            numerator = first_moment_(state["exp_avg"], grad, group["beta1"], group["nesterov"])
            correction = first_moment_correction(group["beta1"], t, group["nesterov"]) \
                if group["bias_correction"] else 1.0
        else:
            numerator, correction = grad, 1.0
        denom = graft_denominator(state.get("graft"), grafting, group["grafting_beta2"], group["grafting_eps"], t)
        if not matrix or (t < group["start_preconditioning_step"] and grafting != "none"):
            # W <- W (1 - lr wd) - (lr / c1) m / denom: torch.optim.AdamW's own arithmetic (for grafting=adam).
            if decay != 1.0:
                p.mul_(decay)
            if denom is None:
                p.add_(numerator, alpha=-lr / correction)
            else:
                p.addcdiv_(numerator, denom, value=-lr / correction)
            return

        estimate = numerator / correction
        graft = estimate / denom if denom is not None else estimate
        direction = torch.empty(shape, dtype=torch.float32, device=p.device)
        for out, m, a, inv_roots in zip(split_blocks(direction, block), split_blocks(estimate.reshape(shape), block),
                                        split_blocks(graft.reshape(shape), block), state["inv_roots"]):
            d = shampoo_direction(m, inv_roots)
            out.copy_(graft_norm_(d, a.float()) if grafting != "none" else d)
        if decay != 1.0:
            p.mul_(decay)
        p.add_(direction.view(p.shape).to(p.dtype), alpha=-lr)


def build_shampoo(groups, cfg: ShampooConfig) -> torch.optim.Optimizer:
    return Shampoo(groups, lr=cfg.lr, beta1=cfg.beta1, beta2=cfg.beta2, epsilon=cfg.epsilon,
                   weight_decay=cfg.weight_decay, nesterov=cfg.nesterov, statistics=cfg.statistics,
                   precondition_frequency=cfg.precondition_frequency,
                   start_preconditioning_step=cfg.start_preconditioning_step,
                   max_preconditioner_dim=cfg.max_preconditioner_dim, merge_dims=cfg.merge_dims,
                   bias_correction=cfg.bias_correction, grafting=cfg.grafting, grafting_beta2=cfg.grafting_beta2,
                   grafting_eps=cfg.grafting_eps)


register(OptimizerSpec(
    name="shampoo", config_cls=ShampooConfig, build=build_shampoo, source="optbench",
    reference=(f"Gupta, Koren & Singer 2018, arXiv 1802.09568; Anil et al. 2020, arXiv 2002.09018 (grafting); "
               f"facebookresearch/optimizers distributed_shampoo @ {REFERENCE_COMMIT[:12]}"),
    search_space={"lr": LogUniform(1e-4, 1e-2), "epsilon": Choice((1e-12, 1e-10, 1e-8, 1e-6)),
                  "precondition_frequency": Choice((10, 20, 50, 100)),
                  "weight_decay": Choice((0.0, 1e-5, 0.01, 0.1))},
    capabilities=Capabilities(fsdp="owner"),
))
