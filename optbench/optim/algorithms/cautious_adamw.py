"""C-AdamW, cautious AdamW (Liang et al., 2024, "Cautious Optimizers: Improving Training with One Line of
Code", arXiv:2411.16085): AdamW whose update keeps only the coordinates where it agrees in sign with the
current gradient, rescaled per tensor by numel / (nnz + 1) (see functional/cautious.py).

Source: optbench (foreach), built by `adamw` / `c-adamw` when `cautious=True` (the config and registration
live in adamw.py; this module is the optimizer). Per step, per parameter:

    p <- p (1 - lr wd)                                    decoupled decay first (torch.optim.AdamW's order)
    m <- beta1 m + (1 - beta1) g;  v <- beta2 v + (1 - beta2) g^2
    u  = m / (1 - beta1^t) / (sqrt(v / (1 - beta2^t)) + eps)          torch.optim.AdamW's eps placement
    p <- p - lr * u * 1[m g > 0] * numel / (nnz + 1)        (u, hence the mask, has the sign of m)

The rounding follows the reference below (masked m / (1 - beta1^t), then addcdiv by the denominator with
-lr), not torch.optim.AdamW's (m / denominator times -lr / (1 - beta1^t)): the two differ by an ulp, and an
ulp is enough to flip the sign of a gradient that is zero up to rounding (an attention key bias: softmax
ignores it), which the mask turns into a whole step. Checked step by step against pytorch-optimizer==4.1.0
`AdEMAMix(alpha=0, weight_decouple=True, cautious=True)`, which with the slow EMA's weight at 0 is exactly
this C-AdamW. Deliberate deviation from the authors' per-parameter c_adamw.py (kyleliang919/C-Optim, a copy
of transformers' AdamW): there eps is added to sqrt(v) before the bias correction (eps effectively
eps / sqrt(1 - beta2^t)); here it is added after, as torch.optim.AdamW and the authors' foreach path do.
"""

from __future__ import annotations

import torch
from torch import Tensor

from optbench.optim.functional.cautious import cautious_
from optbench.optim.functional.closure import evaluate_closure
from optbench.optim.functional.moments import (adam_denominator, bias_correction, decay_, ema_, ema_sq_, pick,
                                               step_buckets, with_grads)


def cautious_adam_directions(exp_avgs: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
    """m * 1[m g > 0] * numel / (nnz + 1) as new tensors: the first moment with its disagreeing coordinates
    dropped (m and the Adam step u = m / denominator have the same sign)."""
    directions = [m.clone() for m in exp_avgs]
    cautious_(directions, grads)
    return directions


class CautiousAdamW(torch.optim.Optimizer):
    """C-AdamW over param groups with keys lr, beta1, beta2, eps, weight_decay;
    state per parameter: step (int), exp_avg, exp_avg_sq."""

    def __init__(self, params, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.95, eps: float = 1e-8,
                 weight_decay: float = 0.1):
        super().__init__(params, dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay))

    @staticmethod
    def _init(p: Tensor) -> dict:
        return {"step": 0, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}

    @torch.no_grad()
    def step(self, closure=None):
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            params, grads, states = with_grads(group, self.state, self._init)
            if not params:
                continue
            lr, beta1, beta2 = group["lr"], group["beta1"], group["beta2"]
            for s in states:
                s["step"] += 1
            decay_(params, lr, group["weight_decay"])
            exp_avgs = [s["exp_avg"] for s in states]
            ema_(exp_avgs, grads, beta1)
            ema_sq_([s["exp_avg_sq"] for s in states], grads, beta2)
            directions = cautious_adam_directions(exp_avgs, grads)
            for step, idx in step_buckets(states).items():
                bucket = pick(directions, idx)
                torch._foreach_div_(bucket, bias_correction(beta1, step))
                denom = adam_denominator([states[i]["exp_avg_sq"] for i in idx], group["eps"],
                                         bias_correction(beta2, step))
                torch._foreach_addcdiv_(pick(params, idx), bucket, denom, value=-lr)
        return loss
