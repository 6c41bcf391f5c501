"""Muon and D-Muon: momentum orthogonalised by Newton–Schulz, for the hidden matrices.

Muon (Jordan, Jin, Boza, You, Cesista, Newhouse, Bernstein 2024, "Muon: An optimizer for hidden layers in
neural networks", kellerjordan.github.io/posts/muon). Matches muon-optimizer==0.1.0
(`muon.SingleDeviceMuon` / `muon.muon_update`):

    m <- beta m + (1 - beta) g                   (an EMA; `momentum.lerp_(grad, 1 - beta)`)
    u <- (1 - beta) g + beta m  if nesterov else m
    O <- NewtonSchulz5(u) * max(1, rows / cols) ** 0.5
    p <- p (1 - lr wd) - lr O

D-Muon (Semenov, Pagliardini, Jaggi 2025, "Benchmarking Optimizers for LLM Pretraining", arXiv 2509.01440;
after Liu et al. 2025, "Muon is Scalable for LLM Training" (Moonlight), arXiv 2502.16982): Muon with decoupled
weight decay and the update rescaled so its RMS matches AdamW's (about 0.2), so that AdamW's learning rate
and weight decay carry over. Matches `DistributedMuon` with `adjust_lr_wd_for_muon` in epfml/llm-baselines
src/optim/muon.py @ 0d6905edeed9c30523eb2fcb2fcaddee361f8d78 (the code base of epfml/llm-optimizer-benchmark;
the rule is Moonlight's `adjust_lr_for_muon` in MoonshotAI/Moonlight examples/toy_train.py @ abaa96e):

    buf <- beta buf + g                          (SGD-style momentum)
    u <- g + beta buf  if nesterov else buf
    p <- p (1 - lr wd) - lr * 0.2 * sqrt(max(rows, cols)) * NewtonSchulz5(u)

An orthogonal (rows x cols) matrix has RMS 1 / sqrt(max(rows, cols)), so the update's RMS is 0.2 lr.

Deliberate deviations, both optimizers:
- Tensors with more than two dimensions (MoE experts [E, out, in]) are a batch of matrices over the last two
  dimensions, each orthogonalised and scaled on its own (the references take 2-D weights; muon-optimizer
  would flatten a 4-D conv filter instead, which no optbench model has).
- Newton–Schulz runs in `ns_dtype`: bfloat16 on CUDA as both references, float32 on CPU (see
  optbench/optim/functional/newton_schulz.py); the orthogonalised update is cast back to the parameter's
  dtype before it is scaled (the references scale it in bfloat16).
- Same-shaped matrices are orthogonalised in one batched call, and the elementwise work is multi-tensor
  (torch._foreach_*); the gradient is not overwritten (muon-optimizer's `grad.lerp_` reuses it in place).
- D-Muon's embeddings and head go to `optim.backup` (AdamW with D-Muon's own lr 1e-3 and weight decay 0.1 by
  default, as the EPFL code applies its internal AdamW with the shared lr and wd); the EPFL code would also
  orthogonalise embedding tables with fewer than 10,000 rows, which optbench routes by role instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from optbench.errors import check, check_choice, check_unit_interval
from optbench.optim.algorithms.adamw import AdamWConfig
from optbench.optim.functional.closure import evaluate_closure
from optbench.optim.functional.newton_schulz import NS_DTYPES, orthogonalize
from optbench.optim.hybrid import MatrixOptimConfig
from optbench.optim.registry import Capabilities, OptimizerSpec, register
from optbench.optim.search_space import Choice, LogUniform

Tensors = list[torch.Tensor]


# ---------------------------------------------------------------------------------------------- the math
def ema_momentum(buffers: Tensors, grads: Tensors, beta: float, nesterov: bool) -> Tensors:
    """Muon's momentum (muon-optimizer): buffers <- EMA of gradients; the direction to orthogonalise."""
    torch._foreach_lerp_(buffers, grads, 1 - beta)
    return torch._foreach_lerp(grads, buffers, beta) if nesterov else buffers


def sgd_momentum(buffers: Tensors, grads: Tensors, beta: float, nesterov: bool) -> Tensors:
    """D-Muon's momentum (Moonlight / EPFL): buffers <- beta buffers + g; Nesterov adds beta buffers to g."""
    torch._foreach_mul_(buffers, beta)
    torch._foreach_add_(buffers, grads)
    return torch._foreach_add(grads, buffers, alpha=beta) if nesterov else buffers


def muon_scale(shape: torch.Size) -> float:
    """muon-optimizer's shape factor max(1, rows / cols) ** 0.5 (rows, cols: the last two dimensions)."""
    return max(1.0, shape[-2] / shape[-1]) ** 0.5


def rms_matched_scale(shape: torch.Size, matched_adamw_rms: float) -> float:
    """Moonlight's factor rms * sqrt(max(rows, cols)): an orthogonal matrix's update then has RMS `rms`."""
    return matched_adamw_rms * math.sqrt(max(shape[-2], shape[-1]))


def apply_update(params: Tensors, updates: Tensors, lr: float, weight_decay: float) -> None:
    """Decoupled weight decay p <- p (1 - lr wd), then p <- p - lr update (in place)."""
    if weight_decay != 0.0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    torch._foreach_add_(params, updates, alpha=-lr)


# --------------------------------------------------------------------------------------------- configs
@dataclass
class MuonConfig(MatrixOptimConfig):
    name: str = "muon"
    lr: float = 0.02
    """In units of spectral norm per step (muon-optimizer's default)."""
    weight_decay: float = 0.0
    """Decoupled, p <- p (1 - lr wd), as muon-optimizer applies it (its default is 0)."""
    momentum: float = 0.95
    """EMA coefficient of the momentum buffer."""
    nesterov: bool = True
    ns_steps: int = 5
    """Newton–Schulz iterations."""
    ns_dtype: str = "auto"
    """Newton–Schulz precision: auto (bfloat16 on CUDA, float32 on CPU) | float32 | bfloat16."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_unit_interval("optim", momentum=self.momentum)
        check(self.ns_steps >= 1, f"optim.ns_steps={self.ns_steps} must be >= 1")
        check_choice("optim.ns_dtype", self.ns_dtype, NS_DTYPES)


@dataclass
class DMuonConfig(MuonConfig):
    name: str = "dmuon"
    lr: float = 1e-3
    """AdamW-like: the update's RMS is matched to AdamW's (0.2 lr per entry)."""
    weight_decay: float = 0.1
    """Decoupled, p <- p (1 - lr wd) with the unscaled lr (Moonlight, EPFL)."""
    matched_adamw_rms: float = 0.2
    """The RMS of AdamW's update that D-Muon's is scaled to (Moonlight: 0.2 to 0.4)."""
    backup: AdamWConfig = field(default_factory=lambda: AdamWConfig(lr=1e-3, weight_decay=0.1))
    """Embeddings, head and vectors: AdamW with D-Muon's lr and weight decay, as the EPFL code shares them."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.matched_adamw_rms > 0.0, f"optim.matched_adamw_rms={self.matched_adamw_rms} must be positive")


# ------------------------------------------------------------------------------------------ optimizers
class Muon(torch.optim.Optimizer):
    """Muon over hidden matrices (2-D, or batches of them in leading dimensions)."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 ns_steps: int = 5, ns_dtype: str = "auto", weight_decay: float = 0.0, **extra_defaults):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, ns_dtype=ns_dtype,
                        weight_decay=weight_decay, **extra_defaults)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() < 2:
                    raise ValueError(f"{type(self).__name__} takes matrices; got a parameter of shape {tuple(p.shape)}")

    def _direction(self, buffers: Tensors, grads: Tensors, group: dict) -> Tensors:
        return ema_momentum(buffers, grads, group["momentum"], group["nesterov"])

    def _normalize(self, directions: Tensors, group: dict) -> Tensors:
        """The update's shape before scaling: Newton–Schulz orthogonalisation (sharded across DDP ranks)."""
        return orthogonalize(directions, group["ns_steps"], group["ns_dtype"])

    def _scale(self, shape: torch.Size, group: dict) -> float:
        return muon_scale(shape)

    @torch.no_grad()
    def step(self, closure=None):
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p)
            buffers = [self.state[p]["momentum_buffer"] for p in params]
            directions = self._direction(buffers, [p.grad for p in params], group)
            updates = self._normalize(directions, group)
            torch._foreach_mul_(updates, [self._scale(p.shape, group) for p in params])
            apply_update(params, updates, group["lr"], group["weight_decay"])
        return loss


class DMuon(Muon):
    """D-Muon: SGD-style Nesterov momentum, update scaled to AdamW's RMS."""

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.95, nesterov: bool = True,
                 ns_steps: int = 5, ns_dtype: str = "auto", weight_decay: float = 0.1,
                 matched_adamw_rms: float = 0.2):
        super().__init__(params, lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                         ns_dtype=ns_dtype, weight_decay=weight_decay, matched_adamw_rms=matched_adamw_rms)

    def _direction(self, buffers: Tensors, grads: Tensors, group: dict) -> Tensors:
        return sgd_momentum(buffers, grads, group["momentum"], group["nesterov"])

    def _scale(self, shape: torch.Size, group: dict) -> float:
        return rms_matched_scale(shape, group["matched_adamw_rms"])


def build_muon(groups, cfg: MuonConfig) -> torch.optim.Optimizer:
    return Muon(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, ns_steps=cfg.ns_steps,
                ns_dtype=cfg.ns_dtype, weight_decay=cfg.weight_decay)


def build_dmuon(groups, cfg: DMuonConfig) -> torch.optim.Optimizer:
    return DMuon(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, ns_steps=cfg.ns_steps,
                 ns_dtype=cfg.ns_dtype, weight_decay=cfg.weight_decay, matched_adamw_rms=cfg.matched_adamw_rms)


register(OptimizerSpec(
    name="muon", config_cls=MuonConfig, build=build_muon, source="optbench",
    reference="Jordan et al. 2024 (Muon); muon-optimizer==0.1.0 muon.SingleDeviceMuon / muon_update",
    search_space={"lr": LogUniform(3e-3, 0.1), "momentum": Choice((0.9, 0.95, 0.98)),
                  "weight_decay": Choice((0.0, 0.01, 0.1))},
    capabilities=Capabilities(fsdp="owner", matrix_only=True),
))

register(OptimizerSpec(
    name="dmuon", config_cls=DMuonConfig, build=build_dmuon, source="optbench",
    reference="Semenov, Pagliardini & Jaggi 2025 (arXiv 2509.01440) D-Muon, after Liu et al. 2025 (Moonlight, "
              "arXiv 2502.16982); epfml/llm-baselines src/optim/muon.py DistributedMuon @ 0d6905e",
    search_space={"lr": LogUniform(1e-4, 1e-2), "momentum": Choice((0.9, 0.95, 0.98)),
                  "weight_decay": Choice((0.0, 0.1, 0.5))},
    capabilities=Capabilities(fsdp="owner", matrix_only=True),
))
