"""Schedule shapes: warmup, the decay each names, and its end points."""

import itertools
import math

import pytest

from optbench.config import schema
from optbench.config.schema import ScheduleConfig
from optbench.training.decay_shapes import DECAY_SHAPES
from optbench.training.schedules import lr_multiplier, warmup_steps

STEPS = 1000


def curve(**kw):
    cfg = ScheduleConfig(**kw)
    return [lr_multiplier(s, STEPS, cfg) for s in range(STEPS)]


@pytest.mark.parametrize("name", schema.SCHEDULES)
def test_linear_warmup_reaches_one(name):
    lrs = curve(name=name, warmup_steps=100)
    assert lrs[0] == pytest.approx(1 / 101)
    assert lrs[99] == pytest.approx(100 / 101)
    assert all(b > a for a, b in zip(lrs[:100], lrs[1:101]))
    assert lrs[100] == pytest.approx(1.0)


def test_cosine_matches_the_closed_form_and_ends_at_the_floor():
    lrs = curve(name="cosine", warmup_steps=100, final_lr_frac=0.1)
    for step in (100, 300, 550, 999):
        p = (step - 100) / (STEPS - 1 - 100)
        assert lrs[step] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))
    assert lrs[-1] == pytest.approx(0.1)


def test_linear_decays_at_a_constant_rate():
    lrs = curve(name="linear", warmup_steps=0, final_lr_frac=0.0)
    diffs = {round(b - a, 12) for a, b in zip(lrs, lrs[1:])}
    assert len(diffs) == 1 and lrs[0] == 1.0 and lrs[-1] == 0.0


@pytest.mark.parametrize("shape, mid", [("linear", 0.5), ("cosine", 0.5), ("sqrt", 1 - math.sqrt(0.5))])
def test_wsd_is_flat_then_decays_over_decay_frac(shape, mid):
    lrs = curve(name="wsd", warmup_steps=10, decay_frac=0.2, decay_shape=shape, final_lr_frac=0.0)
    start = STEPS - 1 - 200
    assert all(x == 1.0 for x in lrs[10:start + 1])
    assert lrs[start + 100] == pytest.approx(mid)
    assert lrs[-1] == pytest.approx(0.0)
    assert all(b <= a for a, b in zip(lrs[start:], lrs[start + 1:]))


def test_constant_stays_at_one():
    assert set(curve(name="constant", warmup_steps=0)) == {1.0}


def test_every_decay_shape_the_config_accepts_exists_and_runs_from_one_to_the_floor():
    assert tuple(DECAY_SHAPES) == schema.DECAY_SHAPES
    for name, shape in DECAY_SHAPES.items():
        assert (shape(0.0, 0.1), shape(1.0, 0.1)) == pytest.approx((1.0, 0.1), abs=1e-15), name


@pytest.mark.parametrize("shape", schema.DECAY_SHAPES)
def test_wsd_shapes_fall_monotonically(shape):
    lrs = curve(name="wsd", warmup_steps=0, decay_frac=0.3, decay_shape=shape, final_lr_frac=0.05)
    assert all(b <= a for a, b in itertools.pairwise(lrs)) and lrs[-1] == pytest.approx(0.05)


def test_warmup_frac_is_the_floored_share_of_the_run():
    """PyLO's train.py: warmup_steps = int(iters_max * warmup_ratio); Scaling-for-Scaling: 10% of 10k steps is the
    1000 of its llama_60m config."""
    for frac, steps in [(0.02, 19073), (0.1, 10_000), (0.05, 333), (0.3, 7)]:
        assert warmup_steps(ScheduleConfig(warmup_steps=0, warmup_frac=frac), steps) == int(steps * frac)
    assert warmup_steps(ScheduleConfig(warmup_steps=0, warmup_frac=0.1), 10_000) == 1000
    assert warmup_steps(ScheduleConfig(warmup_steps=7), 10_000) == 7


@pytest.mark.parametrize("name", schema.SCHEDULES)
def test_warmup_frac_schedules_are_the_resolved_warmup_steps_ones(name):
    by_frac = curve(name=name, warmup_steps=0, warmup_frac=0.05, final_lr_frac=0.1, decay_frac=0.2)
    by_steps = curve(name=name, warmup_steps=50, final_lr_frac=0.1, decay_frac=0.2)
    assert by_frac == by_steps
