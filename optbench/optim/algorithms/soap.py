"""SOAP (Vyas, Morwani, Zhao, Kwun, Shapira, Brandfonbrener, Janson, Kakade, 2024, "SOAP: Improving and
Stabilizing Shampoo using Adam", arXiv 2409.11321): Adam run in the eigenbasis of Shampoo's preconditioner.

Per parameter (a matrix G; higher orders take one factor per dimension, see functional/preconditioners.py):

    L <- beta_s L + (1 - beta_s) G G^T,  R <- beta_s R + (1 - beta_s) G^T G     (Shampoo's factors)
    Q_L, Q_R: eigenbases of L, R (eigh at the first step, then every `precondition_frequency` steps one
              power iteration + QR from the previous basis)
    m <- beta1 m + (1 - beta1) G                       first moment, in the ORIGINAL space
    G' = Q_L^T G Q_R,  v <- beta2 v + (1 - beta2) G'^2 second moment, in the rotated space
    W <- W - lr sqrt(1 - beta2^t) / (1 - beta1^t) Q_L [(Q_L^T m Q_R) / (sqrt(v) + eps)] Q_R^T
    W <- W (1 - lr wd)

Matches the authors' reference, nikhilvyas/SOAP `soap.py` (commit f42d296cb4146a67fbe811371e6badb9a39cc54d),
step for step:
- the first step only accumulates L, R from the gradient and takes their eigenbases: no update, no decay
  (for every parameter, vectors included), so the projection never uses the current gradient's own basis;
- L, R (and a basis refresh) are updated AFTER the parameter step, from the same gradient;
- at a refresh the columns of the old basis are sorted by their eigenvalue estimates and v is permuted
  along with them, so v stays aligned with the new basis;
- dimensions above `max_precond_dim` (an LLM's vocabulary) and vectors (unless `precondition_1d`) get no
  factor: the identity basis, i.e. plain Adam along them;
- decoupled weight decay after the update, with lr but without the bias-corrected step size.
The first moment: the reference keeps m in the rotated space and, around every preconditioner update,
rotates it back and into the (possibly new) basis, which is the same as keeping it in the original space
and projecting it each step; we do the latter, as pytorch_optimizer 4.1.0 does (one fewer projection per
step and no drift from repeated back-and-forth rotation). Every other hyperparameter and default is the
reference's; `data_format` (channels-last convolutions) is left out: optbench trains no convolutions.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from optbench.config.schema import OptimConfig
from optbench.errors import check, check_unit_interval
from optbench.optim.functional.closure import evaluate_closure
from optbench.optim.functional.preconditioners import (contract, eigenbasis, merge_small_dims,
                                                       refresh_eigenbasis, update_factors_)
from optbench.optim.functional.sharding import Job, run_sharded
from optbench.optim.registry import Capabilities, OptimizerSpec, register
from optbench.optim.search_space import Choice, LogUniform

REFERENCE_COMMIT = "f42d296cb4146a67fbe811371e6badb9a39cc54d"


@dataclass
class SOAPConfig(OptimConfig):
    name: str = "soap"
    lr: float = 3e-3
    weight_decay: float = 0.01
    beta1: float = 0.95
    """Adam's first-moment decay."""
    beta2: float = 0.95
    """Adam's second-moment decay (in the eigenbasis)."""
    shampoo_beta: float = -1.0
    """Decay of Shampoo's factors L, R; negative: use beta2 (the reference's -1)."""
    eps: float = 1e-8
    """Adam's epsilon, added to sqrt(v)."""
    precondition_frequency: int = 10
    """Refresh the eigenbases (power iteration + QR) every this many steps."""
    max_precond_dim: int = 10000
    """Dimensions larger than this get no factor (identity basis): excludes vocabularies, keeps layers."""
    merge_dims: bool = False
    """Merge neighbouring dimensions while their product stays <= max_precond_dim (for >2-D tensors)."""
    precondition_1d: bool = False
    """Also give vectors (gains, biases) a factor; the reference default treats them with plain Adam."""
    normalize_grads: bool = False
    """Rescale each update to unit RMS (helps at large precondition_frequency, ~100, hurts at ~10)."""
    correct_bias: bool = True
    """Adam's bias correction."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_unit_interval("optim", beta1=self.beta1, beta2=self.beta2)
        check(self.shampoo_beta < 1.0,
              f"optim.shampoo_beta={self.shampoo_beta} must be in [0, 1), or negative to use beta2")
        check(self.eps > 0.0, f"optim.eps={self.eps} must be positive")
        check(self.precondition_frequency >= 1,
              f"optim.precondition_frequency={self.precondition_frequency} must be >= 1")
        check(self.max_precond_dim >= 1, f"optim.max_precond_dim={self.max_precond_dim} must be >= 1")


def preconditioned_dims(shape: tuple[int, ...], vector: bool, max_dim: int, precondition_1d: bool) -> list[bool]:
    """Which dimensions get a Kronecker factor: each one up to max_dim; a vector only with precondition_1d."""
    if vector:
        return [precondition_1d and shape[0] <= max_dim]
    return [d <= max_dim for d in shape]


def adam_in_eigenbasis(grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, bases: list[Tensor | None],
                       beta1: float, beta2: float, eps: float) -> Tensor:
    """Update both moments in place (m in the original space, v in the rotated one) and return the
    un-scaled Adam direction rotated back: Q_L [(Q_L^T m Q_R) / (sqrt(v) + eps)] Q_R^T."""
    grad_rotated = contract(grad.float(), bases)
    exp_avg.lerp_(grad, 1.0 - beta1)
    exp_avg_sq.lerp_(grad_rotated.square().to(exp_avg_sq.dtype), 1.0 - beta2)
    denom = exp_avg_sq.sqrt().add_(eps)
    exp_avg_rotated = contract(exp_avg.float(), bases)
    # in float32 like the bases (a float64 v, train.dtype=float64, would promote the quotient)
    return contract((exp_avg_rotated / denom).float(), bases, transpose=True)


def step_size(lr: float, beta1: float, beta2: float, step: int, correct_bias: bool) -> float:
    """lr sqrt(1 - beta2^t) / (1 - beta1^t), Adam's bias corrections folded into the step (the reference's)."""
    if not correct_bias:
        return lr
    return lr * (math.sqrt(1.0 - beta2 ** step) / (1.0 - beta1 ** step))


def refresh_bases_(factors: list[Tensor | None], bases: list[Tensor | None], exp_avg_sq: Tensor) -> Tensor:
    """Replace each basis by one power iteration + QR from it, in place in `bases`; return v permuted to match."""
    for dim, factor in enumerate(factors):
        if factor is None:
            continue
        bases[dim], order = refresh_eigenbasis(factor, bases[dim])
        exp_avg_sq = exp_avg_sq.index_select(dim, order)
    return exp_avg_sq


class SOAP(torch.optim.Optimizer):
    """Bookkeeping around the functions above; per-parameter state (all plain tensors and ints):
    step (updates made, 0 after the initialising step), exp_avg, exp_avg_sq, GG (factors, None where a
    dimension has none) and Q (their eigenbases), the last two as lists in the parameter's (merged) shape."""

    def __init__(self, params, lr: float = 3e-3, beta1: float = 0.95, beta2: float = 0.95,
                 shampoo_beta: float = -1.0, eps: float = 1e-8, weight_decay: float = 0.01,
                 precondition_frequency: int = 10, max_precond_dim: int = 10000, merge_dims: bool = False,
                 precondition_1d: bool = False, normalize_grads: bool = False, correct_bias: bool = True):
        defaults = dict(lr=lr, beta1=beta1, beta2=beta2, shampoo_beta=shampoo_beta, eps=eps,
                        weight_decay=weight_decay, precondition_frequency=precondition_frequency,
                        max_precond_dim=max_precond_dim, merge_dims=merge_dims, precondition_1d=precondition_1d,
                        normalize_grads=normalize_grads, correct_bias=correct_bias)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = evaluate_closure(closure)
        refreshes: list[Job] = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and self._step_param(p, group):
                    state = self.state[p]
                    written = [q for q in state["Q"] if q is not None] + [state["exp_avg_sq"]]
                    refreshes.append((functools.partial(self._refresh, state), written))
        run_sharded(refreshes)  # the eigenbasis refreshes: spread over data-parallel ranks
        return loss

    @staticmethod
    def _refresh(state: dict) -> None:
        """New bases and the permuted second moment, written into the existing state tensors."""
        bases = list(state["Q"])
        exp_avg_sq = refresh_bases_(state["GG"], bases, state["exp_avg_sq"])
        for old, new in zip(state["Q"], bases):
            if old is not None:
                old.copy_(new)
        state["exp_avg_sq"].copy_(exp_avg_sq)

    def _step_param(self, p: Tensor, group: dict) -> bool:
        """One update of `p`; True when its eigenbases are due for a refresh (done by `step`, sharded)."""
        shape = merge_small_dims(p.shape, group["max_precond_dim"]) if group["merge_dims"] else tuple(p.shape)
        grad = p.grad.reshape(shape)
        state = self.state[p]
        beta1, beta2 = group["beta1"], group["beta2"]
        shampoo_beta = group["shampoo_beta"] if group["shampoo_beta"] >= 0 else beta2
        if not state:  # first step: accumulate the factors, take their eigenbases, do not move
            which = preconditioned_dims(shape, p.dim() == 1, group["max_precond_dim"], group["precondition_1d"])
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(grad)
            state["exp_avg_sq"] = torch.zeros_like(grad)
            state["GG"] = [torch.zeros(d, d, dtype=torch.float32, device=p.device) if use else None
                           for d, use in zip(shape, which)]
            update_factors_(state["GG"], grad, shampoo_beta)
            state["Q"] = [eigenbasis(f) if f is not None else None for f in state["GG"]]
            return False

        state["step"] += 1
        update = adam_in_eigenbasis(grad, state["exp_avg"], state["exp_avg_sq"], state["Q"], beta1, beta2,
                                    group["eps"])
        if group["normalize_grads"]:
            update = update / (1e-30 + update.square().mean().sqrt())
        p.add_(update.reshape(p.shape).to(p.dtype),
               alpha=-step_size(group["lr"], beta1, beta2, state["step"], group["correct_bias"]))
        if group["weight_decay"] > 0.0:
            p.mul_(1.0 - group["lr"] * group["weight_decay"])

        # After the step, so that the projection never uses the current gradient (the reference's order).
        update_factors_(state["GG"], grad, shampoo_beta)
        return state["step"] % group["precondition_frequency"] == 0


def build_soap(groups, cfg: SOAPConfig) -> torch.optim.Optimizer:
    return SOAP(groups, lr=cfg.lr, beta1=cfg.beta1, beta2=cfg.beta2, shampoo_beta=cfg.shampoo_beta, eps=cfg.eps,
                weight_decay=cfg.weight_decay, precondition_frequency=cfg.precondition_frequency,
                max_precond_dim=cfg.max_precond_dim, merge_dims=cfg.merge_dims,
                precondition_1d=cfg.precondition_1d, normalize_grads=cfg.normalize_grads,
                correct_bias=cfg.correct_bias)


register(OptimizerSpec(
    name="soap", config_cls=SOAPConfig, build=build_soap, source="optbench",
    reference=(f"Vyas et al. 2024, arXiv 2409.11321; nikhilvyas/SOAP soap.py @ {REFERENCE_COMMIT[:12]}; "
               "checked step by step against pytorch_optimizer==4.1.0 SOAP"),
    search_space={"lr": LogUniform(3e-4, 3e-2), "beta2": Choice((0.95, 0.99)),
                  "precondition_frequency": Choice((1, 10, 32, 100)),
                  "weight_decay": Choice((0.0, 0.01, 0.1))},
    capabilities=Capabilities(fsdp="owner"),
))
