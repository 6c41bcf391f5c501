"""Gradient and update diagnostics computed at log steps, and the spike detector of grad norms and losses.

Everything uses foreach kernels over all parameters at once, so a log step costs a few fused
reductions rather than a Python loop over tensors.
"""

from __future__ import annotations

import statistics
from collections import deque
from typing import Any

import torch

NEAR_ZERO = 1e-8
"""|g| below this counts as a vanishing gradient entry."""


def _global_norm(tensors: list[torch.Tensor]) -> float:
    if not tensors:
        return 0.0
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors))).item()


def gradient_stats(params: list[torch.Tensor]) -> dict[str, float]:
    """Max |grad| and the fraction of near-zero gradient entries (the norm comes from clipping)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return {"grad_max": 0.0, "grad_zero_frac": 0.0}
    grad_max = torch.stack(torch._foreach_norm(grads, float("inf"))).max().item()
    zeros = sum((g.abs() < NEAR_ZERO).sum().item() for g in grads)
    return {"grad_max": grad_max, "grad_zero_frac": zeros / sum(g.numel() for g in grads)}


def snapshot(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """A copy of the parameters before a step, to measure the update it makes."""
    return [p.detach().clone() for p in params]


def update_stats(params: list[torch.Tensor], before: list[torch.Tensor]) -> dict[str, float]:
    """Parameter norm and the RMS of the update the optimizer just applied."""
    after = [p.detach() for p in params]
    deltas = torch._foreach_sub(after, before)
    numel = sum(p.numel() for p in after)
    update_rms = _global_norm(deltas) / numel**0.5
    return {"param_norm": _global_norm(after), "update_rms": update_rms}


class SpikeDetector:
    """Flags a value (a grad norm, a loss) above `factor` times the running median of the last `window` values,
    once there are `min_history` of them, and counts the spikes. Its state rides in checkpoints, so a resumed
    run flags the steps the uninterrupted one does."""

    def __init__(self, factor: float = 10.0, window: int = 100, min_history: int = 10):
        self.factor = factor
        self.min_history = min_history
        self.history: deque[float] = deque(maxlen=window)
        self.count = 0

    def __call__(self, value: float) -> bool:
        spike = (len(self.history) >= self.min_history
                 and value > self.factor * statistics.median(self.history))
        self.history.append(value)
        self.count += spike
        return spike

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history.clear()
        self.history.extend(state["history"])
        self.count = state["count"]
