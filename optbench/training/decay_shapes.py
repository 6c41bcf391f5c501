"""Decay shapes: the lr multiplier at progress p in [0, 1] through a decay, 1 at p = 0 and `floor` at p = 1.

`schedule.decay_shape` picks one for wsd's cooldown; the cosine and linear schedules use theirs over the whole run.
linear, cosine and sqrt are optbench's own (sqrt is Hägele et al. 2024's 1-sqrt cooldown). exp, mirror_cosine and
square are the EPFL benchmark's wsd decay types, written from epfml/llm-optimizer-benchmark src/optim/schedule.py
(`wsd_schedule`) @ 1485f58a, where p is (step - n_hold) / n_anneal_steps and floor is final_lr_factor; the
EPFL command line spells mirror_cosine `miror_cosine`. Each gives the same floating-point result as the source's
expression at equal p (the cosine's factor 0.5 is exact wherever it is applied), so the schedules agree bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable

Shape = Callable[[float, float], float]
"""(p, floor) -> multiplier."""


def linear(p: float, floor: float) -> float:
    return floor + (1.0 - floor) * (1.0 - p)


def cosine(p: float, floor: float) -> float:
    return floor + (1.0 - floor) * (0.5 * (1.0 + math.cos(math.pi * p)))


def sqrt(p: float, floor: float) -> float:
    return floor + (1.0 - floor) * (1.0 - math.sqrt(p))


def exp(p: float, floor: float) -> float:
    """Geometric: the lr falls by the same factor every step, so it can only end at a floor above 0."""
    return floor ** p


def mirror_cosine(p: float, floor: float) -> float:
    """The cosine reflected through the linear decay: falls fastest at the start and slowest at the end."""
    return linear(p, floor) * 2 - cosine(p, floor)


def square(p: float, floor: float) -> float:
    """1 - p^2: stays high longer than linear, then falls fastest at the end."""
    return floor + (1.0 - floor) * (1.0 - p ** 2)


DECAY_SHAPES: dict[str, Shape] = {"linear": linear, "cosine": cosine, "sqrt": sqrt, "exp": exp,
                                  "mirror_cosine": mirror_cosine, "square": square}
