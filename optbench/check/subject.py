"""The optimizer under check: a registered name or a `package.module:Class`, resolved to a config by the same
composition as `optbench train optim=...`, and built over a model through the registry's build plan."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from optbench import optim
from optbench.config.schema import OptimConfig
from optbench.errors import UserError
from optbench.optim.registry import Capabilities
from optbench.optim.search_space import SearchSpace, around_lr

ADAPTER = "torch"
"""The registry entry that wraps any `torch.optim.Optimizer` class named by `optim.target=package.module:Class`."""


@dataclass(frozen=True)
class Subject:
    """What the checks need to know about one optimizer: its config, the hooks it wants and its tuning grid."""

    label: str
    """How it was named: 'adamw' or 'package.module:Class'."""
    cfg: OptimConfig
    capabilities: Capabilities
    search_space: SearchSpace

    def build(self, model: nn.Module, **changes) -> torch.optim.Optimizer:
        """The optimizer over `model`'s trainable parameters as `optbench train` builds it, with `changes` made to
        its config (`lr=...`; `backup=...` for a matrix optimizer's backup)."""
        cfg = dataclasses.replace(self.cfg, **changes) if changes else self.cfg
        return optim.build(cfg, model)


def from_config(cfg: OptimConfig, label: str | None = None) -> Subject:
    """A Subject for a config already made (`optim.make_config(...)`), the library's entry besides `resolve`.
    An adapter's registered grid was centred on its class-agnostic default lr; the class named now is checked
    around the lr it was given instead."""
    spec = optim.get(cfg.name)
    if not spec.adapter:
        return Subject(label or cfg.name, cfg, spec.capabilities, spec.search_space)
    return Subject(label or getattr(cfg, "target", cfg.name), cfg, spec.capabilities,
                   {**spec.search_space, "lr": around_lr(cfg.lr)})


def resolve(target: str, overrides: list[str] | tuple[str, ...] = ()) -> Subject:
    """`adamw` or `package.module:Class`, with `optim.key=value` overrides, composed as a run's config would be;
    a bad name, target or override is a UserError."""
    for line in overrides:
        if not line.startswith("optim."):
            raise UserError(f"check-optimizer takes only optim.* overrides, got '{line}'; e.g. optim.lr=3e-4")
    if ":" in target:
        if ADAPTER not in optim.names():
            raise UserError(f"'{target}' needs the '{ADAPTER}' optimizer adapter, which this optbench lacks; "
                            f"give a registered name: {', '.join(optim.names()[:3])}, ...")
        choices = [f"optim={ADAPTER}", f"optim.target={target}"]
    else:
        optim.get(target)  # an unknown name fails here, with the closest ones
        choices = [f"optim={target}"]
    from optbench.config.compose import compose

    return from_config(compose([*choices, *overrides]).optim, label=target)
