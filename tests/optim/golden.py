"""Replaying PyLO's golden trajectories (../shared/data/golden, see its README.md) through optbench's optimizers.

PyLO is not installable as a test dependency, so its own `VeLO_naive` and `AdafacLO_naive` (muLO's update) were run
once on tiny seeded cases and their trajectories stored: `init/<name>`, `grad/<t>/<name>` (p.grad before step t),
VeLO's `loss` (the training loss of step t) and `param/<t>/<name>` (after step t), with the random meta-weights in
the layout `optim.weights=DIR` reads. Replaying them checks the whole update -- features and their order, the
networks and their tensor names, decays, step and magnitude multipliers, weight decay -- against PyLO's numbers to
float32 rounding, which no hand-built or self-referential test can. The data is read in place, never copied.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn


@dataclass
class GoldenCase:
    """One case folder: case.json (`spec`), case.safetensors (`tensors`) and the meta-weights in `weights/`."""

    name: str
    folder: Path
    spec: dict
    tensors: dict[str, Tensor]

    @property
    def order(self) -> list[str]:
        """The parameters, in the order of PyLO's one param group."""
        return list(self.spec["param_order"])

    @property
    def kwargs(self) -> dict:
        """PyLO's optimizer keyword arguments (lr, weight_decay, ...)."""
        return dict(self.spec["optimizer_kwargs"])

    @property
    def steps(self) -> int:
        return int(self.spec["steps"])

    @property
    def weights(self) -> str:
        """What `optim.weights` takes: the folder holding the meta-network(s)."""
        return str(self.folder / "weights")

    def loss(self, step: int) -> Tensor:
        """The loss PyLO's VeLO got at `step`: a 0-d float32 tensor, as case.json's layout says."""
        return self.tensors["loss"][step].to(torch.float32)

    def module(self, lr_multiplier: float | None = None) -> nn.Module:
        """The case's parameters (from init/*) as a module, for the registry path: the 2-D ones route as hidden
        matrices, the 1-D ones as vectors. With `lr_multiplier` it declares muP multipliers for its matrices, as an
        optbench muP model does (`lr_multipliers()`, read by routing)."""
        return GoldenModule(self, lr_multiplier)

    def parameters(self) -> dict[str, nn.Parameter]:
        """name -> a fresh parameter initialised from init/<name>, in param_order."""
        return {name: nn.Parameter(self.tensors[f"init/{name}"].clone()) for name in self.order}


class GoldenModule(nn.Module):
    def __init__(self, case: GoldenCase, lr_multiplier: float | None):
        super().__init__()
        for name, p in case.parameters().items():
            self.register_parameter(name, p)
        self.lr_multiplier = lr_multiplier

    def lr_multipliers(self) -> dict[str, float]:
        if self.lr_multiplier is None:
            return {}
        return {name: self.lr_multiplier for name, p in self.named_parameters() if p.dim() >= 2}


def load_case(shared_data: Path, name: str) -> GoldenCase:
    """The golden case `name` (velo | mulo) under the shared data folder."""
    from safetensors.torch import load_file

    folder = shared_data / "golden" / name
    spec = json.loads((folder / "case.json").read_text())
    return GoldenCase(name, folder, spec, load_file(str(folder / "case.safetensors")))


def replay(case: GoldenCase, params: dict[str, Tensor], optimizer: torch.optim.Optimizer, rtol: float, atol: float,
           before_step: Callable[[int], None] = lambda step: None) -> None:
    """Step `optimizer` through the case: before step t every p.grad is the recorded grad/<t>/<name> and
    `before_step(t)` runs (VeLO: hand it the loss); after it every parameter must equal param/<t>/<name>.
    The first mismatch fails, naming the step and the parameter."""
    assert sorted(params) == sorted(case.order), f"parameters {sorted(params)} are not the case's {case.order}"
    for t in range(case.steps):
        for name, p in params.items():
            p.grad = case.tensors[f"grad/{t}/{name}"].clone()
        before_step(t)
        optimizer.step()
        for name, p in params.items():
            expected = case.tensors[f"param/{t}/{name}"]
            torch.testing.assert_close(p.detach(), expected, rtol=rtol, atol=atol,
                                       msg=lambda m, t=t, name=name: f"{case.name} step {t}, {name}: {m}")
