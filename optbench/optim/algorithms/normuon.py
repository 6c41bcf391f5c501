"""NorMuon: Muon with neuron-wise second-moment normalisation of the orthogonalised update.

Zichong Li et al. 2025, "NorMuon: Making Muon more efficient and
scalable" (arXiv 2510.05491). For a weight W (out x in; a row is an output neuron):

    M <- beta1 M + (1 - beta1) G;   U = (1 - beta1) G + beta1 M  if nesterov else M
    O = NewtonSchulz5(U)
    v <- beta2 v + (1 - beta2) mean_cols(O * O)          (one second moment per row / neuron)
    O^ = O / (sqrt(v) + eps)
    preserve_norm (the authors' code):  O^ <- O^ ||O||_F / (||O^||_F + eps),  times max(1, out/in)^0.5
    match_rms (the paper's Algorithm 1): O^ <- O^ 0.2 sqrt(out in) / (||O^||_F + eps)   (RMS 0.2, AdamW-like lr)
    W <- W (1 - lr wd) - lr O^

Matches pytorch-optimizer==4.1.0 `pytorch_optimizer.NorMuon` (use_muon groups; update_scale preserve_norm
or match_rms, use_adjusted_lr False), which follows the authors' zichongli5/NorMuon normuon.py
@ e5aaaf42fac9f466b973d6cad3dea033cdf4e370 (`normuon_update`, `SingleDeviceNorMuon`). Defaults are that
code's: lr 0.02, momentum 0.95, beta2 0.95, weight decay 0, eps 1e-10, Nesterov, preserve_norm; embeddings,
head and vectors go to AdamW (its NorMuonWithAuxAdam pairs them with Adam).

Deliberate deviations (as Muon's, see muon.py): Newton–Schulz runs in `ns_dtype` (bfloat16 on CUDA as the
references, float32 on CPU); tensors of order > 2 are a batch of matrices, each normalised on its own (the
references flatten them into one matrix); same-shaped matrices are orthogonalised in one batched call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from optbench.errors import check, check_choice, check_unit_interval
from optbench.optim.algorithms.muon import Muon, MuonConfig, apply_update, ema_momentum, muon_scale
from optbench.optim.functional.closure import evaluate_closure
from optbench.optim.functional.newton_schulz import orthogonalize
from optbench.optim.registry import Capabilities, OptimizerSpec, register
from optbench.optim.search_space import Choice, LogUniform

UPDATE_SCALES = ("preserve_norm", "match_rms")


def neuron_normalize_(o: torch.Tensor, second_moment: torch.Tensor, beta2: float, eps: float) -> torch.Tensor:
    """v <- beta2 v + (1 - beta2) mean over each row of o^2 (in place); returns o / (sqrt(v) + eps)."""
    second_moment.lerp_(o.square().mean(dim=-1, keepdim=True), 1 - beta2)
    return o / (second_moment.sqrt() + eps)


def rescale(normalized: torch.Tensor, orthogonal: torch.Tensor, update_scale: str, eps: float) -> torch.Tensor:
    """preserve_norm: the Frobenius norm of `orthogonal` (per matrix) times Muon's shape factor;
    match_rms: RMS 0.2 per matrix, i.e. Frobenius norm 0.2 sqrt(out in)."""
    norm = torch.linalg.matrix_norm(normalized, keepdim=True) + eps
    if update_scale == "preserve_norm":
        return normalized * (torch.linalg.matrix_norm(orthogonal, keepdim=True) / norm) * muon_scale(orthogonal.shape)
    return normalized * (0.2 * math.sqrt(orthogonal.shape[-2] * orthogonal.shape[-1]) / norm)


@dataclass
class NorMuonConfig(MuonConfig):
    name: str = "normuon"
    lr: float = 0.02
    """The authors' default (preserve_norm: Muon's units); with match_rms use an AdamW-like lr."""
    weight_decay: float = 0.0
    """Decoupled, p <- p (1 - lr wd)."""
    momentum: float = 0.95
    """beta1 of the EMA momentum."""
    beta2: float = 0.95
    """EMA coefficient of the per-neuron second moment of the orthogonalised update."""
    eps: float = 1e-10
    """Added to sqrt(v) and to the Frobenius norm in the rescaling."""
    update_scale: str = "preserve_norm"
    """preserve_norm (authors' code) | match_rms (the paper's Algorithm 1: update RMS 0.2)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_unit_interval("optim", beta2=self.beta2)
        check(self.eps > 0.0, f"optim.eps={self.eps} must be positive")
        check_choice("optim.update_scale", self.update_scale, UPDATE_SCALES)


class NorMuon(Muon):
    """NorMuon over hidden matrices (2-D, or batches of them in leading dimensions)."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, beta2: float = 0.95, nesterov: bool = True,
                 ns_steps: int = 5, ns_dtype: str = "auto", weight_decay: float = 0.0, eps: float = 1e-10,
                 update_scale: str = "preserve_norm"):
        super().__init__(params, lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, ns_dtype=ns_dtype,
                         weight_decay=weight_decay, beta2=beta2, eps=eps, update_scale=update_scale)

    @torch.no_grad()
    def step(self, closure=None):
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                    state["second_momentum_buffer"] = torch.zeros_like(p[..., :1])
            buffers = [self.state[p]["momentum_buffer"] for p in params]
            directions = ema_momentum(buffers, [p.grad for p in params], group["momentum"], group["nesterov"])
            orthogonal = orthogonalize(directions, group["ns_steps"], group["ns_dtype"])
            updates = [rescale(neuron_normalize_(o, self.state[p]["second_momentum_buffer"], group["beta2"],
                                                 group["eps"]), o, group["update_scale"], group["eps"])
                       for o, p in zip(orthogonal, params)]
            apply_update(params, updates, group["lr"], group["weight_decay"])
        return loss


def build_normuon(groups, cfg: NorMuonConfig) -> torch.optim.Optimizer:
    return NorMuon(groups, lr=cfg.lr, momentum=cfg.momentum, beta2=cfg.beta2, nesterov=cfg.nesterov,
                   ns_steps=cfg.ns_steps, ns_dtype=cfg.ns_dtype, weight_decay=cfg.weight_decay, eps=cfg.eps,
                   update_scale=cfg.update_scale)


register(OptimizerSpec(
    name="normuon", config_cls=NorMuonConfig, build=build_normuon, source="optbench",
    reference="Li et al. 2025 (arXiv 2510.05491) NorMuon; zichongli5/NorMuon normuon.py @ e5aaaf4; "
              "checked step by step against pytorch-optimizer==4.1.0 NorMuon",
    search_space={"lr": LogUniform(3e-3, 0.1), "momentum": Choice((0.9, 0.95)), "beta2": Choice((0.9, 0.95, 0.99)),
                  "weight_decay": Choice((0.0, 0.01, 0.1))},
    capabilities=Capabilities(fsdp="owner", matrix_only=True),
))
