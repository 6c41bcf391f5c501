"""MARS (Yuan, Liu, Wu, Zhou & Gu, 2024, "MARS: Unleashing the Power of Variance Reduction for Training
Large Models", arXiv 2411.10438): MARS-AdamW, MARS-Lion and MARS-Shampoo, in the approximate form.

Reference implementation followed: AGI-Arena/MARS, MARS/optimizers/mars.py (commits 31d813c6 and 20c60c1c,
identical update code): `update_fn` and `MARS.step` with `is_approx=True`, the authors' default and the
setting of all their reported GPT-2 runs. Per step, for every parameter on the MARS path:

    c~_t = Clip(g_t + gamma * beta1/(1-beta1) * (g_t - g_{t-1}), 1)         functional/variance_reduction.py
    m_t  = beta1 m_{t-1} + (1 - beta1) c~_t
    mars-adamw:   v_t = beta2 v_{t-1} + (1 - beta2) c~_t^2,
                  d_t = m_t / ((sqrt(v_t) / sqrt(1 - beta2^t) + eps) * (1 - beta1^t))
    mars-lion:    d_t = sign(m_t)                                            (beta2 is not used)
    mars-shampoo: d_t = NS5(m_t / (1 - beta1)) * sqrt(max(1, rows/cols))     2-D parameters; others as mars-adamw
    x_{t+1} = x_t - lr * (d_t + weight_decay * x_t)

NS5 is the reference's `NewtonSchulz`: X = M / (||M||_F + eps), transposed to be wide, then five quintic
steps X <- a X + b (X X^T) X + c (X X^T)^2 X with (a, b, c) = (3.4445, -4.7750, 2.0315): the same iteration
as Muon's, so it comes from functional/newton_schulz.py (with MARS's eps); moments and decoupled decay
come from functional/moments.py.

Parameters off the MARS path take plain AdamW on the raw gradient with their own lr, betas and weight decay
(`lr_1d`, `beta1_1d`, `beta2_1d`, `weight_decay_1d`), as the reference does with `optimize_1d=False`.

Which parameters take which path: in the reference nanoGPT setup every 2-D tensor (token and position
embeddings, the tied head, all hidden matrices) takes the MARS path with the run's weight decay, and the
1-D ones (LayerNorm gains, biases) take the AdamW fallback. Here the same split comes from routing roles:
`vector` takes the fallback unless `optimize_1d`; `embedding`, `head` and `matrix` take the MARS path with
the weight decay routing gives them (nanoGPT decays embeddings, as `optim.decay_embeddings` does by default).

Choices and deliberate deviations:
- The reference's `weight_decay_1d` (default 0.1) replaces the routed weight decay of vectors, which is 0:
  kept, for fidelity, though optbench otherwise never decays norm gains and biases (set it to 0 for that;
  the per-run routing table (registry.routing_table), which knows only routing, shows 0 for vectors).
- The split is by role, not by `grad.ndim == 2`: a tensor with more than two dimensions (none in our LMs)
  takes the MARS path here (mars-shampoo gives it the mars-adamw update, as the reference does for any
  non-2-D tensor on its MARS path); the reference would send it to the 1-D AdamW.
- g_{t-1} is kept as a copy; the reference keeps a reference to `p.grad`, which is the same as long as
  gradients are set to None between steps (PyTorch's default), and silently turns the correction off
  when they are zeroed in place instead.
- Newton-Schulz runs in float32 off CUDA (the reference runs it in bfloat16 under torch.compile, which
  is slow and coarse on CPU); on CUDA in bfloat16 as in the reference (`ns_dtype` overrides both).
- Float rounding only: clipping divides by max(1, norm) instead of branching on `norm > 1` (no host sync);
  m is updated as a lerp (torch.optim.Adam's arithmetic) rather than mul + add; the Frobenius norm is
  taken after the cast to the Newton-Schulz dtype; multi-tensor kernels throughout; exp_avg_sq is not
  allocated where nothing reads it (Lion, 2-D Shampoo).
- Not implemented: MARS-exact (`is_approx=False`, a second gradient of the current batch at the previous
  parameters, which the trainer does not compute) and `amsgrad` (reference default False).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from optbench.config.schema import OptimConfig
from optbench.errors import check, check_choice, check_unit_interval
from optbench.optim.functional.closure import evaluate_closure
from optbench.optim.functional.moments import (adam_denominator, bias_correction, decay_, ema_, ema_sq_, pick,
                                               with_grads)
from optbench.optim.functional.newton_schulz import NS_DTYPES, newton_schulz, resolve_dtype
from optbench.optim.functional.variance_reduction import clip_unit_norms_, corrected_gradients
from optbench.optim.registry import Capabilities, OptimizerSpec, register
from optbench.optim.search_space import Choice, LogUniform

VARIANTS = ("adamw", "lion", "shampoo")

PAPER = "Yuan et al. 2024, arXiv 2411.10438; AGI-Arena/MARS MARS/optimizers/mars.py @ 31d813c6 (is_approx=True)"


@dataclass
class MarsConfig(OptimConfig):
    """Hyperparameters shared by the three MARS variants; defaults are those of the reference's `MARS`."""

    lr: float = 3e-3
    """Reference default. Its GPT-2 MARS-AdamW runs use 6e-3 (small), 3e-3 (medium), 2e-3 (large)."""
    weight_decay: float = 0.0
    """Decoupled, scaled by lr, on the MARS path. Reference default 0; its GPT-2 runs use 1e-2."""
    beta1: float = 0.95
    """Momentum of the corrected gradient; also sets the correction's weight gamma * beta1 / (1 - beta1)."""
    eps: float = 1e-8
    """Added to the AdamW denominators and to the Frobenius norm Newton-Schulz divides by."""
    gamma: float = 0.025
    """Strength of the gradient correction; 0 gives AdamW / Lion / Muon-like updates of the clipped gradient."""
    optimize_1d: bool = False
    """True: vectors (norm gains, biases) take the MARS path too; False: they take AdamW with the *_1d keys."""
    lr_1d: float = 3e-3
    """AdamW lr of vectors (the schedule scales it like lr). Reference default; its GPT-2 small run too."""
    beta1_1d: float = 0.9
    """The vectors' AdamW beta1 (reference `betas_1d[0]` default)."""
    beta2_1d: float = 0.95
    """The vectors' AdamW beta2 (reference `betas_1d[1]` default)."""
    weight_decay_1d: float = 0.1
    """The vectors' AdamW weight decay (reference `weight_decay_1d` default), replacing routing's 0."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_unit_interval("optim", **{key: getattr(self, key) for key in ("beta1", "beta2", "beta1_1d", "beta2_1d")
                                        if hasattr(self, key)})
        check(self.eps > 0.0, f"optim.eps={self.eps} must be positive")
        check(self.gamma >= 0.0, f"optim.gamma={self.gamma} must be non-negative")
        check(self.lr_1d >= 0.0, f"optim.lr_1d={self.lr_1d} must be non-negative")
        check(self.weight_decay_1d >= 0.0, f"optim.weight_decay_1d={self.weight_decay_1d} must be non-negative")


@dataclass
class MarsAdamWConfig(MarsConfig):
    name: str = "mars-adamw"
    beta2: float = 0.99
    """Second-moment decay of the corrected gradient (reference default)."""


@dataclass
class MarsLionConfig(MarsConfig):
    """MARS-Lion reads no beta2: its direction is sign(m_t) (the reference ignores `betas[1]` there)."""

    name: str = "mars-lion"


@dataclass
class MarsShampooConfig(MarsConfig):
    name: str = "mars-shampoo"
    beta2: float = 0.99
    """Used only by tensors on the MARS path that are not 2-D (vectors with optimize_1d=True)."""
    ns_dtype: str = "auto"
    """Newton-Schulz precision: auto (bfloat16 on CUDA, as the reference; float32 elsewhere) | float32 | bfloat16."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("optim.ns_dtype", self.ns_dtype, NS_DTYPES)


# ---------------------------------------------------------------------------------------------- the math

def adam_directions(exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor], beta1: float, beta2: float,
                    steps: list[int], eps: float) -> list[Tensor]:
    """(m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps): bias-corrected Adam, eps where the reference
    puts it (outside the bias correction); `steps` may differ between tensors."""
    directions: list[Tensor | None] = [None] * len(exp_avgs)
    buckets: dict[int, list[int]] = {}  # one foreach call per step count (one bucket unless some skipped steps)
    for i, t in enumerate(steps):
        buckets.setdefault(t, []).append(i)
    for step, indices in buckets.items():
        denoms = adam_denominator(pick(exp_avg_sqs, indices), eps, bias_correction(beta2, step))
        torch._foreach_mul_(denoms, bias_correction(beta1, step))
        for i, d in zip(indices, torch._foreach_div(pick(exp_avgs, indices), denoms)):
            directions[i] = d
    return directions


def lion_directions(exp_avgs: list[Tensor]) -> list[Tensor]:
    """sign(m_t): MARS-Lion's preconditioned step (H_t = sqrt(diag(m_t^2)))."""
    return torch._foreach_sign(exp_avgs)


def shampoo_direction(exp_avg: Tensor, beta1: float, eps: float, ns_dtype: str = "auto") -> Tensor:
    """NS5(m_t / (1 - beta1)) * sqrt(max(1, rows / cols)): MARS-Shampoo's step for a 2-D parameter. NS5 is the
    reference's `NewtonSchulz`: 5 quintic steps on M / (||M||_F + eps), the same iteration as Muon's."""
    rows, cols = exp_avg.shape
    dtype = resolve_dtype(ns_dtype, exp_avg.device)
    update = newton_schulz(exp_avg.mul(1.0 / (1.0 - beta1)), steps=5, dtype=dtype, eps=eps)
    return update.to(exp_avg.dtype).mul_(max(1.0, rows / cols) ** 0.5)


def apply_update_(params: list[Tensor], directions: list[Tensor], lr: float, weight_decay: float) -> None:
    """x <- x - lr * (d + weight_decay * x) (decoupled weight decay, scaled by lr)."""
    decay_(params, lr, weight_decay)
    torch._foreach_add_(params, directions, alpha=-lr)


# ----------------------------------------------------------------------------------------- bookkeeping

class MARS(torch.optim.Optimizer):
    """MARS-approx over param groups. A group with `mars=True` takes the variance-reduced update of
    `variant`; a group with `mars=False` takes AdamW on the raw gradient with its own lr/betas/decay."""

    def __init__(self, params, variant: str = "adamw", lr: float = 3e-3, beta1: float = 0.95,
                 beta2: float = 0.99, eps: float = 1e-8, gamma: float = 0.025, weight_decay: float = 0.0,
                 ns_dtype: str = "auto"):
        if variant not in VARIANTS:
            raise ValueError(f"unknown MARS variant {variant!r}; valid: {', '.join(VARIANTS)}")
        defaults = dict(variant=variant, lr=lr, beta1=beta1, beta2=beta2, eps=eps, gamma=gamma,
                        weight_decay=weight_decay, ns_dtype=ns_dtype, mars=True)
        super().__init__(params, defaults)

    @staticmethod
    def _init_state(p: Tensor, group: dict) -> dict:
        state = {"step": 0, "exp_avg": torch.zeros_like(p)}
        if group["mars"]:
            state["last_grad"] = torch.zeros_like(p)  # g_0 = 0, as in the reference
        if not group["mars"] or group["variant"] == "adamw" or (group["variant"] == "shampoo" and p.dim() != 2):
            state["exp_avg_sq"] = torch.zeros_like(p)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            params, grads, states = with_grads(group, self.state, lambda p: self._init_state(p, group))
            if not params:
                continue
            for state in states:
                state["step"] += 1
            if group["mars"]:
                directions = self._mars_directions(group, params, grads, states)
                torch._foreach_copy_([s["last_grad"] for s in states], grads)
            else:
                directions = self._adamw_directions(group, grads, states)
            apply_update_(params, directions, group["lr"], group["weight_decay"])
        return loss

    @staticmethod
    def _adamw_directions(group: dict, values: list[Tensor], states: list[dict]) -> list[Tensor]:
        exp_avgs, exp_avg_sqs = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
        ema_(exp_avgs, values, group["beta1"])
        ema_sq_(exp_avg_sqs, values, group["beta2"])
        return adam_directions(exp_avgs, exp_avg_sqs, group["beta1"], group["beta2"],
                               [s["step"] for s in states], group["eps"])

    def _mars_directions(self, group: dict, params: list[Tensor], grads: list[Tensor],
                         states: list[dict]) -> list[Tensor]:
        beta1, variant = group["beta1"], group["variant"]
        corrections = clip_unit_norms_(corrected_gradients(grads, [s["last_grad"] for s in states],
                                                           group["gamma"], beta1))
        if variant == "adamw":
            return self._adamw_directions(group, corrections, states)
        if variant == "lion":
            exp_avgs = [s["exp_avg"] for s in states]
            ema_(exp_avgs, corrections, beta1)
            return lion_directions(exp_avgs)
        # shampoo: orthogonalised momentum for matrices, the mars-adamw step for any other tensor
        directions: list[Tensor | None] = [None] * len(params)
        matrices = [i for i, p in enumerate(params) if p.dim() == 2]
        others = [i for i, p in enumerate(params) if p.dim() != 2]
        if matrices:
            ema_([states[i]["exp_avg"] for i in matrices], pick(corrections, matrices), beta1)
        for i in matrices:
            directions[i] = shampoo_direction(states[i]["exp_avg"], beta1, group["eps"], group["ns_dtype"])
        if others:
            others_directions = self._adamw_directions(group, pick(corrections, others), pick(states, others))
            for i, d in zip(others, others_directions):
                directions[i] = d
        return directions


def mars_groups(groups: list[dict], cfg: MarsConfig) -> list[dict]:
    """Routed groups with the path each takes: vectors to the AdamW fallback unless `optimize_1d`."""
    out = []
    for group in groups:
        group = dict(group)
        if group.get("role") == "vector" and not cfg.optimize_1d:
            group.update(mars=False, lr=cfg.lr_1d, beta1=cfg.beta1_1d, beta2=cfg.beta2_1d,
                         weight_decay=cfg.weight_decay_1d)
        out.append(group)
    return out


def build_mars(groups: list[dict], cfg: MarsConfig, variant: str) -> MARS:
    return MARS(mars_groups(groups, cfg), variant=variant, lr=cfg.lr, beta1=cfg.beta1,
                beta2=getattr(cfg, "beta2", 0.0), eps=cfg.eps, gamma=cfg.gamma, weight_decay=cfg.weight_decay,
                ns_dtype=getattr(cfg, "ns_dtype", "auto"))


def build_mars_adamw(groups: list[dict], cfg: MarsAdamWConfig) -> MARS:
    return build_mars(groups, cfg, "adamw")


def build_mars_lion(groups: list[dict], cfg: MarsLionConfig) -> MARS:
    return build_mars(groups, cfg, "lion")


def build_mars_shampoo(groups: list[dict], cfg: MarsShampooConfig) -> MARS:
    return build_mars(groups, cfg, "shampoo")


GAMMAS = Choice((0.0125, 0.025, 0.05))

register(OptimizerSpec(
    name="mars-adamw", config_cls=MarsAdamWConfig, build=build_mars_adamw, source="optbench",
    reference=f"{PAPER}; checked by hand and against pytorch-optimizer==4.1.0 MARS (its Adam denominator "
              "made the reference's)",
    search_space={"lr": LogUniform(3e-4, 3e-2), "gamma": GAMMAS, "beta1": Choice((0.9, 0.95)),
                  "beta2": Choice((0.95, 0.99)), "weight_decay": Choice((0.0, 0.01, 0.1))},
    capabilities=Capabilities(fsdp="owner"),  # Clip(c, 1) by each tensor's norm
))

register(OptimizerSpec(
    name="mars-lion", config_cls=MarsLionConfig, build=build_mars_lion, source="optbench",
    reference=f"{PAPER}; checked by hand and against pytorch-optimizer==4.1.0 MARS(mars_type='lion')",
    search_space={"lr": LogUniform(3e-5, 3e-3), "gamma": GAMMAS, "beta1": Choice((0.9, 0.95, 0.99)),
                  "weight_decay": Choice((0.0, 0.01, 0.1))},
    capabilities=Capabilities(fsdp="owner"),  # Clip(c, 1) by each tensor's norm
))

register(OptimizerSpec(
    name="mars-shampoo", config_cls=MarsShampooConfig, build=build_mars_shampoo, source="optbench",
    reference=f"{PAPER}; checked by hand and against pytorch-optimizer==4.1.0 MARS (its Newton-Schulz in "
              "float32)",
    search_space={"lr": LogUniform(3e-4, 3e-2), "gamma": GAMMAS, "beta1": Choice((0.9, 0.95)),
                  "weight_decay": Choice((0.0, 0.01, 0.1))},
    capabilities=Capabilities(fsdp="owner"),  # Newton-Schulz; Clip(c, 1) by each tensor's norm
))
