"""Weight averaging, independent of the optimizer: an EMA or a uniform average of the weights,
evaluated beside the trained model (as the EPFL harness offers). Built on torch.optim.swa_utils.
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from optbench.config.schema import TrainConfig


class WeightAverage:
    """Averages a model's weights after each optimizer step from `weight_avg_start` on."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig):
        self.start = cfg.weight_avg_start
        # ema: w_avg <- decay * w_avg + (1 - decay) * w; uniform: the running mean of all weights seen
        multi_avg_fn = get_ema_multi_avg_fn(cfg.weight_avg_decay) if cfg.weight_avg == "ema" else None
        self.averaged = AveragedModel(model, multi_avg_fn=multi_avg_fn, use_buffers=True)

    @property
    def module(self) -> torch.nn.Module:
        return self.averaged.module

    def update(self, model: torch.nn.Module, steps_done: int) -> None:
        if steps_done >= self.start:
            self.averaged.update_parameters(model)

    def state_dict(self) -> dict:
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.averaged.load_state_dict(state)
