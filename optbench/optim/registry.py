"""The optimizer registry: a name maps to its hyperparameter dataclass, a builder and its provenance.

Adding an optimizer is one file that defines an `OptimConfig` subclass and calls `register`.
The trainer and the CLI only go through `create` and the specs here; they never read a name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from optbench.config.schema import OptimConfig
from optbench.errors import UserError, check_choice, closest
from optbench.optim.param_groups import ParamGroup, param_groups

Builder = Callable[[list[ParamGroup], OptimConfig], torch.optim.Optimizer]


@dataclass(frozen=True)
class OptimizerSpec:
    """Everything optbench knows about one optimizer."""

    name: str
    config_cls: type[OptimConfig]
    build: Builder
    source: str
    """Where the update rule comes from: 'torch.optim', a PyPI package, or 'optbench'."""
    reference: str
    """The paper and the reference implementation (and version) it is checked against."""


OPTIMIZERS: dict[str, OptimizerSpec] = {}


def register(spec: OptimizerSpec) -> OptimizerSpec:
    """Add an optimizer; its config class's `name` default must equal `spec.name`."""
    if spec.name in OPTIMIZERS:
        raise ValueError(f"optimizer {spec.name!r} registered twice")
    if spec.config_cls().name != spec.name:
        raise ValueError(f"{spec.config_cls.__name__}.name must default to {spec.name!r}")
    OPTIMIZERS[spec.name] = spec
    return spec


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
    """The optimizer's config with `hparams` replacing defaults; unknown keys are a UserError."""
    spec = get(name)
    fields = {f.name for f in dataclasses.fields(spec.config_cls)} - {"name"}
    for key in hparams:
        if key not in fields:
            raise UserError(f"unknown hyperparameter '{key}' for optimizer {name}; "
                            f"valid: {', '.join(closest(key, fields))}")
    return spec.config_cls(**hparams)


def build(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Build the optimizer described by a config for a model's parameters."""
    return get(cfg.name).build(param_groups(model, cfg.weight_decay), cfg)


def create(name: str, model: nn.Module, **hparams) -> torch.optim.Optimizer:
    """`create("adamw", model, lr=3e-4)`: the library entry point."""
    return build(make_config(name, **hparams), model)
