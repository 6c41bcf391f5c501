"""The optimizer registry: a name maps to its hyperparameters, a builder, capabilities and provenance.

Adding an optimizer is one file in `optbench/optim/algorithms/` that defines an `OptimConfig`
subclass and calls `register`. The trainer and the CLI only go through `build`/`create` and the
specs' capabilities; they never read an optimizer's name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from optbench.config.schema import OptimConfig
from optbench.errors import UserError, check_choice, closest
from optbench.optim.routing import Routed, groups_by_role, route
from optbench.optim.search_space import SearchSpace

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
    fsdp: bool = False
    """The update is elementwise and runs on FSDP2's parameter shards (DTensors) as it is, so
    `train.parallel=fsdp` may use it; whole-matrix methods (Muon, SOAP, ...) would need the full tensor."""


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
    search_space: SearchSpace = field(default_factory=dict)
    """Default tuning ranges of this optimizer's own hyperparameters."""
    capabilities: Capabilities = Capabilities()


OPTIMIZERS: dict[str, OptimizerSpec] = {}


def register(spec: OptimizerSpec) -> OptimizerSpec:
    """Add an optimizer; its config's `name` must default to `spec.name` and its search space name real keys."""
    if spec.name in OPTIMIZERS:
        raise ValueError(f"optimizer {spec.name!r} registered twice")
    if spec.config_cls().name != spec.name:
        raise ValueError(f"{spec.config_cls.__name__}.name must default to {spec.name!r}")
    unknown = set(spec.search_space) - _fields(spec.config_cls)
    if unknown:
        raise ValueError(f"search space of {spec.name!r} names unknown hyperparameters {sorted(unknown)}")
    OPTIMIZERS[spec.name] = spec
    return spec


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


def build_for(cfg: OptimConfig, routed: list[Routed]) -> torch.optim.Optimizer:
    """Build the optimizer `cfg` describes over already-routed parameters."""
    spec = get(cfg.name)
    if not spec.capabilities.matrix_only:
        return spec.build(groups_by_role(routed), cfg)
    from optbench.optim.hybrid import HybridOptimizer

    matrices = [r for r in routed if r.role == "matrix"]
    rest = [r for r in routed if r.role != "matrix"]
    parts = {"matrix": spec.build(groups_by_role(matrices), cfg)} if matrices else {}
    if rest:
        parts["backup"] = build_for(cfg.backup, [dataclasses.replace(r, weight_decay=_backup_decay(r, cfg))
                                                 for r in rest])
    return HybridOptimizer(parts)


def _backup_decay(r: Routed, cfg: OptimConfig) -> float:
    """The backup's own weight decay, applied where routing allows decay at all."""
    return cfg.backup.weight_decay if r.weight_decay > 0 else 0.0


MODEL_SHAPED = ("n_head",)
"""Hyperparameters that describe the model (Adam-mini's head count): left at None, they are read from the
model's config, so `optim=adam-mini` works without repeating `model.n_head`."""


def build(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Build the optimizer described by a config for a model's parameters, routed by role."""
    model_cfg = getattr(model, "cfg", None)
    shaped = {key: getattr(model_cfg, key) for key in MODEL_SHAPED
              if getattr(cfg, key, 0) is None and getattr(model_cfg, key, None) is not None}
    return build_for(dataclasses.replace(cfg, **shaped) if shaped else cfg, route(model, cfg))


def create(name: str, model: nn.Module, **hparams) -> torch.optim.Optimizer:
    """`create("adamw", model, lr=3e-4)`: the library entry point."""
    return build(make_config(name, **hparams), model)


def routing_table(cfg: OptimConfig, model: nn.Module) -> list[dict]:
    """Each parameter's role, optimizer, weight decay and lr multiplier, as rows (printed at start, saved per run)."""
    spec = get(cfg.name)
    rows = []
    for r in route(model, cfg):
        to_backup = spec.capabilities.matrix_only and r.role != "matrix"
        decay = _backup_decay(r, cfg) if to_backup else r.weight_decay
        rows.append({"name": r.name, "shape": list(r.param.shape), "role": r.role,
                     "optimizer": cfg.backup.name if to_backup else cfg.name, "weight_decay": decay,
                     "lr_mult": 1.0 if r.lr_mult is None else r.lr_mult})
    return rows
