"""Optimizers behind one registry: `names()`, `create(name, model, **hparams)`, `plan(cfg, model)` (every
parameter's role, optimizer, decay and lr multiplier) and `build(cfg, model, plan)`.

Every module in `optbench/optim/algorithms/` is imported here and registers itself. The same names are the public
registration API of plugins (optbench/plugins.py): `register(OptimizerSpec(...))` with an `OptimConfig` subclass
(`MatrixOptimConfig` for a matrix-only one), `Capabilities`, and the search-space types.
"""

import importlib
import pkgutil

from optbench.config.schema import OptimConfig
from optbench.optim import algorithms
from optbench.optim.hybrid import MatrixOptimConfig
from optbench.optim.memory import state_bytes
from optbench.optim.registry import (OPTIMIZERS, Capabilities, OptimizerSpec, build, config_classes, create,
                                     fsdp_mode, get, make_config, matrix_only, names, plan, register,
                                     routing_summary, routing_table)
from optbench.optim.search_space import Choice, LogUniform, Uniform

for _module in pkgutil.iter_modules(algorithms.__path__):
    importlib.import_module(f"{algorithms.__name__}.{_module.name}")

__all__ = ["OPTIMIZERS", "Capabilities", "Choice", "LogUniform", "MatrixOptimConfig", "OptimConfig", "OptimizerSpec",
           "Uniform", "build", "config_classes", "create", "fsdp_mode", "get", "make_config", "matrix_only", "names",
           "plan", "register", "routing_summary", "routing_table", "state_bytes"]
