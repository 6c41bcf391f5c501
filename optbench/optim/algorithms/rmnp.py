"""RMNP: Muon with Newton–Schulz replaced by a row-wise l2 normalisation of the momentum.

Deng, Ouyang, Pang, Liu, Jin, Yu & Yang 2026, "RMNP: Row-Momentum Normalized Preconditioning for Scalable
Matrix-Based Optimization" (arXiv 2603.20527, ICML 2026). Algorithm 1 of the paper, for a weight W (out x in,
each row an output neuron's fan-in):

    M <- mu M + (1 - mu) G
    R = RowNormalize(M; eps),   R_i = M_i / (||M_i||_2 + eps)
    W <- W - lr R

Follows the authors' code, Dominator-Index/RMNP GPT-2/RMNP/optimizers/rmnp.py @ d01a1b542c347c4919d7557c843bdf2508fd9691
(no package implements it), in what the algorithm box leaves open: Nesterov momentum (on by default there),
Muon's shape factor max(1, out / in)^0.5 on the update, decoupled weight decay p <- p (1 - lr wd), defaults
lr 0.02, momentum 0.95, weight decay 0 (the code's and its GPT-2 recipes'), and matrices only, with AdamW
for embeddings, head and vectors (its CombinedOptimizer).

Deliberate deviations from the authors' code:
- Momentum is the paper's EMA, M <- mu M + (1 - mu) G, and Nesterov looks ahead as muon-optimizer does,
  (1 - mu) G + mu M; the code's SGD-style buffer (mu B + G, then G + mu B) is the same direction times
  1 / (1 - mu), which row normalisation removes: the updates agree up to eps.
- eps is added to the row norm, as the paper writes (the code clamps the norm at F.normalize's 1e-12); the
  two differ only on rows with norm below eps.
- The update stays in the parameter's dtype (the code stages it in bfloat16); tensors of order > 2 (MoE
  experts [E, out, in]) are a batch of matrices, rows over the last dimension (the code flattens them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from optbench.errors import check, check_unit_interval
from optbench.optim.algorithms.muon import Muon
from optbench.optim.hybrid import MatrixOptimConfig
from optbench.optim.registry import Capabilities, OptimizerSpec, register
from optbench.optim.search_space import Choice, LogUniform

Tensors = list[torch.Tensor]


def row_normalize(m: torch.Tensor, eps: float) -> torch.Tensor:
    """Each row (last dimension) divided by its l2 norm plus eps: R_i = M_i / (||M_i|| + eps)."""
    return m / (torch.linalg.vector_norm(m, dim=-1, keepdim=True) + eps)


@dataclass
class RMNPConfig(MatrixOptimConfig):
    name: str = "rmnp"
    lr: float = 0.02
    """Per step, each row of the update has l2 norm lr (times max(1, out/in)^0.5)."""
    weight_decay: float = 0.0
    """Decoupled, p <- p (1 - lr wd) (the authors' recipes use 0 on RMNP's matrices)."""
    momentum: float = 0.95
    """mu of the EMA momentum."""
    nesterov: bool = True
    """Normalise (1 - mu) g + mu M instead of M (the authors' code default)."""
    eps: float = 1e-12
    """Added to each row's norm."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_unit_interval("optim", momentum=self.momentum)
        check(self.eps > 0.0, f"optim.eps={self.eps} must be positive")


class RMNP(Muon):
    """Row-normalised momentum over hidden matrices: Muon's bookkeeping with rows normalised, not orthogonalised."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 weight_decay: float = 0.0, eps: float = 1e-12):
        super().__init__(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, eps=eps)

    def _normalize(self, directions: Tensors, group: dict) -> Tensors:
        return [row_normalize(d, group["eps"]) for d in directions]


def build_rmnp(groups, cfg: RMNPConfig) -> torch.optim.Optimizer:
    return RMNP(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay,
                eps=cfg.eps)


register(OptimizerSpec(
    name="rmnp", config_cls=RMNPConfig, build=build_rmnp, source="optbench",
    reference="Deng et al. 2026 (arXiv 2603.20527) RMNP, Algorithm 1; authors' code Dominator-Index/RMNP "
              "GPT-2/RMNP/optimizers/rmnp.py @ d01a1b5 (checked against its equations by hand)",
    search_space={"lr": LogUniform(1e-3, 0.1), "momentum": Choice((0.9, 0.95, 0.98)),
                  "weight_decay": Choice((0.0, 0.01, 0.1))},
    capabilities=Capabilities(fsdp="owner", matrix_only=True),  # row norms over the last dimension
))
