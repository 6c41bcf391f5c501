"""AdEMAMix against pytorch-optimizer==4.1.0 `AdEMAMix` step by step (through and past the warmups), the
paper's beta3 and alpha schedules at hand-computed steps, and the run-length warmup default."""

import pytest
import torch
from pytorch_optimizer import AdEMAMix as ReferenceAdEMAMix

from optbench import optim
from optbench.optim.algorithms.ademamix import alpha_schedule, beta3_schedule
from tests.optim.harness import compare_with_reference, lm_batches, reference_groups, tiny_lm, train

HP = dict(lr=2e-3, beta1=0.9, beta2=0.99, beta3=0.999, alpha=5.0, eps=1e-8, weight_decay=0.1)


@pytest.mark.parametrize("warmup", [12, 0])
def test_matches_pytorch_optimizer_step_by_step(warmup):
    # 20 steps with a 12-step warmup: alpha and beta3 ramp, then hold. pytorch-optimizer has one length for
    # both (t_alpha_beta3; None: no warmup) and L2 decay by default: weight_decouple=True is the paper's.
    hp = dict(HP, alpha_warmup=warmup, beta3_warmup=warmup)
    compare_with_reference(
        lambda m: optim.create("ademamix", m, **hp),
        lambda m: ReferenceAdEMAMix(reference_groups(m, HP["weight_decay"]), lr=HP["lr"],
                                    betas=(HP["beta1"], HP["beta2"], HP["beta3"]), alpha=HP["alpha"],
                                    t_alpha_beta3=warmup or None, eps=HP["eps"], weight_decouple=True),
        steps=20)


def test_beta3_schedule_interpolates_the_half_life():
    # Half-life h(b) = ln(0.5) / ln(b): h(0.9) = 6.5788, h(0.9999) = 6931.1253; at t/T = a the paper's beta3(t)
    # has half-life (1 - a) h(beta1) + a h(beta3), i.e. beta3(t) = 0.5^(1 / that). Values from mpmath, 30 digits.
    expected = {0: 0.9, 1: 0.990900162402573, 25: 0.999601195368602, 50: 0.999800199625480,
                75: 0.999866711057398, 100: 0.9999, 150: 0.9999}
    for t, beta in expected.items():
        assert beta3_schedule(t, 0.9, 0.9999, 100) == pytest.approx(beta, rel=1e-13, abs=0), t
    assert beta3_schedule(7, 0.9, 0.9999, 0) == 0.9999  # no warmup
    assert beta3_schedule(50, 0.0, 0.9999, 100) == pytest.approx(0.9999 ** 2, rel=1e-13)  # h(0) = 0: half of h(beta3)


def test_alpha_schedule_is_linear_then_constant():
    assert [alpha_schedule(t, 5.0, 100) for t in (1, 25, 100, 250)] == [0.05, 1.25, 5.0, 5.0]
    assert alpha_schedule(3, 5.0, 0) == 5.0


def test_warmups_default_to_the_run_length():
    batches = lm_batches(12)
    runs = []
    for hparams in ({}, {"alpha_warmup": 12, "beta3_warmup": 12}):
        model = tiny_lm()
        opt = optim.create("ademamix", model, **hparams)
        train(model, opt, batches, name="ademamix")  # the trainer's hooks call set_horizon(12)
        runs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        assert all(g["horizon"] == 12 for g in opt.param_groups)
    assert torch.equal(*runs)
    assert optim.get("ademamix").capabilities.needs_horizon
