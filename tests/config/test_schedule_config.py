"""The schedule group's options and keys compose, and each mistake in them is one line naming it."""

import pytest

from optbench.config.compose import compose, load_yaml, to_yaml
from optbench.errors import UserError


def test_cos_inf_and_trapezoid_compose():
    cos_inf = compose(["schedule=cos_inf", "schedule.cos_inf_steps=500"]).schedule
    assert (cos_inf.name, cos_inf.final_lr_frac, cos_inf.cos_inf_steps) == ("cos_inf", 0.1, 500)
    trapezoid = compose(["schedule=trapezoid"]).schedule
    assert (trapezoid.name, trapezoid.decay_shape, trapezoid.final_lr_frac) == ("wsd", "linear", 0.0)


def test_a_warmup_frac_config_round_trips(tmp_path):
    """A run's config.yaml holds warmup_frac, not the steps it resolves to, so reading it back passes the checks."""
    cfg = compose(["schedule.warmup_steps=0", "schedule.warmup_frac=0.05", "schedule=wsd",
                   "schedule.decay_shape=mirror_cosine"])
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(cfg))
    assert load_yaml(path) == cfg


@pytest.mark.parametrize("overrides, pattern", [
    (["schedule.warmup_frac=0.1"],
     r"^schedule.warmup_frac=0.1 and schedule.warmup_steps=100 both set the warmup: pass schedule.warmup_steps=0"),
    (["schedule.warmup_frac=0.1", "schedule.warmup_steps=20"], r"schedule.warmup_steps=20 both set the warmup"),
    (["schedule.warmup_steps=0", "schedule.warmup_frac=1.5"], r"^schedule.warmup_frac=1.5 must be in \[0, 1\]"),
    (["schedule.warmup_steps=0", "schedule.warmup_frac=-0.1"], r"^schedule.warmup_frac=-0.1 must be in \[0, 1\]"),
    (["schedule=wsd", "schedule.decay_shape=exp"],
     r"^schedule.decay_shape=exp needs schedule.final_lr_frac > 0 .*valid with 0: linear, cosine"),
    (["schedule.decay_shape=miror_cosine"], r"^unknown schedule.decay_shape 'miror_cosine'; valid: mirror_cosine"),
    (["schedule.decay_shape=squared"], r"^unknown schedule.decay_shape 'squared'; valid: square"),
    (["schedule.name=cos-inf"], r"^unknown schedule.name 'cos-inf'; valid: cos_inf"),
    (["schedule=cos_inf", "schedule.cos_inf_steps=-1"], r"^schedule.cos_inf_steps=-1 must be >= 0"),
    (["schedule=trapezoidal"], r"^unknown schedule 'trapezoidal'; valid: trapezoid"),
])
def test_schedule_errors_are_one_line(overrides, pattern):
    with pytest.raises(UserError, match=pattern) as info:
        compose(overrides)
    assert "\n" not in str(info.value)


def test_exp_decays_to_a_floor_above_zero_and_only_wsd_minds_the_shape():
    wsd = compose(["schedule=wsd", "schedule.decay_shape=exp", "schedule.final_lr_frac=0.01"]).schedule
    assert (wsd.decay_shape, wsd.final_lr_frac) == ("exp", 0.01)
    cosine = compose(["schedule=cosine", "schedule.decay_shape=exp", "schedule.final_lr_frac=0"]).schedule
    assert (cosine.name, cosine.decay_shape) == ("cosine", "exp")
