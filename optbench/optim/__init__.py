"""Optimizers behind one registry: `names()`, `create(name, model, **hparams)`, `build(cfg, model)`."""

from optbench.optim import adamw, sgd  # noqa: F401  (registers them)
from optbench.optim.registry import OPTIMIZERS, OptimizerSpec, build, config_classes, create, get, names, register

__all__ = ["OPTIMIZERS", "OptimizerSpec", "build", "config_classes", "create", "get", "names", "register"]
