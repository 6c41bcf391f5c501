"""AdamW (Loshchilov & Hutter, 2019, "Decoupled Weight Decay Regularization").

Source: torch.optim.AdamW (foreach on CPU, fused on CUDA), the reference implementation itself.

`cautious=True` (and the registry name `c-adamw`, the same config with cautious on by default, so that sweeps
treat it as an optimizer of its own as the C-Optim paper's tables do) builds C-AdamW (Liang et al. 2024,
arXiv:2411.16085), our multi-tensor `CautiousAdamW` in cautious_adamw.py: torch.optim.AdamW cannot mask its
update. With cautious=False the optimizer is torch.optim.AdamW exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from optbench.config.schema import OptimConfig
from optbench.errors import check, check_unit_interval
from optbench.optim.algorithms.cautious_adamw import CautiousAdamW
from optbench.optim.registry import Capabilities, OptimizerSpec, register
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
    cautious: bool = False
    """C-AdamW: update only where the step agrees in sign with the gradient, rescaled per tensor by
    numel / (nnz + 1) (our CautiousAdamW instead of torch.optim.AdamW)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_unit_interval("optim", beta1=self.beta1, beta2=self.beta2)
        check(self.eps > 0.0, f"optim.eps={self.eps} must be positive")


@dataclass
class CAdamWConfig(AdamWConfig):
    name: str = "c-adamw"
    cautious: bool = True
    """C-AdamW by default; the C-Optim paper keeps AdamW's hyperparameters."""


def build_adamw(groups, cfg: AdamWConfig) -> torch.optim.Optimizer:
    if cfg.cautious:
        return CautiousAdamW(groups, lr=cfg.lr, beta1=cfg.beta1, beta2=cfg.beta2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay)
    # Fused kernels on CUDA; elsewhere foreach, which torch only picks by itself on CUDA (1.4x on CPU).
    on_cuda = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                             weight_decay=cfg.weight_decay, fused=on_cuda or None, foreach=not on_cuda)


SEARCH_SPACE = {"lr": LogUniform(1e-4, 1e-2), "beta2": Choice((0.95, 0.98, 0.99, 0.999)),
                "weight_decay": Choice((0.0, 0.01, 0.1))}

register(OptimizerSpec(
    name="adamw", config_cls=AdamWConfig, build=build_adamw, source="torch.optim",
    reference=f"Loshchilov & Hutter 2019; torch.optim.AdamW (torch {torch.__version__.split('+')[0]}); "
              "cautious=True: optbench C-AdamW, as c-adamw",
    search_space=SEARCH_SPACE,
    capabilities=Capabilities(fsdp="shards"),
))

register(OptimizerSpec(
    name="c-adamw", config_cls=CAdamWConfig, build=build_adamw, source="optbench",
    reference="Liang et al. 2024 (arXiv:2411.16085), numel/(nnz+1) mask of kyleliang919/C-Optim c_adamw.py; "
              "pytorch-optimizer==4.1.0 AdEMAMix(alpha=0, cautious=True)",
    search_space=SEARCH_SPACE,
    capabilities=Capabilities(fsdp="owner"),  # the mask rescales each tensor by numel / (nnz + 1)
))
