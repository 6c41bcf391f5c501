"""ADOPT against the authors' torch-adopt==0.1.0 `adopt.ADOPT` step by step, and the first two steps by hand."""

import pytest
import torch
from adopt import ADOPT as ReferenceADOPT

from optbench import optim
from optbench.optim.registry import make_config
from tests.optim.harness import compare_with_reference, reference_groups


@pytest.mark.parametrize("decouple", [True, False])
def test_matches_torch_adopt_step_by_step(decouple):
    # beta2 0.99 rather than 0.9999 so that v moves visibly within 20 steps. The one arithmetic difference,
    # decoupled decay as p * (1 - lr wd) here vs p + p * (-lr wd) there, rounds differently by an ulp and
    # reaches every parameter through the gradients: measured <= 9.7e-8 (the attention biases) and
    # 4.9e-8 elsewhere on entries near zero, where rtol 1e-5 means nothing: atol 3e-7 (1e-4 of one lr=3e-3 step).
    hp = dict(lr=3e-3, beta1=0.9, beta2=0.99, eps=1e-6, weight_decay=0.1, decouple=decouple)
    compare_with_reference(
        lambda m: optim.create("adopt", m, **hp),
        lambda m: ReferenceADOPT(reference_groups(m, hp["weight_decay"]), lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]),
                                 eps=hp["eps"], weight_decay=hp["weight_decay"], decouple=decouple),
        steps=20, atol=3e-7)


def test_unclipped_matches_the_reference_without_clip_lambda():
    hp = dict(lr=1e-3, beta2=0.999, clip_exponent=None)
    compare_with_reference(
        lambda m: optim.create("adopt", m, **hp),
        lambda m: ReferenceADOPT(reference_groups(m, 0.0), lr=hp["lr"], betas=(0.9, hp["beta2"]),
                                 clip_lambda=None, decouple=True),
        steps=20)


def test_first_step_only_measures_then_normalises_by_the_previous_moment():
    p = torch.nn.Parameter(torch.ones(3))
    opt = optim.get("adopt").build([{"params": [p], "weight_decay": 0.1}],
                                   make_config("adopt", lr=0.1, beta1=0.9, beta2=0.5, weight_decay=0.1))
    p.grad = torch.tensor([1.0, 2.0, -0.5])
    opt.step()
    assert torch.equal(p.detach(), torch.ones(3)), "step 1 sets v_0 = g_0^2 and moves nothing (no decay either)"
    torch.testing.assert_close(opt.state[p]["exp_avg_sq"], torch.tensor([1.0, 4.0, 0.25]))

    p.grad = torch.tensor([3.0, 1.0, 0.25])
    opt.step()
    # g / sqrt(v_0) = [3, 0.5, 0.5], clipped to 1^0.25 = 1: [1, 0.5, 0.5]; m = 0.1 of that
    torch.testing.assert_close(opt.state[p]["exp_avg"], torch.tensor([0.1, 0.05, 0.05]))
    # p (1 - 0.1 * 0.1) - 0.1 m
    torch.testing.assert_close(p.detach(), torch.tensor([0.99 - 0.01, 0.99 - 0.005, 0.99 - 0.005]))
    # v is updated after use: 0.5 v_0 + 0.5 g_1^2
    torch.testing.assert_close(opt.state[p]["exp_avg_sq"], torch.tensor([5.0, 2.5, 0.15625]))
