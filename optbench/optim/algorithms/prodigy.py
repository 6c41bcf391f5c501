"""Prodigy (Mishchenko & Defazio, 2023, "Prodigy: An Expeditiously Adaptive Parameter-Free Learner",
arXiv 2306.06101): Adam whose step size d is estimated on the fly from the distance travelled.

Source: the authors' package prodigyopt==1.1.2 (konstmish/prodigy, MIT), `prodigyopt.Prodigy`, built on
our param groups; its state (moments, s, p0, per-parameter step) and the group scalars (d, d_max,
d_numerator, k) are plain tensors, ints and floats, so checkpoints round-trip exactly.

Several param groups: routing gives one group per role (matrices and head decay, vectors do not).
Prodigy estimates ONE d over all groups jointly: the step reads d, betas, beta3, d_coef, growth_rate and
bias correction from group 0, sums the numerator and denominator of the d estimate over every group,
and writes the new d back to every group; each group keeps its own weight_decay (and eps, d0, which we
set alike). Every group must have the same lr or lr 0, which holds since the trainer's schedule scales
all groups alike. We build the package's optimizer on the very groups routing produces, so behaviour
is the package's by construction (tests/optim/test_prodigy.py checks it against a directly built one).

The authors recommend leaving lr at 1 and tuning d_coef if at all, and using a decaying schedule (the
trainer's cosine) for LLMs; `optim.lr` multiplies the estimated step d. `safeguard_warmup=true` is their
advice when warming up the lr with a schedule.
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass
from importlib.metadata import version

import prodigyopt
import torch

from optbench.config.schema import OptimConfig
from optbench.errors import check, check_unit_interval
from optbench.optim.registry import Capabilities, OptimizerSpec, register
from optbench.optim.search_space import Choice, LogUniform

SOURCE = f"prodigyopt=={version('prodigyopt')}"


@dataclass
class ProdigyConfig(OptimConfig):
    name: str = "prodigy"
    lr: float = 1.0
    """A multiplier of the estimated step size d; the authors advise leaving it at 1."""
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    beta3: float | None = None
    """Decay of the running sums behind the d estimate; None: sqrt(beta2)."""
    eps: float = 1e-8
    decouple: bool = True
    """AdamW-style decoupled weight decay (false: L2 added to the gradient)."""
    use_bias_correction: bool = False
    """Adam's bias correction folded into the step size."""
    safeguard_warmup: bool = False
    """Leave the lr out of the d estimate's denominator: the authors' advice under lr warmup."""
    d0: float = 1e-6
    """Initial estimate of the distance to the solution."""
    d_coef: float = 1.0
    """Multiplies the d estimate; the preferred knob to tune (0.5 and 2.0 typically work as well)."""
    growth_rate: float = math.inf
    """Cap on d's growth per step (inf: uncapped; e.g. 1.02 acts like a warmup)."""
    fsdp_in_use: bool = False
    """Set under sharded (FSDP) parameters: all-reduces the d estimate's sums (CUDA only)."""
    slice_p: int = 1
    """Estimate d on every slice_p-th entry of each tensor (1: exact; ~11 saves memory)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.lr > 0.0, f"optim.lr={self.lr} must be positive")
        check_unit_interval("optim", beta1=self.beta1, beta2=self.beta2)
        check(self.beta3 is None or 0.0 <= self.beta3 < 1.0, f"optim.beta3={self.beta3} must be in [0, 1) or null")
        check(self.eps > 0.0, f"optim.eps={self.eps} must be positive")
        check(self.d0 > 0.0, f"optim.d0={self.d0} must be positive")
        check(self.d_coef > 0.0, f"optim.d_coef={self.d_coef} must be positive")
        check(self.growth_rate >= 1.0, f"optim.growth_rate={self.growth_rate} must be >= 1")
        check(self.slice_p >= 1, f"optim.slice_p={self.slice_p} must be >= 1")


def build_prodigy(groups, cfg: ProdigyConfig) -> torch.optim.Optimizer:
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints a line when weight decay is on
        return prodigyopt.Prodigy(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), beta3=cfg.beta3, eps=cfg.eps,
                                  weight_decay=cfg.weight_decay, decouple=cfg.decouple,
                                  use_bias_correction=cfg.use_bias_correction,
                                  safeguard_warmup=cfg.safeguard_warmup, d0=cfg.d0, d_coef=cfg.d_coef,
                                  growth_rate=cfg.growth_rate, fsdp_in_use=cfg.fsdp_in_use, slice_p=cfg.slice_p)


register(OptimizerSpec(
    name="prodigy", config_cls=ProdigyConfig, build=build_prodigy, source=SOURCE,
    reference=f"Mishchenko & Defazio 2023, Prodigy (arXiv 2306.06101); {SOURCE} Prodigy (konstmish/prodigy)",
    search_space={"lr": LogUniform(0.1, 10.0), "d_coef": Choice((0.5, 1.0, 2.0)),
                  "weight_decay": Choice((0.0, 0.01, 0.1))},
    capabilities=Capabilities(
        fsdp="refused", fsdp_refusal="its step size d comes from sums over every parameter (prodigyopt's FSDP "
                                     "support is for FSDP1's flat shards, not FSDP2's DTensors)"),
))
