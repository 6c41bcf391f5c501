"""AdaBelief against the authors' adabelief-pytorch==0.2.1 `AdaBelief` step by step (rectified and plain,
decoupled and L2 decay), and the first step and the belief's eps by hand."""

import contextlib
import inspect
import io

import pytest
import torch
from adabelief_pytorch import AdaBelief as ReferenceAdaBelief

from optbench import optim
from optbench.optim.algorithms import adabelief
from optbench.optim.algorithms.adabelief import rectified_step_size
from optbench.optim.registry import make_config
from tests.optim.harness import KEY_BIASES, compare_with_reference, reference_groups


def reference(model, hp, **switches):
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints what it enabled
        return ReferenceAdaBelief(reference_groups(model, hp["weight_decay"]), lr=hp["lr"],
                                  betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"], weight_decay=hp["weight_decay"],
                                  print_change_log=False, **switches)


HP = dict(lr=3e-3, beta1=0.9, beta2=0.99, eps=1e-16, weight_decay=0.1)
"""beta2 0.99: rho_inf = 199, so rectified runs spend steps 1-4 in the SGD branch, then rectify (24 steps)."""
SWITCHES = [(True, True), (True, False), (False, True), (False, False)]


def package_ema_(avgs, values, beta):
    """The package's m update, m * beta1 + (1 - beta1) g as a mul and an add, where ours lerps."""
    torch._foreach_mul_(avgs, beta)
    torch._foreach_add_(avgs, values, alpha=1.0 - beta)


@pytest.mark.parametrize("rectify,decouple", SWITCHES)
def test_bit_identical_to_adabelief_pytorch_with_its_ema_arithmetic(rectify, decouple, monkeypatch):
    # With m rounded as the package rounds it, every other operation agrees exactly: rtol = atol = 0.
    monkeypatch.setattr(adabelief, "ema_", package_ema_)
    compare_with_reference(
        lambda m: optim.create("adabelief", m, rectify=rectify, decouple=decouple, **HP),
        lambda m: reference(m, HP, rectify=rectify, weight_decouple=decouple),
        steps=24, rtol=0.0, atol=0.0)


@pytest.mark.parametrize("rectify", [True, False])
def test_matches_adabelief_pytorch_step_by_step(rectify):
    # As shipped, m is a lerp (torch.optim.Adam's arithmetic, moments.ema_), an ulp from the package's
    # mul + add. All parameters then agree within 2.4e-7 over 24 steps (on O(1) norm gains: inside the default
    # rtol) except the attention key biases: their exact gradient is zero (KEY_BIASES), so g is rounding noise,
    # and s ~ noise^2 with eps 1e-16 turns that noise into full-size steps on both sides, seeded differently.
    # Measured there: 6.5e-6 (rectify off), 1.8e-7 (on); atol 2e-5 on those two tensors only, 1/150 of a step.
    compare_with_reference(
        lambda m: optim.create("adabelief", m, rectify=rectify, **HP),
        lambda m: reference(m, HP, rectify=rectify),
        steps=24, tolerances={name: dict(atol=2e-5) for name in KEY_BIASES})


def test_defaults_match_the_package():
    cfg = make_config("adabelief")
    ref = inspect.signature(ReferenceAdaBelief.__init__).parameters
    assert (cfg.beta1, cfg.beta2) == ref["betas"].default
    assert cfg.eps == ref["eps"].default == 1e-16
    assert cfg.decouple is ref["weight_decouple"].default is True
    assert cfg.rectify is ref["rectify"].default is True
    assert cfg.degenerated_to_sgd is ref["degenerated_to_sgd"].default is True


def test_default_hyperparameters_match_the_package_with_decay():
    cfg = make_config("adabelief", weight_decay=0.05)
    hp = dict(lr=cfg.lr, beta1=cfg.beta1, beta2=cfg.beta2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    # Measured: within 7.5e-9 everywhere (the key biases included) over 20 steps: default tolerances.
    compare_with_reference(lambda m: optim.create("adabelief", m, weight_decay=0.05), lambda m: reference(m, hp),
                           steps=20)


def _one_param(values, **hparams):
    p = torch.nn.Parameter(torch.tensor(values))
    return p, optim.get("adabelief").build([{"params": [p], "weight_decay": hparams.get("weight_decay", 0.0)}],
                                           make_config("adabelief", **hparams))


def test_first_plain_step_by_hand():
    p, opt = _one_param([1.0, -2.0], lr=0.1, beta1=0.5, beta2=0.75, eps=1e-8, weight_decay=0.5, rectify=False)
    p.grad = torch.tensor([2.0, 4.0])
    opt.step()
    # m = 0.5 g = [1, 2]; s = 0.25 (g - m)^2 + eps = [0.25, 1] + eps; denominators sqrt(s / 0.25) + eps = [1, 2]
    # (+ ~1e-8); step lr / (1 - 0.5) = 0.2 along m / denom = [1, 1]; decay first: p (1 - 0.1 * 0.5)
    torch.testing.assert_close(opt.state[p]["exp_avg_var"], torch.tensor([0.25, 1.0]))
    torch.testing.assert_close(p.detach(), torch.tensor([0.95 - 0.2, -1.9 - 0.2]))


def test_eps_accumulates_in_the_belief():
    # A gradient equal to its EMA leaves only eps in s: s_t = beta2 s_{t-1} + eps.
    p, opt = _one_param([0.0], beta2=0.5, eps=1e-3, rectify=False)
    for _ in range(3):
        p.grad = torch.zeros(1)
        opt.step()
    torch.testing.assert_close(opt.state[p]["exp_avg_var"], torch.tensor([1e-3 * (1 + 0.5 + 0.25)]))


def test_rectified_steps_start_where_rho_reaches_five():
    # beta2 0.999: rho_t = 1, 2, 3, 4, 5.0 (- 1e-3): SGD steps 1-5, rectified from step 6 (the package's >= 5)
    assert [rectified_step_size(0.9, 0.999, t) is None for t in range(1, 8)] == [True] * 5 + [False] * 2
    p, opt = _one_param([0.0], lr=0.01, degenerated_to_sgd=False)
    for _ in range(5):
        p.grad = torch.ones(1)
        opt.step()
    assert p.item() == 0.0, "no SGD fallback: nothing moves before rectification"
    p.grad = torch.ones(1)
    opt.step()
    assert p.item() < 0.0 and opt.state[p]["step"] == 6
