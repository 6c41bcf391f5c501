"""Adafactor (Shazeer & Stern, 2018, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost",
arXiv:1804.04235, Algorithms 4 and 5 without first moment).

The second moment of a matrix gradient is kept as its row and column means only (R: n x 1, C: 1 x m),
V_hat = R C / mean(R), a rank-1 factorisation that is exact for the row/column marginals:

    beta2_t = 1 - t^decay_rate           rho_t = min(lr, 1/sqrt(t))       alpha_t = max(eps2, RMS(p)) rho_t
    R_t = beta2_t R + (1 - beta2_t) mean_cols(g^2)     C_t = beta2_t C + (1 - beta2_t) mean_rows(g^2)
    U_t = g / max(sqrt(R_t C_t / max(mean(R_t), eps1)), eps1)            U_hat = U_t / max(1, RMS(U_t) / d)
    p  <- p (1 - lr wd) - alpha_t U_hat

Source: torch.optim.Adafactor (torch's maintained implementation, the reference itself; foreach). It keeps
the paper's relative step size and parameter scaling (rho_t, alpha_t above, always on) with lr as the cap
of rho_t, the paper's constant 0.01 being torch's default lr; the paper's beta2_t = 1 - t^-0.8, eps2 = 1e-3
and clipping threshold d = 1. Where torch differs from the paper: eps1 (default: the dtype's machine
epsilon rather than 1e-30) floors mean(R) and the variance estimate instead of being added to g^2; no
first moment (the paper's beta1 = 0 configuration); weight decay is decoupled and scaled by lr (the cap,
not alpha_t), which the paper leaves open.

Deviation in naming only: torch's `beta2_decay` is `decay_rate` here (the name of HF transformers'
Adafactor, same sign: -0.8), because optbench reads every `beta*` key as a coefficient in [0, 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from optbench.config.schema import OptimConfig
from optbench.errors import check
from optbench.optim.registry import Capabilities, OptimizerSpec, register
from optbench.optim.search_space import Choice, LogUniform


@dataclass
class AdafactorConfig(OptimConfig):
    name: str = "adafactor"
    lr: float = 1e-2
    """Cap of the relative step size rho_t = min(lr, 1/sqrt(t)); each step is rho_t * max(eps2, RMS(p))."""
    weight_decay: float = 0.0
    """Decoupled: p <- p (1 - lr wd)."""
    decay_rate: float = -0.8
    """Exponent of the second-moment decay beta2_t = 1 - t^decay_rate (torch's beta2_decay); <= 0."""
    eps1: float | None = None
    """Floor of the second-moment estimate; None: the parameter dtype's machine epsilon (torch's default)."""
    eps2: float = 1e-3
    """Floor of RMS(p) in the parameter scaling, so zero-initialised tensors still move."""
    d: float = 1.0
    """Update clipping threshold: updates are scaled down to RMS <= d."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.decay_rate <= 0.0, f"optim.decay_rate={self.decay_rate} must be <= 0")
        check(self.eps1 is None or self.eps1 >= 0.0, f"optim.eps1={self.eps1} must be non-negative (or null)")
        check(self.eps2 >= 0.0, f"optim.eps2={self.eps2} must be non-negative")
        check(self.d >= 1.0, f"optim.d={self.d} must be >= 1")


def build_adafactor(groups, cfg: AdafactorConfig) -> torch.optim.Optimizer:
    # foreach: one kernel per list instead of per tensor; torch defaults to the for-loop to save the
    # parameter-sized temporaries, which is not what a speed comparison wants.
    return torch.optim.Adafactor(groups, lr=cfg.lr, beta2_decay=cfg.decay_rate, eps=(cfg.eps1, cfg.eps2), d=cfg.d,
                                 weight_decay=cfg.weight_decay, foreach=True)


register(OptimizerSpec(
    name="adafactor", config_cls=AdafactorConfig, build=build_adafactor, source="torch.optim",
    reference=f"Shazeer & Stern 2018 (arXiv:1804.04235); torch.optim.Adafactor "
              f"(torch {torch.__version__.split('+')[0]})",
    search_space={"lr": LogUniform(1e-3, 1e-1), "decay_rate": Choice((-0.5, -0.8, -1.0)),
                  "weight_decay": Choice((0.0, 0.01, 0.1))},
    capabilities=Capabilities(fsdp="owner"),  # factored second moment: row and column means
))
