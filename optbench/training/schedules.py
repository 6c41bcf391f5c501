"""Learning-rate schedules as pure functions of the step: multiplier(step) in [0, 1] times the base lr.

A pure function of (step, total steps, config) is what makes resume exact: nothing to checkpoint.
"""

from __future__ import annotations

import math

from optbench.config.schema import ScheduleConfig
from optbench.training.decay_shapes import DECAY_SHAPES


def warmup_steps(cfg: ScheduleConfig, total_steps: int) -> int:
    """The warmup's length in steps: warmup_frac of the run when it is set, floored as PyLO's
    int(iters_max * warmup_ratio) is, else warmup_steps (the config refuses both at once)."""
    return int(total_steps * cfg.warmup_frac) if cfg.warmup_frac else cfg.warmup_steps


def _progress(step: int, start: int, end: int) -> float:
    """Where `step` lies in [start, end], clamped to [0, 1]."""
    return min(max((step - start) / max(end - start, 1), 0.0), 1.0)


def _cos_inf(step: int, total_steps: int, warmup: int, cfg: ScheduleConfig) -> float:
    """The EPFL benchmark's cos_inf after warmup (epfml/llm-optimizer-benchmark src/optim/schedule.py
    `cos_inf_schedule` @ 1485f58a): a cosine from 1 to final_lr_frac over [warmup, total - cos_inf_steps), then
    final_lr_frac held for the last cos_inf_steps steps. As there, the cosine's t runs to 1 at the first held step
    (so with cos_inf_steps=0 the last step is one short of the floor, unlike `cosine`'s)."""
    anneal_end = total_steps - cfg.cos_inf_steps
    floor = cfg.final_lr_frac
    if step >= anneal_end:
        return floor
    t = (step - warmup) / (anneal_end - warmup)
    return floor + 0.5 * (1.0 - floor) * (1.0 + math.cos(math.pi * t))


def lr_multiplier(step: int, total_steps: int, cfg: ScheduleConfig) -> float:
    """The learning-rate multiplier at 0-based `step` of a run of `total_steps` steps.

    Warmup rises linearly to 1 as nanoGPT's does, (step + 1) / (warmup + 1), so step 0 never has lr 0.
    After warmup: cosine and linear decay from 1 to final_lr_frac at the last step; wsd holds 1 and
    decays over the last decay_frac of the run in decay_shape (optbench/training/decay_shapes.py), reaching
    final_lr_frac at the last step; cos_inf is the EPFL benchmark's (`_cos_inf`); constant holds 1.
    """
    warmup = warmup_steps(cfg, total_steps)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "cos_inf":
        return _cos_inf(step, total_steps, warmup, cfg)
    last = total_steps - 1
    if cfg.name == "wsd":
        decay_start = max(warmup, last - round(cfg.decay_frac * total_steps))
        if step < decay_start:
            return 1.0
        shape = DECAY_SHAPES[cfg.decay_shape]
    else:
        decay_start = warmup
        shape = DECAY_SHAPES[cfg.name]
    return shape(_progress(step, decay_start, last), cfg.final_lr_frac)
