"""SGD with (Nesterov) momentum and L2 weight decay added to the gradient, as torch.optim.SGD does.

Source: torch.optim.SGD, the reference implementation itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from optbench.config.schema import OptimConfig
from optbench.errors import check, check_unit_interval
from optbench.optim.registry import Capabilities, OptimizerSpec, register
from optbench.optim.search_space import Choice, LogUniform


@dataclass
class SGDConfig(OptimConfig):
    name: str = "sgd"
    lr: float = 0.1
    weight_decay: float = 0.0
    momentum: float = 0.9
    dampening: float = 0.0
    nesterov: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_unit_interval("optim", momentum=self.momentum)
        check(not self.nesterov or (self.momentum > 0 and self.dampening == 0),
              "optim.nesterov=true needs optim.momentum > 0 and optim.dampening=0")


def build_sgd(groups, cfg: SGDConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, dampening=cfg.dampening,
                           weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)


register(OptimizerSpec(
    name="sgd", config_cls=SGDConfig, build=build_sgd, source="torch.optim",
    reference=f"Sutskever et al. 2013 (Nesterov momentum); torch.optim.SGD (torch {torch.__version__.split('+')[0]})",
    search_space={"lr": LogUniform(1e-3, 1.0), "momentum": Choice((0.9, 0.95, 0.98))},
    capabilities=Capabilities(fsdp="shards"),
))
