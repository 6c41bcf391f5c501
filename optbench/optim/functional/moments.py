"""Moment estimates of Adam-family rules over lists of tensors (torch._foreach_*, one kernel per list on CUDA).

    m_t = beta1 m_{t-1} + (1 - beta1) g_t          `ema_`
    v_t = beta2 v_{t-1} + (1 - beta2) g_t^2        `ema_sq_`
    m_hat = m_t / (1 - beta1^t)                    `bias_correction`
    sqrt(v_t / (1 - beta2^t)) + eps                `adam_denominator`
    p <- p (1 - lr wd)                             `decay_` (decoupled weight decay, AdamW's)

plus the bookkeeping every such optimizer repeats: the tensors of a group that have gradients, with their
state initialised on first use (`with_grads`), and those tensors bucketed by their step count
(`step_buckets`), so that a bias correction is one scalar per foreach call.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


def ema_(avgs: list[Tensor], values: list[Tensor], beta: float) -> None:
    """avg <- beta avg + (1 - beta) value, in place, as a lerp (torch.optim.Adam's arithmetic)."""
    torch._foreach_lerp_(avgs, values, 1.0 - beta)


def ema_sq_(avgs: list[Tensor], values: list[Tensor], beta: float) -> None:
    """avg <- beta avg + (1 - beta) value^2, in place."""
    torch._foreach_mul_(avgs, beta)
    torch._foreach_addcmul_(avgs, values, values, value=1.0 - beta)


def bias_correction(beta: float, step: int) -> float:
    """1 - beta^step: an EMA started at zero, after `step` updates, is this fraction of the average."""
    return 1.0 - beta ** step


def adam_denominator(exp_avg_sqs: list[Tensor], eps: float, correction2: float = 1.0) -> list[Tensor]:
    """sqrt(v / correction2) + eps as new tensors (correction2 = `bias_correction(beta2, t)`, 1: none)."""
    denom = torch._foreach_sqrt(exp_avg_sqs)
    if correction2 != 1.0:
        torch._foreach_div_(denom, math.sqrt(correction2))
    torch._foreach_add_(denom, eps)
    return denom


def decay_(params: list[Tensor], lr: float, weight_decay: float) -> None:
    """Decoupled weight decay (Loshchilov & Hutter): p <- p (1 - lr weight_decay), before the update."""
    if weight_decay != 0.0:
        torch._foreach_mul_(params, 1.0 - lr * weight_decay)


def with_grads(group: dict, state: dict, init: Callable[[Tensor], dict]) -> tuple[list[Tensor], list[Tensor],
                                                                                  list[dict]]:
    """The parameters of a param group that have a gradient, their gradients and their state dicts, a state
    being filled by `init(param)` the first time its parameter is seen."""
    params, grads, states = [], [], []
    for p in group["params"]:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            raise RuntimeError("sparse gradients are not supported")
        if not state[p]:
            state[p].update(init(p))
        params.append(p)
        grads.append(p.grad)
        states.append(state[p])
    return params, grads, states


def step_buckets(states: list[dict]) -> dict[int, list[int]]:
    """Indices of `states` grouped by their `step` count (one bucket when every parameter always has a
    gradient; more when some skipped steps), in first-seen order."""
    buckets: dict[int, list[int]] = {}
    for i, s in enumerate(states):
        buckets.setdefault(s["step"], []).append(i)
    return buckets


def pick(items: list, indices: list[int]) -> list:
    """items[i] for i in indices."""
    return [items[i] for i in indices]
