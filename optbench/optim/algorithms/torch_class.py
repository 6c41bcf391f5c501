"""`optim=torch`: any torch.optim-style class by its import path, with optbench's routing, schedules and checkpoints.

    optbench train optim=torch optim.target=torch.optim:RMSprop optim.lr=1e-3 'optim.kwargs={momentum: 0.9}'

An adapter, not an algorithm: the class's own code is the update. It is built over the build plan's param groups
(norms and biases at weight decay 0, as for every optimizer) with lr=optim.lr, weight_decay=optim.weight_decay (when
its constructor takes one) and `optim.kwargs` as keywords; the schedule scales each group's lr, and checkpoints hold
its state_dict. `optim.matrix_only=true` is for a class defined on hidden matrices only (another package's Muon):
it then takes only those, and `optim.backup` (AdamW) the rest, as for optbench's matrix optimizers.

Once checked, `kwargs` holds every keyword of the constructor (the class's defaults where none was given), so
config.yaml records what was built and a suite may fix or tune any of them as `kwargs.<key>`. Mistakes are found
when the config is made, before a run starts: a target that does not import or is no torch.optim.Optimizer, a
keyword the constructor does not take, and values it refuses (it is built once on a dummy matrix to find out).
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

from optbench.config.schema import OptimConfig
from optbench.errors import UserError, check, closest
from optbench.optim.algorithms.adamw import AdamWConfig
from optbench.optim.registry import Capabilities, OptimizerSpec, register

SET_ELSEWHERE = ("lr", "weight_decay")
"""Constructor keywords optbench sets itself: the schedule scales lr and the routing decides who decays."""


@dataclass
class TorchClassConfig(OptimConfig):
    name: str = "torch"
    target: str = "torch.optim:AdamW"
    """The optimizer class as package.module:Class, a torch.optim.Optimizer subclass taking (params, lr, ...)."""
    lr: float = 1e-3
    weight_decay: float = 0.0
    """The class's weight_decay (decoupled or L2, as it defines it); 0 on norms and biases through their groups."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Any other constructor keyword ('optim.kwargs={momentum: 0.9}' or optim.kwargs.momentum=0.9); filled with the
    class's defaults for the rest when checked."""
    matrix_only: bool = False
    """The class takes only hidden matrices; embeddings, head and vectors go to `backup`."""
    backup: AdamWConfig = field(default_factory=lambda: AdamWConfig(lr=3e-3, weight_decay=0.0))
    """With matrix_only: the optimizer of embeddings, head and vectors (`optim.backup.lr=...`)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        cls = import_target(self.target)
        self.kwargs = constructor_keywords(self.target, cls, self.kwargs)
        check(self.weight_decay == 0.0 or takes(cls, "weight_decay"),
              f"optim.weight_decay={self.weight_decay}: {self.target} takes no weight_decay; leave it at 0")
        try:  # the class's own checks of its values (a negative momentum, ...), now rather than when a run starts
            construct(cls, [torch.zeros(2, 2, requires_grad=True)], self)
        except (ValueError, TypeError) as err:
            raise UserError(f"optim.target={self.target} refused its settings: {_first_line(err)}") from None


def import_target(target: str) -> type[torch.optim.Optimizer]:
    """The class `target` names; a UserError naming the target when it does not import or is no optimizer."""
    module_name, sep, attr = target.partition(":")
    check(bool(sep and module_name and attr), f"optim.target={target} must be package.module:Class, "
                                              "e.g. torch.optim:RMSprop")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # ImportError, or whatever the module raises as it imports: the user named it
        raise UserError(f"optim.target={target}: cannot import {module_name} ({_first_line(err)})") from None
    cls = getattr(module, attr, None)
    if cls is None:
        found = [n for n, v in vars(module).items() if _is_optimizer(v) and v is not torch.optim.Optimizer]
        raise UserError(f"optim.target={target}: {module_name} has no '{attr}'; valid: "
                        f"{', '.join(closest(attr, found)) or 'no optimizer classes there'}")
    check(_is_optimizer(cls), f"optim.target={target} is not a torch.optim.Optimizer subclass")
    return cls


def _is_optimizer(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, torch.optim.Optimizer)


def _parameters(cls: type) -> tuple[dict[str, inspect.Parameter], bool]:
    """The constructor's named parameters after the first (the params slot), and whether it takes **kwargs."""
    params = list(inspect.signature(cls).parameters.values())
    named = {p.name: p for p in params[1:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return named, any(p.kind is p.VAR_KEYWORD for p in params)


def takes(cls: type, keyword: str) -> bool:
    named, open_ended = _parameters(cls)
    return keyword in named or open_ended


def constructor_keywords(target: str, cls: type, given: dict[str, Any]) -> dict[str, Any]:
    """`given` checked against the constructor, completed with its defaults (those plain enough for YAML), in the
    signature's order; a UserError names the first bad key with the valid ones."""
    named, open_ended = _parameters(cls)
    check(takes(cls, "lr"), f"optim.target={target} takes no lr; optbench's schedules set each param group's lr")
    valid = [name for name in named if name not in SET_ELSEWHERE]
    for key in given:
        check(key not in SET_ELSEWHERE, f"optim.kwargs.{key}: set optim.{key} instead (the schedule and the "
                                        "routing's decay groups read it there)")
        check(key in valid or open_ended, f"optim.kwargs.{key}: {target} takes no keyword '{key}'; valid: "
                                          f"{', '.join(valid) or 'none'}")
    missing = [name for name in valid if named[name].default is inspect.Parameter.empty and name not in given]
    check(not missing, f"optim.target={target} needs optim.kwargs.{', optim.kwargs.'.join(missing)}")
    defaults = {name: named[name].default for name in valid if _plain(named[name].default)}
    return {**defaults, **given}


def _plain(value: Any) -> bool:
    """A default a config file can hold (others stay the class's own, out of kwargs)."""
    if isinstance(value, tuple | list):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, bool | int | float | str)


def _first_line(err: BaseException) -> str:
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)


def construct(cls: type, params, cfg: TorchClassConfig) -> torch.optim.Optimizer:
    decay = {"weight_decay": cfg.weight_decay} if takes(cls, "weight_decay") else {}
    return cls(params, lr=cfg.lr, **decay, **cfg.kwargs)


def build_torch_class(groups, cfg: TorchClassConfig) -> torch.optim.Optimizer:
    return construct(import_target(cfg.target), groups, cfg)


register(OptimizerSpec(
    name="torch", config_cls=TorchClassConfig, build=build_torch_class, source="optim.target (the class's own code)",
    reference="the class optim.target names; tests/optim/test_torch_class.py checks torch.optim.RMSprop through it "
              "step by step",
    adapter=True,
    capabilities=Capabilities(
        fsdp="refused",
        fsdp_refusal="the class it wraps may read whole tensors or several at once, which optbench cannot tell"),
))
