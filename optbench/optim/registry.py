"""The optimizer registry: a name maps to its hyperparameters, a builder, capabilities and provenance.

Adding an optimizer is one file in `optbench/optim/algorithms/` that defines an `OptimConfig`
subclass and calls `register`. The trainer and the CLI only go through `build`/`create` and the
specs' capabilities; they never read an optimizer's name.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any
from dataclasses import dataclass

import torch
from torch import nn

from optbench.config.schema import OptimConfig
from optbench.errors import UserError, check_choice, closest
from optbench.optim.routing import Routed, groups_by_role, route
from optbench.optim.search_space import SearchSpace, around_lr
from optbench.optim.state_dtypes import keep_saved_dtypes

Builder = Callable[[list[dict], OptimConfig], torch.optim.Optimizer]


@dataclass(frozen=True)
class Capabilities:
    """What an optimizer needs from the trainer beyond `step()`; the trainer calls the matching hooks."""

    matrix_only: bool = False
    """Takes only the hidden matrices; embeddings, head and vectors go to `cfg.backup` (see hybrid.py)."""
    train_eval_modes: bool = False
    """Has `optimizer.train()` / `optimizer.eval()` (Schedule-Free): eval mode around evaluation and saving."""
    hessian_pass: bool = False
    """Every `optimizer.hessian_every` steps the trainer backpropagates a loss on labels sampled from the
    model and calls `optimizer.update_hessian(batch_tokens=...)` (Sophia-G's Gauss-Newton-Bartlett estimator)."""
    needs_horizon: bool = False
    """Gets `optimizer.set_horizon(total_steps)` before training (VeLO)."""
    observes_loss: bool = False
    """Gets `optimizer.observe_loss(loss)` before each step (learned optimizers use it as a feature)."""
    fsdp: str = "refused"
    """How `train.parallel=fsdp` runs it (optbench/training/fsdp_optimizer.py): "shards" -- the update is
    elementwise and runs on FSDP2's parameter shards (DTensors) as it is; "owner" -- each tensor's update needs
    the whole tensor and nothing else, so every tensor is gathered to one owner rank, stepped there by the same
    code and scattered back; "refused" -- neither holds (`fsdp_refusal` says why) and FSDP refuses it."""
    fsdp_refusal: str = "it does not declare how it runs on FSDP2's shards (Capabilities.fsdp)"
    """One line: why `train.parallel=fsdp` cannot run it, where `fsdp` is "refused"."""


FSDP_MODES = ("shards", "owner", "refused")


@dataclass(frozen=True)
class OptimizerSpec:
    """Everything optbench knows about one optimizer."""

    name: str
    config_cls: type[OptimConfig]
    build: Builder
    source: str
    """Where the update rule's code comes from: 'torch.optim', a PyPI package==version, or 'optbench'."""
    reference: str
    """The paper and the reference implementation (and version) it is checked against."""
    search_space: SearchSpace | None = None
    """Default tuning ranges of this optimizer's own hyperparameters; None (a plugin that declares none): lr over
    a decade either side of the config's default (`register` fills it in)."""
    capabilities: Capabilities = Capabilities()
    adapter: bool = False
    """Wraps a class its config names (optim=torch) instead of implementing one algorithm: not counted among the
    benchmark's optimizers."""


OPTIMIZERS: dict[str, OptimizerSpec] = {}


def register(spec: OptimizerSpec) -> OptimizerSpec:
    """Add an optimizer; its config's `name` must default to `spec.name` and its search space name real keys."""
    if spec.name in OPTIMIZERS:
        first = OPTIMIZERS[spec.name].build.__module__
        raise ValueError(f"optimizer {spec.name!r} registered twice (first by {first})")
    if _default(spec.config_cls, "name") != spec.name:
        raise ValueError(f"{spec.config_cls.__name__}.name must default to {spec.name!r}")
    if spec.search_space is None:
        spec = dataclasses.replace(spec, search_space={"lr": around_lr(_default(spec.config_cls, "lr"))})
    unknown = set(spec.search_space) - _fields(spec.config_cls)
    if unknown:
        raise ValueError(f"search space of {spec.name!r} names unknown hyperparameters {sorted(unknown)}")
    _check_matrix_only(spec)
    if spec.capabilities.fsdp not in FSDP_MODES:
        raise ValueError(f"optimizer {spec.name!r}: Capabilities(fsdp={spec.capabilities.fsdp!r}) is not one of "
                         f"{', '.join(FSDP_MODES)}")
    OPTIMIZERS[spec.name] = spec
    return spec


def _check_matrix_only(spec: OptimizerSpec) -> None:
    """A matrix-only optimizer hands the other roles to `cfg.backup`, which only a MatrixOptimConfig has; a
    MatrixOptimConfig without the capability would carry a backup that is never built."""
    is_matrix_config = _is_matrix_config(spec.config_cls)
    if spec.capabilities.matrix_only != is_matrix_config:
        raise ValueError(
            f"optimizer {spec.name!r}: Capabilities(matrix_only={spec.capabilities.matrix_only}) but "
            f"{spec.config_cls.__name__} {'is' if is_matrix_config else 'is not'} a MatrixOptimConfig; "
            "matrix-only optimizers need a MatrixOptimConfig (its `backup` takes the other parameters) and only they")


def _is_matrix_config(cls: type) -> bool:
    """Imported late: hybrid.py imports adamw.py, which registers through here. While hybrid.py is still importing
    adamw, MatrixOptimConfig does not exist yet, so nothing being registered can subclass it."""
    from optbench.optim import hybrid

    base = getattr(hybrid, "MatrixOptimConfig", None)
    return base is not None and issubclass(cls, base)


def _default(config_cls: type, key: str) -> Any:
    """A config field's declared default, read without building the config: a config's checks may be costly (an
    adapter builds its class once; torch.optim's first construction imports torch's compiler, ~1 s)."""
    declared = {f.name: f for f in dataclasses.fields(config_cls)}[key]
    return declared.default_factory() if declared.default is dataclasses.MISSING else declared.default


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)} - {"name"}


def names() -> list[str]:
    """Every registered optimizer, sorted."""
    return sorted(OPTIMIZERS)


def get(name: str) -> OptimizerSpec:
    check_choice("optimizer", name, OPTIMIZERS)
    return OPTIMIZERS[name]


def config_classes() -> dict[str, type[OptimConfig]]:
    """name -> hyperparameter dataclass, for the config composer."""
    return {name: spec.config_cls for name, spec in OPTIMIZERS.items()}


def make_config(name: str, **hparams) -> OptimConfig:
    """The optimizer's config with `hparams` replacing defaults; an unknown key is a UserError."""
    spec = get(name)
    valid = _fields(spec.config_cls)
    for key in hparams:
        if key not in valid:
            raise UserError(f"unknown hyperparameter '{key}' for optimizer {name}; "
                            f"valid: {', '.join(closest(key, valid))}")
    return spec.config_cls(**hparams)


def matrix_only(cfg: OptimConfig) -> bool:
    """Whether the optimizer takes only hidden matrices: as its spec declares, or as a config with a `matrix_only`
    switch chooses per run (optim=torch wraps any class, and only the user knows which kind it is)."""
    return get(cfg.name).capabilities.matrix_only or bool(getattr(cfg, "matrix_only", False))


def fsdp_mode(cfg: OptimConfig) -> str:
    """How `train.parallel=fsdp` runs the optimizer `cfg` describes: as its spec declares, except that a cautious
    variant (optim=adamw or lion with cautious=true) rescales each tensor's update by the count of its mask
    (numel / (nnz + 1)), which a shard cannot count: it runs on owners instead."""
    mode = get(cfg.name).capabilities.fsdp
    return "owner" if mode == "shards" and getattr(cfg, "cautious", False) else mode


def plan(cfg: OptimConfig, model: nn.Module) -> list[Routed]:
    """The run's one build plan (see routing.py): both the optimizer and routing.json are made from it."""
    return route(model, cfg, matrix_only=matrix_only(cfg))


def build_for(cfg: OptimConfig, routed: list[Routed]) -> torch.optim.Optimizer:
    """Build the optimizer `cfg` describes over a build plan; a matrix optimizer's backup takes the entries the
    plan gives it, with the decay and lr the plan already holds."""
    spec = get(cfg.name)
    if not matrix_only(cfg):
        return keep_saved_dtypes(spec.build(groups_by_role(routed), cfg))
    from optbench.optim.hybrid import HybridOptimizer

    if any(r.part == "main" and r.role != "matrix" for r in routed):
        raise ValueError(f"{cfg.name} takes only matrices: build it from registry.plan(cfg, model), which routes "
                         "the other roles to its backup")
    matrices = [r for r in routed if r.part == "main"]
    rest = [r for r in routed if r.part == "backup"]
    parts = {"matrix": keep_saved_dtypes(spec.build(groups_by_role(matrices), cfg))} if matrices else {}
    if rest:
        parts["backup"] = build_for(cfg.backup, rest)
    return HybridOptimizer(parts)


MODEL_SHAPED = ("n_head",)
"""Hyperparameters that describe the model (Adam-mini's head count): left at None, they are read from the
model's config, so `optim=adam-mini` works without repeating `model.n_head`."""


def build(cfg: OptimConfig, model: nn.Module, routed: list[Routed] | None = None) -> torch.optim.Optimizer:
    """Build the optimizer described by a config for a model's parameters, routed by role; `routed`: the plan
    made by `plan(cfg, model)` (the trainer passes the one it also writes to routing.json), else planned here."""
    model_cfg = getattr(model, "cfg", None)
    shaped = {key: getattr(model_cfg, key) for key in MODEL_SHAPED
              if getattr(cfg, key, 0) is None and getattr(model_cfg, key, None) is not None}
    return build_for(dataclasses.replace(cfg, **shaped) if shaped else cfg,
                     plan(cfg, model) if routed is None else routed)


def create(name: str, model: nn.Module, **hparams) -> torch.optim.Optimizer:
    """`create("adamw", model, lr=3e-4)`: the library entry point."""
    return build(make_config(name, **hparams), model)


def routing_table(routed: list[Routed]) -> list[dict]:
    """The rows of a build plan (printed at start, saved per run as routing.json): each parameter's role, optimizer,
    whether it decays, its weight decay and lr multiplier."""
    return [{"name": r.name, "shape": list(r.param.shape), "role": r.role, "optimizer": r.optimizer,
             "decays": r.decays, "weight_decay": r.weight_decay, "lr_mult": 1.0 if r.lr_mult is None else r.lr_mult}
            for r in routed]


def routing_summary(rows: list[dict]) -> list[str]:
    """routing.json summarised a line per (role, optimizer, decay, lr multiplier), for the start of a run."""
    counts: dict[tuple[str, str, float, float], list[int]] = {}
    for row in rows:
        entry = counts.setdefault((row["role"], row["optimizer"], row["weight_decay"], row["lr_mult"]), [0, 0])
        entry[0], entry[1] = entry[0] + 1, entry[1] + math.prod(row["shape"])
    lines = []
    for (role, name, decay, mult), (tensors, numel) in counts.items():
        lr = f"  lr x {mult:<6g}" if mult != 1.0 else ""
        lines.append(f"routing: {role:<9} -> {name:<10} weight_decay {decay:<6g}{lr} "
                     f"{tensors:>3} tensors {numel:>12,} parameters")
    return lines
