"""Sophia-G (Liu, Li, Hall, Liang & Ma, 2023, "Sophia: A Scalable Stochastic Second-order Optimizer for
Language Model Pre-training", arXiv 2305.14342): momentum divided by a diagonal Gauss-Newton estimate,
clipped per coordinate.

Source: optbench. Reference: the authors' Liuhong99/Sophia sophia.py (commit 195a786, the rho/bs version,
and train_sophiag.py for the training loop), which sophia-opt==0.2.2 (`sophia_opt.SophiaG`, MIT)
packages unchanged; tests/optim/test_sophia.py compares against that package step by step. Per step:

    p <- p * (1 - lr * weight_decay)                                    decoupled weight decay
    m <- beta1 * m + (1 - beta1) * g
    p <- p - lr * sign(m) * min(|m| / (rho * bs * h + eps), 1)          the clipped Newton-like step

and every k steps (k = `hessian_every`), after the step, the trainer backpropagates the mean loss on
labels sampled from the model's own predictions (Gauss-Newton-Bartlett) and calls `update_hessian()`:

    h <- beta2 * h + (1 - beta2) * g_hat * g_hat

Before the first Hessian pass h = 0 and the step is lr * sign(m) (sign momentum), as in the reference.

B, the batch size: the paper's estimator is B * g_hat^2 with g_hat the gradient of the MEAN loss over
the B sampled labels; the reference stores g_hat^2 and multiplies by B = `bs` inside the step, which
makes rho independent of the batch size. B is the number of tokens in the Hessian pass (the authors'
GPT-2 runs use 480 * 1024, their Hessian pass covering the whole batch). With `optim.bs` unset (None,
the default) B is the token count the trainer reports to `update_hessian` for its Hessian-pass batch
(one micro-batch: train.batch_size * train.seq_len); setting `optim.bs` fixes it as the reference does.

The Hessian-pass gradient is not clipped here (the reference clips it with the same grad_clip); the
trainer's hook is shared by every Hessian-pass optimizer and clips nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from optbench.config.schema import OptimConfig
from optbench.errors import check, check_unit_interval
from optbench.optim.functional.closure import evaluate_closure
from optbench.optim.registry import Capabilities, OptimizerSpec, register
from optbench.optim.search_space import Choice, LogUniform

Tensors = list[torch.Tensor]


@dataclass
class SophiaGConfig(OptimConfig):
    name: str = "sophiag"
    lr: float = 2e-4
    """The authors' README: lr 2e-4 with rho 0.01-0.04 (rho * lr ~ half of AdamW's lr)."""
    weight_decay: float = 0.1
    """Decoupled: p <- p * (1 - lr * weight_decay)."""
    beta1: float = 0.965
    beta2: float = 0.99
    """Decay of the Hessian EMA, applied once per Hessian pass (every `hessian_every` steps)."""
    rho: float = 0.04
    """Scales the Hessian in the denominator; smaller clips fewer coordinates (README: [0.01, 0.1])."""
    bs: int | None = None
    """B, tokens in the Hessian pass's batch (4096: the authors' README example; their GPT-2 runs 480 * 1024).
    With optbench's trainer set train.batch_size * train.seq_len: its Hessian pass takes one micro-batch."""
    hessian_every: int = 10
    """k: the trainer runs the Hessian pass after every k-th step."""
    eps: float = 1e-15
    """Added to rho * bs * h in the denominator, as in the reference."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_unit_interval("optim", beta1=self.beta1, beta2=self.beta2)
        check(self.rho > 0.0, f"optim.rho={self.rho} must be positive")
        check(self.bs is None or self.bs > 0, f"optim.bs={self.bs} must be positive")
        check(self.hessian_every > 0, f"optim.hessian_every={self.hessian_every} must be positive")
        check(self.eps > 0.0, f"optim.eps={self.eps} must be positive")


def decay_weights(params: Tensors, lr: float, weight_decay: float) -> None:
    """Decoupled weight decay, p <- p * (1 - lr * wd)."""
    if weight_decay != 0.0:
        torch._foreach_mul_(params, 1.0 - lr * weight_decay)


def update_momentum(exp_avgs: Tensors, grads: Tensors, beta1: float) -> None:
    """m <- beta1 * m + (1 - beta1) * g."""
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)


def update_gnb_hessian(hessians: Tensors, sampled_grads: Tensors, beta2: float) -> None:
    """h <- beta2 * h + (1 - beta2) * g_hat^2, with g_hat the gradient of the loss on sampled labels."""
    torch._foreach_mul_(hessians, beta2)
    torch._foreach_addcmul_(hessians, sampled_grads, sampled_grads, value=1.0 - beta2)


def clipped_ratio(exp_avgs: Tensors, hessians: Tensors, rho: float, bs: int, eps: float) -> Tensors:
    """min(|m| / (rho * bs * h + eps), 1): the preconditioned step's size, at most 1 per coordinate."""
    denom = torch._foreach_mul(hessians, rho * bs)
    torch._foreach_add_(denom, eps)
    ratio = torch._foreach_abs(exp_avgs)
    torch._foreach_div_(ratio, denom)
    torch._foreach_clamp_max_(ratio, 1.0)
    return ratio


def sophia_step(params: Tensors, exp_avgs: Tensors, hessians: Tensors, *, lr: float, rho: float, bs: int,
                eps: float) -> None:
    """p <- p - lr * sign(m) * clipped_ratio."""
    ratio = clipped_ratio(exp_avgs, hessians, rho, bs, eps)
    torch._foreach_addcmul_(params, torch._foreach_sign(exp_avgs), ratio, value=-lr)


class SophiaG(torch.optim.Optimizer):
    """Bookkeeping around the functions above; `update_hessian()` after a backward on sampled labels."""

    def __init__(self, params, lr: float = 2e-4, betas: tuple[float, float] = (0.965, 0.99), rho: float = 0.04,
                 weight_decay: float = 0.1, bs: int | None = None, eps: float = 1e-15, hessian_every: int = 10):
        defaults = dict(lr=lr, betas=betas, rho=rho, weight_decay=weight_decay, bs=bs, eps=eps)
        super().__init__(params, defaults)
        self.hessian_every = hessian_every

    def _state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["hessian"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def update_hessian(self, batch_tokens: int | None = None) -> None:
        """Fold the current gradients (of the loss on `batch_tokens` sampled labels) into the Hessian EMA."""
        for group in self.param_groups:
            if batch_tokens is not None:
                group["hessian_tokens"] = batch_tokens  # B when optim.bs is unset; saved with the groups
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                update_gnb_hessian([self._state(p)["hessian"] for p in params], [p.grad for p in params],
                                   group["betas"][1])

    @torch.no_grad()
    def step(self, closure=None):
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("SophiaG does not support sparse gradients")
            states = [self._state(p) for p in params]
            for state in states:
                state["step"] += 1
            exp_avgs = [s["exp_avg"] for s in states]
            decay_weights(params, group["lr"], group["weight_decay"])
            update_momentum(exp_avgs, [p.grad for p in params], group["betas"][0])
            sophia_step(params, exp_avgs, [s["hessian"] for s in states], lr=group["lr"], rho=group["rho"],
                        bs=group["bs"] or group.get("hessian_tokens", 1), eps=group["eps"])
        return loss


def build_sophiag(groups, cfg: SophiaGConfig) -> torch.optim.Optimizer:
    return SophiaG(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), rho=cfg.rho, weight_decay=cfg.weight_decay,
                   bs=cfg.bs, eps=cfg.eps, hessian_every=cfg.hessian_every)


register(OptimizerSpec(
    name="sophiag", config_cls=SophiaGConfig, build=build_sophiag, source="optbench",
    reference="Liu et al. 2023, Sophia (arXiv 2305.14342); Liuhong99/Sophia sophia.py @195a786 "
              "(= sophia-opt==0.2.2 SophiaG)",
    search_space={"lr": LogUniform(3e-5, 3e-3), "rho": Choice((0.01, 0.02, 0.04, 0.1)),
                  "weight_decay": Choice((0.0, 0.1, 0.2))},
    capabilities=Capabilities(fsdp="shards", hessian_pass=True),  # elementwise, the Hessian pass's gradients too
))
