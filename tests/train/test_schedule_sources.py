"""The schedules taken from other projects against those projects' formulas, written out here by hand from the
sources, at every step of a 100-step run.

Sources read:
  epfml/llm-optimizer-benchmark src/optim/schedule.py @ 1485f58a: cos_inf_schedule and wsd_schedule (its decay
    types linear, cosine, exp, miror_cosine, square, sqrt); src/main.py @ 7a167f08: cos_inf runs with
    div_factor=1e2 and final_div_factor=0.1, wsd with final_lr_factor=--wsd_final_lr_scale, both under
    torch's LambdaLR, so training step k runs at schedule(k).
  KellerJordan/modded-nanogpt train_gpt2.py @ 01482e15: get_lr, the trapezoidal schedule (warmup_iters,
    then 1.0, then (num_iterations - it) / warmdown_iters), also under LambdaLR.
Every source warms up its own way (EPFL from lr / 100: step / W + (1 - step / W) / 100; modded-nanogpt
(step + 1) / W) where optbench has one warmup for all, (step + 1) / (W + 1): the comparisons start after warmup.
"""

import math

import numpy as np
import pytest

from optbench.config.compose import compose
from optbench.config.schema import ScheduleConfig
from optbench.training.schedules import lr_multiplier

STEPS = 100


def ours(cfg: ScheduleConfig) -> list[float]:
    return [lr_multiplier(step, STEPS, cfg) for step in range(STEPS)]


def epfl_cos_inf(step, n_iterations, n_warmup, n_inf, div_factor=1e2, final_div_factor=0.1):
    """cos_inf_schedule(n_iterations, n_warmup, div_factor, final_div_factor, n_inf)(step)."""
    max_lr = 1.0
    final_lr = max_lr / div_factor / final_div_factor
    n_anneal_steps = n_iterations - n_inf
    if step < n_warmup:
        return step / n_warmup + (1 - step / n_warmup) / div_factor
    if step < n_anneal_steps:
        t = (step - n_warmup) / (n_anneal_steps - n_warmup)
        return final_lr + 0.5 * (max_lr - final_lr) * (1 + np.cos(np.pi * t))
    return final_lr


def epfl_wsd(step, n_iterations, fract_decay, final_lr_factor, decay_type):
    """wsd_schedule(n_iterations, final_lr_factor, n_warmup=0, fract_decay=fract_decay, decay_type=...)(step)."""
    n_anneal_steps = int(fract_decay * n_iterations)
    n_hold = n_iterations - n_anneal_steps
    if step < n_hold:
        return 1.0
    if step >= n_iterations:
        return final_lr_factor
    p = (step - n_hold) / n_anneal_steps
    f = final_lr_factor
    linear = f + (1 - f) * (1 - p)
    cosine = f + (1 - f) * (1 + math.cos(math.pi * p)) * 0.5
    by_type = {"linear": linear, "cosine": cosine, "exp": f ** p, "miror_cosine": linear * 2 - cosine,
               "square": f + (1 - f) * (1 - p ** 2), "sqrt": f + (1 - f) * (1 - math.sqrt(p))}
    return by_type[decay_type]


def modded_trapezoid(it, num_iterations, warmdown_iters):
    """get_lr(it) with warmup_iters = 0."""
    if it < num_iterations - warmdown_iters:
        return 1.0
    return (num_iterations - it) / warmdown_iters


@pytest.mark.parametrize("warmup, held", [(0, 0), (0, 30), (10, 30), (10, 95)])
def test_cos_inf_is_the_epfl_benchmarks(warmup, held):
    """No step shift here: optbench's cos_inf keeps the source's indexing, whose cosine reaches the floor at the
    first held step (at step 100, past the run, when nothing is held). The yaml's final_lr_frac is checked too:
    compose builds the config."""
    cfg = compose(["schedule=cos_inf", f"schedule.warmup_steps={warmup}", f"schedule.cos_inf_steps={held}",
                   f"train.steps={STEPS}"]).schedule
    theirs = [epfl_cos_inf(step, STEPS, warmup, held) for step in range(STEPS)]
    # np.cos there, math.cos here: the same double up to the last bit.
    assert ours(cfg)[warmup:] == pytest.approx(theirs[warmup:], rel=0, abs=1e-12)
    assert set(ours(cfg)[max(warmup, STEPS - held):]) <= {0.1}  # held at final_lr_frac itself


@pytest.mark.parametrize("floor", [0.0, 0.1])
@pytest.mark.parametrize("shape, epfl_name", [("exp", "exp"), ("mirror_cosine", "miror_cosine"), ("square", "square"),
                                              ("linear", "linear"), ("cosine", "cosine"), ("sqrt", "sqrt")])
def test_wsd_decay_shapes_are_the_epfl_benchmarks(shape, epfl_name, floor):
    """Exactly, one step apart: the source's step k runs at schedule(k) and meets final_lr_factor at
    schedule(n_iterations), one past its last step, whereas optbench ends the decay on the last step, so optbench's
    step s is the source's schedule(s + 1). exp with floor 0 is refused (test_schedule_config.py)."""
    if shape == "exp" and floor == 0.0:
        floor = 0.01
    cfg = ScheduleConfig(name="wsd", warmup_steps=0, decay_frac=0.2, decay_shape=shape, final_lr_frac=floor)
    assert ours(cfg) == [epfl_wsd(step + 1, STEPS, 0.2, floor, epfl_name) for step in range(STEPS)]


def test_trapezoid_is_wsd_with_a_linear_decay():
    trapezoid = compose(["schedule=trapezoid", "schedule.decay_frac=0.3"]).schedule
    wsd_linear = compose(["schedule=wsd", "schedule.decay_shape=linear", "schedule.decay_frac=0.3"]).schedule
    assert trapezoid == wsd_linear
    assert ours(trapezoid) == ours(wsd_linear)


def test_trapezoid_is_modded_nanogpts():
    """One step apart as above: modded-nanogpt's warmdown reaches 0 at it = num_iterations, past its last step."""
    cfg = compose(["schedule=trapezoid", "schedule.warmup_steps=0", "schedule.decay_frac=0.3"]).schedule
    theirs = [modded_trapezoid(step + 1, STEPS, warmdown_iters=30) for step in range(STEPS)]
    assert ours(cfg) == pytest.approx(theirs, rel=0, abs=1e-12)
