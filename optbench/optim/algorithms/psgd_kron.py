"""PSGD-Kron: preconditioned SGD with Kronecker-factored preconditioners fitted online.

Xi-Lin Li 2015, "Preconditioned Stochastic Gradient Descent" (arXiv 1512.04202) and Li 2018, "Preconditioner
on Matrix Lie Group for SGD" (arXiv 1809.10232); the "Kron" form of Evan Walters & Omead Pooladzandi's
kron_torch. Matches kron-torch==0.3.3 (`kron_torch.Kron`, kron_torch/kron.py; CC-BY-4.0, (c) Evan Walters,
github.com/evanatyourservice/kron_torch -- the algorithm is re-implemented here from that description, see
optbench/optim/functional/kron.py). heavyball==3.2.1's PSGDKron descends from the same file. Per step:

    m <- beta m + (1 - beta) g;  m^ = m / (1 - beta^t)             (bias-corrected EMA momentum)
    with probability p_t (thinned deterministically, below):
        every ~100th such update: balance the factors' norms (Q unchanged)
        v ~ N(0, I);  m^ <- m^ + sqrt(eps) mean|m^| v;  fit Q on (v, m^)   (functional/kron.py)
    u = Q^T Q m^;  u <- u min(1, 1.1 / rms(u))                      (update RMS clipped at 1.1)
    p <- p - lr (u + wd p)                                          (wd only on tensors of order >= 2)

Factors: upper-triangular per dimension, diagonal for vectors (order < min_ndim_triangular), dimensions of
size 1 or > max_size_triangular, and as memory_save_mode says; tensors of order > 2 are folded into matrices
first (merge_dims). p_t = clamp(exp(-0.001 (t - 500)), 0.03, 1): every step for 500 steps, then an anneal to
one step in ~33; the preconditioner is updated when a counter reaches 1 / p_t (kron_torch's rule, no coin).

Deliberate deviations from kron_torch, all for reproducibility:
- Resume is bit-identical: the schedule's counters live in each param group (kron_torch keeps them as Python
  attributes, outside its state_dict), and the probe vectors v come from a generator re-seeded every step
  from (seed, step) (`noise_seed`) instead of the global RNG. Seeding torch's global RNG with
  `noise_seed(seed, t)` before kron_torch's step t gives kron_torch the same probes (tests do this). The
  stream runs through the parameters in order, so under FSDP2 a rank also draws (and drops) the probes of the
  parameters other ranks own (`sharding.stepped_elsewhere`): each probe is the one a single process draws.
- Balancing happens on every 100th preconditioner update instead of with probability 0.01 per update from
  `random.Random(42)`: the same rate without a hidden stream. It leaves Q (the Kronecker product) unchanged.
- Nothing is printed, and nothing is torch.compile'd (kron_torch compiles its kernels at import).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from optbench.config.schema import OptimConfig
from optbench.errors import check, check_choice, check_unit_interval
from optbench.optim.functional import kron
from optbench.optim.functional.closure import evaluate_closure
from optbench.optim.functional.sharding import stepped_elsewhere
from optbench.optim.registry import Capabilities, OptimizerSpec, register
from optbench.optim.search_space import Choice, LogUniform

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
BALANCE_EVERY = 100
"""Balance the factors on every this many preconditioner updates (kron_torch: with probability 1/100)."""


def noise_seed(seed: int, step: int) -> int:
    """The seed of step `step`'s probe vectors (steps count from 1)."""
    return (seed * 1_000_003 + step) % (2 ** 63)


@dataclass
class PSGDKronConfig(OptimConfig):
    name: str = "psgd-kron"
    lr: float = 3e-4
    """kron_torch's default; updates are RMS-clipped at 1.1, so lr bounds the step per entry."""
    weight_decay: float = 0.0
    """p <- p - lr (u + wd p) on tensors of order >= 2 (kron_torch default 0)."""
    momentum: float = 0.9
    """beta of the bias-corrected EMA momentum (kron_torch `b1`)."""
    precond_lr: float = 0.1
    """Step size of the preconditioner fit."""
    precond_init_scale: float = 1.0
    """Q starts as this times the identity."""
    update_prob_max: float = 1.0
    """Preconditioner update probability during the flat start."""
    update_prob_min: float = 0.03
    """Floor of the annealed update probability."""
    update_prob_decay: float = 0.001
    """Exponential decay rate of the probability after the flat start."""
    update_prob_flat_start: int = 500
    """Steps at update_prob_max before the anneal begins."""
    max_size_triangular: int = 8192
    """Dimensions larger than this get a diagonal factor."""
    min_ndim_triangular: int = 2
    """Tensors of lower order (vectors) get diagonal factors."""
    memory_save_mode: str = "none"
    """none | smart_one_diag | one_diag | all_diag: which dimensions to make diagonal besides the rules above."""
    momentum_into_precond_update: bool = True
    """Fit the preconditioner on the momentum (True) or on the raw gradient."""
    merge_dims: bool = True
    """Fold tensors of order > 2 into matrices before choosing factors."""
    mu_dtype: str = "auto"
    """Momentum dtype: auto (the parameter's) | float32 | bfloat16."""
    precond_dtype: str = "float32"
    """Dtype of the factors and the preconditioned update: float32 | bfloat16."""
    seed: int = 0
    """Seeds the probe vectors (re-seeded every step from (seed, step))."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_unit_interval("optim", momentum=self.momentum)
        check(self.precond_lr > 0.0, f"optim.precond_lr={self.precond_lr} must be positive")
        check(self.precond_init_scale > 0.0, f"optim.precond_init_scale={self.precond_init_scale} must be positive")
        check(0.0 < self.update_prob_min <= self.update_prob_max <= 1.0,
              f"optim.update_prob_min={self.update_prob_min} and optim.update_prob_max={self.update_prob_max} "
              "must satisfy 0 < min <= max <= 1")
        check(self.update_prob_decay >= 0.0, f"optim.update_prob_decay={self.update_prob_decay} must be >= 0")
        check(self.update_prob_flat_start >= 0,
              f"optim.update_prob_flat_start={self.update_prob_flat_start} must be >= 0")
        check(self.max_size_triangular >= 1, f"optim.max_size_triangular={self.max_size_triangular} must be >= 1")
        check(self.min_ndim_triangular >= 0, f"optim.min_ndim_triangular={self.min_ndim_triangular} must be >= 0")
        check_choice("optim.memory_save_mode", self.memory_save_mode, kron.MEMORY_SAVE_MODES)
        check_choice("optim.mu_dtype", self.mu_dtype, ("auto", *DTYPES))
        check_choice("optim.precond_dtype", self.precond_dtype, tuple(DTYPES))


class PSGDKron(torch.optim.Optimizer):
    """PSGD with Kronecker-factored preconditioners (kron_torch.Kron's algorithm)."""

    def __init__(self, params, lr: float = 3e-4, momentum: float = 0.9, weight_decay: float = 0.0,
                 precond_lr: float = 0.1, precond_init_scale: float = 1.0, update_prob_max: float = 1.0,
                 update_prob_min: float = 0.03, update_prob_decay: float = 0.001, update_prob_flat_start: int = 500,
                 max_size_triangular: int = 8192, min_ndim_triangular: int = 2, memory_save_mode: str = "none",
                 momentum_into_precond_update: bool = True, merge_dims: bool = True, mu_dtype: str = "auto",
                 precond_dtype: str = "float32", seed: int = 0):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, precond_lr=precond_lr,
                        precond_init_scale=precond_init_scale, update_prob_max=update_prob_max,
                        update_prob_min=update_prob_min, update_prob_decay=update_prob_decay,
                        update_prob_flat_start=update_prob_flat_start, max_size_triangular=max_size_triangular,
                        min_ndim_triangular=min_ndim_triangular, memory_save_mode=memory_save_mode,
                        momentum_into_precond_update=momentum_into_precond_update, merge_dims=merge_dims,
                        mu_dtype=mu_dtype, precond_dtype=precond_dtype, seed=seed)
        super().__init__(params, defaults)
        self._generators: dict[torch.device, torch.Generator] = {}
        self._step_generators: dict[torch.device, torch.Generator] = {}

    def add_param_group(self, param_group: dict) -> None:
        # The schedule's counters: plain ints in the group, so state_dict carries them.
        param_group.setdefault("kron_step", 0)
        param_group.setdefault("kron_counter", 0)
        param_group.setdefault("kron_updates", 0)
        super().add_param_group(param_group)

    def _generator(self, device: torch.device, seed: int) -> torch.Generator:
        """This step's probe generator on `device`, seeded on first use within the step."""
        if device not in self._step_generators:
            if device not in self._generators:
                self._generators[device] = torch.Generator(device=device)
            self._step_generators[device] = self._generators[device].manual_seed(seed)
        return self._step_generators[device]

    def _schedule(self, group: dict) -> tuple[bool, bool]:
        """Advance the group's counters; (update the preconditioner?, balance it first?)."""
        prob = kron.update_probability(group["kron_step"], group["update_prob_max"], group["update_prob_min"],
                                       group["update_prob_decay"], group["update_prob_flat_start"])
        group["kron_counter"] += 1
        do_update = kron.is_update_step(group["kron_counter"], prob)
        if do_update:
            group["kron_counter"] = 0
            group["kron_updates"] += 1
        group["kron_step"] += 1
        return do_update, do_update and group["kron_updates"] % BALANCE_EVERY == 0

    def _init_state(self, p: torch.Tensor, group: dict) -> dict:
        state = self.state[p]
        if not state:
            shape = p.shape if p.dim() > 0 else torch.Size([1])
            merged = kron.merged_shape(shape) if group["merge_dims"] else None
            shape = torch.Size(merged) if merged is not None else shape
            mu_dtype = p.dtype if group["mu_dtype"] == "auto" else DTYPES[group["mu_dtype"]]
            diagonal = kron.diagonal_dims(shape, group["max_size_triangular"], group["min_ndim_triangular"],
                                          group["memory_save_mode"])
            state["step"] = 0
            state["momentum_buffer"] = torch.zeros(shape, dtype=mu_dtype, device=p.device)
            for i, q in enumerate(kron.init_factors(shape, diagonal, group["precond_init_scale"],
                                                    DTYPES[group["precond_dtype"]], p.device)):
                state[f"Q{i}"] = q
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = evaluate_closure(closure)
        self._step_generators = {}  # re-seeded per step: probes depend on (seed, step) only
        seed = noise_seed(self.param_groups[0]["seed"], self.param_groups[0]["kron_step"] + 1)
        for group in self.param_groups:
            do_update, balance = self._schedule(group)
            beta, precond_dtype = group["momentum"], DTYPES[group["precond_dtype"]]
            for p in group["params"]:
                if p.grad is None:
                    elsewhere = stepped_elsewhere(p)
                    if do_update and elsewhere is not None:  # its probe, drawn as its owner draws it (FSDP2)
                        torch.randn(p.numel(), dtype=precond_dtype, device=elsewhere,
                                    generator=self._generator(elsewhere, seed))
                    continue
                state = self._init_state(p, group)
                state["step"] += 1
                buf = state["momentum_buffer"]
                grad = p.grad.reshape(buf.shape)
                factors = [state[f"Q{i}"] for i in range(buf.dim())]
                buf.mul_(beta).add_(grad, alpha=1 - beta)
                momentum = (buf / (1 - beta ** state["step"])).to(precond_dtype)
                if balance and buf.dim() > 1:
                    kron.balance_(factors)
                if do_update:
                    fit_on = momentum if group["momentum_into_precond_update"] else grad.to(precond_dtype, copy=True)
                    probe = torch.randn(fit_on.shape, dtype=fit_on.dtype, device=fit_on.device,
                                        generator=self._generator(p.device, seed))
                    kron.update_preconditioner_(factors, kron.dither(fit_on, probe), probe, group["precond_lr"])
                update = kron.clip_update_rms_(kron.precondition(factors, momentum)).view(p.shape)
                if group["weight_decay"] != 0 and p.dim() >= 2:
                    update.add_(p, alpha=group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-group["lr"])
        return loss


def build_psgd_kron(groups, cfg: PSGDKronConfig) -> torch.optim.Optimizer:
    return PSGDKron(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                    precond_lr=cfg.precond_lr, precond_init_scale=cfg.precond_init_scale,
                    update_prob_max=cfg.update_prob_max, update_prob_min=cfg.update_prob_min,
                    update_prob_decay=cfg.update_prob_decay, update_prob_flat_start=cfg.update_prob_flat_start,
                    max_size_triangular=cfg.max_size_triangular, min_ndim_triangular=cfg.min_ndim_triangular,
                    memory_save_mode=cfg.memory_save_mode,
                    momentum_into_precond_update=cfg.momentum_into_precond_update, merge_dims=cfg.merge_dims,
                    mu_dtype=cfg.mu_dtype, precond_dtype=cfg.precond_dtype, seed=cfg.seed)


register(OptimizerSpec(
    name="psgd-kron", config_cls=PSGDKronConfig, build=build_psgd_kron, source="optbench",
    reference="Li 2015 (arXiv 1512.04202) / Li 2018 (arXiv 1809.10232) PSGD, Kron form; kron-torch==0.3.3 "
              "kron_torch.Kron (Evan Walters, CC-BY-4.0), checked step by step",
    search_space={"lr": LogUniform(1e-4, 3e-3), "momentum": Choice((0.9, 0.95)),
                  "precond_lr": Choice((0.05, 0.1, 0.3)), "weight_decay": Choice((0.0, 0.01, 0.1))},
    capabilities=Capabilities(fsdp="owner"),
))
