"""Optimizers behind one registry: `names()`, `create(name, model, **hparams)`, `plan(cfg, model)` (every
parameter's role, optimizer, decay and lr multiplier) and `build(cfg, model, plan)`.

Every module in `optbench/optim/algorithms/` is imported here and registers itself.
"""

import importlib
import pkgutil

from optbench.optim import algorithms
from optbench.optim.memory import state_bytes
from optbench.optim.registry import (OPTIMIZERS, Capabilities, OptimizerSpec, build, config_classes, create, get,
                                     make_config, names, plan, register, routing_summary,
                                     routing_table)

for _module in pkgutil.iter_modules(algorithms.__path__):
    importlib.import_module(f"{algorithms.__name__}.{_module.name}")

__all__ = ["OPTIMIZERS", "Capabilities", "OptimizerSpec", "build", "config_classes", "create", "get",
           "make_config", "names", "plan", "register", "routing_summary", "routing_table",
           "state_bytes"]
