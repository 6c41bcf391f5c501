"""Training: `train(cfg)` runs one config to a run directory and returns its summary."""

from __future__ import annotations

from typing import Any

from optbench.config.schema import Config


def train(cfg: Config | list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Train one model with one optimizer: a `Config`, or overrides such as ["optim.lr=3e-3"]."""
    from optbench.config.compose import compose
    from optbench.training import distributed
    from optbench.training.trainer import Trainer

    if not isinstance(cfg, Config):
        cfg = compose(list(cfg))
    with distributed.process_group(distributed.from_environment()):  # under torchrun: joined, then left
        return Trainer(cfg).train()
