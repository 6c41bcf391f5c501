"""MARS's variance reduction (Yuan et al. 2024, arXiv 2411.10438, Sec. 3): the scaled gradient correction.

    c_t  = g_t + gamma * beta1 / (1 - beta1) * (g_t - g_{t-1})      scaled stochastic recursive momentum
    c~_t = Clip(c_t, 1) = c_t / max(1, ||c_t||_2)                     per parameter tensor

In MARS-approx (the authors' default, `is_approx=True`) g_{t-1} is the previous step's gradient, on the
previous batch; MARS-exact would re-evaluate it on the current batch at the previous parameters. The
optimizer feeds c~_t to its momentum m_t = beta1 m_{t-1} + (1 - beta1) c~_t; these functions only build c~_t.
"""

from __future__ import annotations

import torch
from torch import Tensor


def correction_scale(gamma: float, beta1: float) -> float:
    """gamma * beta1 / (1 - beta1): the weight of g_t - g_{t-1} (0.475 at the defaults 0.025, 0.95)."""
    return gamma * (beta1 / (1.0 - beta1))


def corrected_gradient(grad: Tensor, last_grad: Tensor, gamma: float, beta1: float) -> Tensor:
    """c_t = g_t + gamma * beta1 / (1 - beta1) * (g_t - g_{t-1}), as a new tensor."""
    return torch.sub(grad, last_grad).mul_(correction_scale(gamma, beta1)).add_(grad)


def clip_unit_norm(c: Tensor) -> Tensor:
    """Clip(c, 1): c / ||c||_2 where that norm exceeds 1, else c (dividing by max(1, norm): no host sync)."""
    return c / torch.linalg.vector_norm(c).clamp_min(1.0)


def corrected_gradients(grads: list[Tensor], last_grads: list[Tensor], gamma: float, beta1: float) -> list[Tensor]:
    """`corrected_gradient` over many tensors at once (multi-tensor kernels), as new tensors."""
    corrections = torch._foreach_sub(grads, last_grads)
    torch._foreach_mul_(corrections, correction_scale(gamma, beta1))
    torch._foreach_add_(corrections, grads)
    return corrections


def clip_unit_norms_(corrections: list[Tensor]) -> list[Tensor]:
    """`clip_unit_norm` of each tensor, in place; returns the same list."""
    if corrections:
        norms = torch._foreach_norm(corrections)
        torch._foreach_clamp_min_(norms, 1.0)
        torch._foreach_div_(corrections, norms)
    return corrections
