"""Sign-based updates over lists of tensors: signSGD, Signum and Lion move every coordinate by exactly lr.

    signSGD  (Bernstein et al. 2018)   p <- p - lr sign(g)
    Signum   (Bernstein et al. 2018)   m <- beta m + (1 - beta) g;      p <- p - lr sign(m)
    Lion     (Chen et al. 2023)        c  = beta1 m + (1 - beta1) g;    p <- p - lr sign(c);
                                       m <- beta2 m + (1 - beta2) g

Weight decay is decoupled (p <- p (1 - lr wd)) and applied to the weights before the sign step, which is
the same as the Lion paper's `p - lr (sign(c) + wd p)`. sign(0) = 0: a coordinate with no gradient and no
momentum does not move.
"""

from __future__ import annotations

import torch
from torch import Tensor

from optbench.optim.functional.moments import decay_


def signs(tensors: list[Tensor]) -> list[Tensor]:
    """sign(x) of each tensor, as new tensors."""
    return torch._foreach_sign(tensors)


def interpolate(exp_avgs: list[Tensor], grads: list[Tensor], beta: float) -> list[Tensor]:
    """beta m + (1 - beta) g as new tensors, multiply-then-add (the Lion authors' arithmetic: a sign is
    only as stable as the rounding of what it is taken of, so a comparison needs the same operations)."""
    mixed = torch._foreach_mul(exp_avgs, beta)
    torch._foreach_add_(mixed, grads, alpha=1.0 - beta)
    return mixed


def lion_direction(exp_avgs: list[Tensor], grads: list[Tensor], beta1: float) -> list[Tensor]:
    """sign(beta1 m + (1 - beta1) g): Lion's update direction, taken before its momentum is updated."""
    mixed = interpolate(exp_avgs, grads, beta1)
    torch._foreach_sign_(mixed)
    return mixed


def lion_momentum_(exp_avgs: list[Tensor], grads: list[Tensor], beta2: float) -> None:
    """m <- beta2 m + (1 - beta2) g, in place, after the step (Lion tracks the gradient with a slower beta2)."""
    torch._foreach_mul_(exp_avgs, beta2)
    torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta2)


def sign_step_(params: list[Tensor], directions: list[Tensor], lr: float, weight_decay: float) -> None:
    """p <- p (1 - lr wd) - lr direction, in place (`directions` are signs: entries in {-1, 0, 1})."""
    decay_(params, lr, weight_decay)
    torch._foreach_add_(params, directions, alpha=-lr)
