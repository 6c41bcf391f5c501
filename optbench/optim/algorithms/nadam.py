"""NAdamW: NAdam (Dozat, 2016, "Incorporating Nesterov Momentum into Adam", ICLR workshop) with decoupled
weight decay (Loshchilov & Hutter, 2019), the NAdamW of LLM optimizer benchmarks (AlgoPerf's baseline,
Dahl et al. 2023, arXiv:2306.07179; Wen et al. 2025, "Fantastic Pretraining Optimizers and Where to Find
Them", arXiv:2509.02046).

    mu_t = beta1 (1 - 0.5 * 0.96^(t psi))                      (psi: `momentum_decay`, Dozat's 1/250)
    m, v as Adam;  p <- p (1 - lr wd)
    p <- p - lr [(1 - mu_t) / (1 - prod_{i<=t} mu_i) g + mu_{t+1} / (1 - prod_{i<=t+1} mu_i) m]
                / (sqrt(v / (1 - beta2^t)) + eps)

Source: torch.optim.NAdam with decoupled_weight_decay=True (foreach everywhere: torch has no fused NAdam).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from optbench.config.schema import OptimConfig
from optbench.errors import check, check_unit_interval
from optbench.optim.registry import Capabilities, OptimizerSpec, register
from optbench.optim.search_space import Choice, LogUniform


@dataclass
class NAdamConfig(OptimConfig):
    name: str = "nadam"
    lr: float = 2e-3
    """Dozat's and torch.optim.NAdam's default."""
    weight_decay: float = 0.1
    """Decoupled, as AdamW's here (torch's default is 0, which makes decoupling moot)."""
    beta1: float = 0.9
    beta2: float = 0.95
    """0.95 rather than torch's 0.999: AdamW's LLM value (GPT-3, Llama; adamw.py), so that NAdamW differs from
    AdamW only by its Nesterov look-ahead."""
    eps: float = 1e-8
    momentum_decay: float = 4e-3
    """psi in mu_t = beta1 (1 - 0.5 * 0.96^(t psi)), torch's default (Dozat's 1/250). Kept in [0, 1): at 1 the
    warm-up of mu is over within ~100 steps."""
    decouple: bool = True
    """Decoupled weight decay p <- p (1 - lr wd) (NAdamW); false: L2, wd p added to the gradient (torch's default)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_unit_interval("optim", beta1=self.beta1, beta2=self.beta2, momentum_decay=self.momentum_decay)
        check(self.eps > 0.0, f"optim.eps={self.eps} must be positive")


def build_nadam(groups, cfg: NAdamConfig) -> torch.optim.Optimizer:
    # torch has no fused NAdam: foreach on every device (torch picks it by itself only on CUDA).
    return torch.optim.NAdam(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                             weight_decay=cfg.weight_decay, momentum_decay=cfg.momentum_decay,
                             decoupled_weight_decay=cfg.decouple, foreach=True)


register(OptimizerSpec(
    name="nadam", config_cls=NAdamConfig, build=build_nadam, source="torch.optim",
    reference=f"Dozat 2016; Loshchilov & Hutter 2019; torch.optim.NAdam(decoupled_weight_decay=True) "
              f"(torch {torch.__version__.split('+')[0]})",
    search_space={"lr": LogUniform(2e-4, 2e-2), "beta2": Choice((0.95, 0.98, 0.99, 0.999)),
                  "weight_decay": Choice((0.0, 0.01, 0.1))},
    capabilities=Capabilities(fsdp="shards"),
))
