"""Learning-rate schedules as pure functions of the step: multiplier(step) in [0, 1] times the base lr.

A pure function of (step, total steps, config) is what makes resume exact: nothing to checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from optbench.config.schema import ScheduleConfig

Shape = Callable[[float], float]
"""Decay from 1 at progress 0 to 0 at progress 1."""

DECAY_SHAPES: dict[str, Shape] = {
    "linear": lambda p: 1.0 - p,
    "cosine": lambda p: 0.5 * (1.0 + math.cos(math.pi * p)),
    "sqrt": lambda p: 1.0 - math.sqrt(p),  # Hägele et al. 2024's "1-sqrt" cooldown
}


def _progress(step: int, start: int, end: int) -> float:
    """Where `step` lies in [start, end], clamped to [0, 1]."""
    return min(max((step - start) / max(end - start, 1), 0.0), 1.0)


def lr_multiplier(step: int, total_steps: int, cfg: ScheduleConfig) -> float:
    """The learning-rate multiplier at 0-based `step` of a run of `total_steps` steps.

    Warmup rises linearly to 1 as nanoGPT's does, (step + 1) / (warmup + 1), so step 0 never has lr 0.
    After warmup: cosine and linear decay from 1 to final_lr_frac at the last step; wsd holds 1 and
    decays over the last decay_frac of the run in decay_shape; constant holds 1.
    """
    if step < cfg.warmup_steps:
        return (step + 1) / (cfg.warmup_steps + 1)
    last = total_steps - 1
    floor = cfg.final_lr_frac
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "wsd":
        decay_start = max(cfg.warmup_steps, last - round(cfg.decay_frac * total_steps))
        if step < decay_start:
            return 1.0
        shape = DECAY_SHAPES[cfg.decay_shape]
    else:
        decay_start = cfg.warmup_steps
        shape = DECAY_SHAPES[cfg.name]
    return floor + (1.0 - floor) * shape(_progress(step, decay_start, last))
