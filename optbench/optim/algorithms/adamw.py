"""AdamW (Loshchilov & Hutter, 2019, "Decoupled Weight Decay Regularization").

Source: torch.optim.AdamW (foreach on CPU, fused on CUDA), the reference implementation itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from optbench.config.schema import OptimConfig
from optbench.errors import check, check_unit_interval
from optbench.optim.registry import OptimizerSpec, register
from optbench.optim.search_space import Choice, LogUniform


@dataclass
class AdamWConfig(OptimConfig):
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    """0.95 rather than PyTorch's 0.999: the usual choice for LLM pretraining (GPT-3, Llama)."""
    eps: float = 1e-8

    def __post_init__(self) -> None:
        super().__post_init__()
        check_unit_interval("optim", beta1=self.beta1, beta2=self.beta2)
        check(self.eps > 0.0, f"optim.eps={self.eps} must be positive")


def build_adamw(groups, cfg: AdamWConfig) -> torch.optim.Optimizer:
    # Fused kernels on CUDA; elsewhere foreach, which torch only picks by itself on CUDA (1.4x on CPU).
    on_cuda = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                             weight_decay=cfg.weight_decay, fused=on_cuda or None, foreach=not on_cuda)


register(OptimizerSpec(
    name="adamw", config_cls=AdamWConfig, build=build_adamw, source="torch.optim",
    reference=f"Loshchilov & Hutter 2019; torch.optim.AdamW (torch {torch.__version__.split('+')[0]})",
    search_space={"lr": LogUniform(1e-4, 1e-2), "beta2": Choice((0.95, 0.98, 0.99, 0.999)),
                  "weight_decay": Choice((0.0, 0.01, 0.1))},
))
