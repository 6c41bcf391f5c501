"""RAdamW: RAdam (Liu et al., 2020, "On the Variance of the Adaptive Learning Rate and Beyond", ICLR 2020,
arXiv:1908.03265) with decoupled weight decay (Loshchilov & Hutter, 2019).

    m, v as Adam;  p <- p (1 - lr wd)
    rho_inf = 2 / (1 - beta2) - 1;  rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t)
    rho_t > 5:  p <- p - lr r_t m_hat sqrt(1 - beta2^t) / (sqrt(v) + eps),
                r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
    otherwise:  p <- p - lr m_hat      (SGD with momentum while the adaptive rate's variance is intractable)

Source: torch.optim.RAdam with decoupled_weight_decay=True (foreach everywhere: torch has no fused RAdam).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from optbench.config.schema import OptimConfig
from optbench.errors import check, check_unit_interval
from optbench.optim.registry import Capabilities, OptimizerSpec, register
from optbench.optim.search_space import Choice, LogUniform


@dataclass
class RAdamConfig(OptimConfig):
    name: str = "radam"
    lr: float = 1e-3
    weight_decay: float = 0.1
    """Decoupled, as AdamW's here (torch's default is 0, which makes decoupling moot)."""
    beta1: float = 0.9
    beta2: float = 0.95
    """0.95 rather than the paper's 0.999: AdamW's LLM value (adamw.py). The rectifier is then a built-in
    warm-up of ~100 steps (r_t: 0.35 at step 10, 0.87 at step 50) instead of thousands, which at 0.999 keeps
    the step below 0.15 lr for the first 40 steps. SGD steps for t <= 5 either way."""
    eps: float = 1e-8
    decouple: bool = True
    """Decoupled weight decay p <- p (1 - lr wd) (RAdamW); false: L2, wd p added to the gradient (torch's default)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_unit_interval("optim", beta1=self.beta1, beta2=self.beta2)
        check(self.eps > 0.0, f"optim.eps={self.eps} must be positive")


def build_radam(groups, cfg: RAdamConfig) -> torch.optim.Optimizer:
    # torch has no fused RAdam: foreach on every device (torch picks it by itself only on CUDA).
    return torch.optim.RAdam(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                             weight_decay=cfg.weight_decay, decoupled_weight_decay=cfg.decouple, foreach=True)


register(OptimizerSpec(
    name="radam", config_cls=RAdamConfig, build=build_radam, source="torch.optim",
    reference=f"Liu et al. 2020 (arXiv:1908.03265); Loshchilov & Hutter 2019; "
              f"torch.optim.RAdam(decoupled_weight_decay=True) (torch {torch.__version__.split('+')[0]})",
    search_space={"lr": LogUniform(1e-4, 1e-2), "beta2": Choice((0.95, 0.98, 0.99, 0.999)),
                  "weight_decay": Choice((0.0, 0.01, 0.1))},
    capabilities=Capabilities(fsdp="shards"),
))
