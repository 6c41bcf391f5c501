"""Schedule shapes: warmup, the decay each names, and its end points."""

import math

import pytest

from optbench.config.schema import ScheduleConfig
from optbench.training.schedules import lr_multiplier

STEPS = 1000


def curve(**kw):
    cfg = ScheduleConfig(**kw)
    return [lr_multiplier(s, STEPS, cfg) for s in range(STEPS)]


@pytest.mark.parametrize("name", ["cosine", "linear", "wsd", "constant"])
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
