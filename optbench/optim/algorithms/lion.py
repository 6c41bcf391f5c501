"""Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms", arXiv:2302.06675).

Source: optbench (foreach). The authors' code (google/automl, lion/lion_pytorch.py) is not on PyPI; the
update order is the paper's Program 1 and lucidrains' lion-pytorch==0.2.5 `Lion`, which the tests match
step by step:

    c = beta1 m + (1 - beta1) g;   p <- p (1 - lr wd) - lr sign(c);   m <- beta2 m + (1 - beta2) g

Weight decay is decoupled and scaled by lr, as in the paper (lion-pytorch's default,
decoupled_weight_decay=False, which does not divide wd by the initial lr).

`cautious=True` (and the registry name `c-lion`, the same config with cautious on by default) is C-Lion
(Liang et al. 2024, "Cautious Optimizers", arXiv:2411.16085; kyleliang919/C-Optim c_lion.py): the sign step is
kept only where it agrees in sign with the gradient, rescaled per tensor by numel / (nnz + 1)
(functional/cautious.py), before it is applied; the momentum update is unchanged. Checked step by step
against pytorch-optimizer==4.1.0 `Lion(cautious=True)`, which applies the same mask in the same place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from optbench.config.schema import OptimConfig
from optbench.errors import check_unit_interval
from optbench.optim.functional.cautious import cautious_
from optbench.optim.functional.closure import evaluate_closure
from optbench.optim.functional.moments import with_grads
from optbench.optim.functional.sign import lion_direction, lion_momentum_, sign_step_
from optbench.optim.registry import Capabilities, OptimizerSpec, register
from optbench.optim.search_space import Choice, LogUniform


@dataclass
class LionConfig(OptimConfig):
    name: str = "lion"
    lr: float = 1e-4
    """The paper's default; Lion wants an lr 3-10x smaller than AdamW's (its steps have norm sqrt(n))."""
    weight_decay: float = 0.0
    """Decoupled, p <- p (1 - lr wd); the paper uses a wd 3-10x larger than AdamW's to keep lr*wd."""
    beta1: float = 0.9
    """Interpolation between momentum and gradient for the update direction."""
    beta2: float = 0.99
    """Decay of the momentum itself."""
    cautious: bool = False
    """C-Lion: step only where sign(c) agrees with the gradient, rescaled per tensor by numel / (nnz + 1)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_unit_interval("optim", beta1=self.beta1, beta2=self.beta2)


@dataclass
class CLionConfig(LionConfig):
    name: str = "c-lion"
    cautious: bool = True
    """C-Lion by default; the C-Optim paper keeps Lion's hyperparameters."""


class Lion(torch.optim.Optimizer):
    """Lion over param groups with keys lr, beta1, beta2, weight_decay, cautious; state: exp_avg per parameter."""

    def __init__(self, params, lr: float = 1e-4, beta1: float = 0.9, beta2: float = 0.99,
                 weight_decay: float = 0.0, cautious: bool = False):
        super().__init__(params, dict(lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay,
                                      cautious=cautious))

    @torch.no_grad()
    def step(self, closure=None):
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            params, grads, states = with_grads(group, self.state,
                                               lambda p: {"exp_avg": torch.zeros_like(p)})
            if not params:
                continue
            exp_avgs = [s["exp_avg"] for s in states]
            directions = lion_direction(exp_avgs, grads, group["beta1"])
            if group.get("cautious", False):  # .get: groups saved before the option existed
                cautious_(directions, grads)
            sign_step_(params, directions, group["lr"], group["weight_decay"])
            lion_momentum_(exp_avgs, grads, group["beta2"])
        return loss


def build_lion(groups, cfg: LionConfig) -> torch.optim.Optimizer:
    return Lion(groups, lr=cfg.lr, beta1=cfg.beta1, beta2=cfg.beta2, weight_decay=cfg.weight_decay,
                cautious=cfg.cautious)


SEARCH_SPACE = {"lr": LogUniform(1e-5, 1e-3), "beta2": Choice((0.95, 0.98, 0.99)),
                "weight_decay": Choice((0.0, 0.1, 0.3, 1.0))}


register(OptimizerSpec(
    name="lion", config_cls=LionConfig, build=build_lion, source="optbench",
    reference="Chen et al. 2023 (arXiv:2302.06675); lion-pytorch==0.2.5 Lion (matches google/automl lion)",
    search_space=SEARCH_SPACE,
    capabilities=Capabilities(fsdp="shards"),
))

register(OptimizerSpec(
    name="c-lion", config_cls=CLionConfig, build=build_lion, source="optbench",
    reference="Liang et al. 2024 (arXiv:2411.16085), kyleliang919/C-Optim c_lion.py; "
              "pytorch-optimizer==4.1.0 Lion(cautious=True)",
    search_space=SEARCH_SPACE,
    capabilities=Capabilities(fsdp="owner"),  # the mask rescales each tensor by numel / (nnz + 1)
))
