"""The closure protocol of torch.optim: re-evaluate the loss with gradients enabled, if asked to."""

from __future__ import annotations

from collections.abc import Callable

import torch


def evaluate_closure(closure: Callable[[], torch.Tensor] | None) -> torch.Tensor | None:
    """`closure()` under enable_grad (step() runs under no_grad), or None without a closure."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()
