"""Adan against pytorch-optimizer==4.1.0 `Adan` step by step (both decay forms, with and without the global
clip), and the official (sail-sg/Adan) proximal update on two hand-computed steps of a 3-vector."""

import pytest
import torch
from pytorch_optimizer import Adan as ReferenceAdan

from optbench import optim
from optbench.optim.registry import make_config
from tests.optim.harness import compare_with_reference, reference_groups

HP = dict(lr=1e-2, beta1=0.98, beta2=0.92, beta3=0.99, eps=1e-8, weight_decay=0.1)


@pytest.mark.parametrize("no_prox, max_grad_norm", [(False, 0.0), (True, 0.0), (False, 0.5)])
def test_matches_pytorch_optimizer_step_by_step(no_prox, max_grad_norm):
    # pytorch-optimizer's weight_decouple=False is the official no_prox=False (p / (1 + lr wd) after the
    # step), True is no_prox=True (p (1 - lr wd) before). max_grad_norm=0.5 is below the tiny LM's gradient
    # norm, so the clip is active on every step.
    hp = dict(HP, no_prox=no_prox, max_grad_norm=max_grad_norm)
    compare_with_reference(
        lambda m: optim.create("adan", m, **hp),
        lambda m: ReferenceAdan(reference_groups(m, HP["weight_decay"]), lr=HP["lr"],
                                betas=(HP["beta1"], HP["beta2"], HP["beta3"]), eps=HP["eps"], weight_decouple=no_prox,
                                max_grad_norm=max_grad_norm),
        steps=20)


def test_defaults_are_the_official_ones():
    cfg = make_config("adan")
    assert (cfg.lr, cfg.beta1, cfg.beta2, cfg.beta3, cfg.eps) == (1e-3, 0.98, 0.92, 0.99, 1e-8)
    assert (cfg.max_grad_norm, cfg.no_prox, cfg.weight_decay) == (0.0, False, 0.02)


def test_two_proximal_steps_by_hand():
    b1, b2, b3, lr, wd = 0.98, 0.92, 0.99, 0.1, 0.5
    p0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    g1 = torch.tensor([0.1, 0.2, -0.3], dtype=torch.float64)
    g2 = torch.tensor([0.3, -0.1, 0.1], dtype=torch.float64)
    w = torch.nn.Parameter(p0.clone())
    opt = optim.get("adan").build([{"params": [w], "weight_decay": wd}],
                                  make_config("adan", lr=lr, beta1=b1, beta2=b2, beta3=b3, eps=1e-30))
    w.grad = g1.clone()
    opt.step()
    # t = 1: m/c1 = g1, d = 0 (no previous gradient), n/c3 = g1^2: the step is sign(g1), then the proximal
    # division by 1 + lr wd = 1.05
    p1 = (p0 - lr * torch.sign(g1)) / (1 + lr * wd)
    torch.testing.assert_close(w.detach(), p1, rtol=1e-12, atol=0)
    torch.testing.assert_close(w.detach(), torch.tensor([0.9 / 1.05, -2.1 / 1.05, 0.6 / 1.05], dtype=torch.float64))

    w.grad = g2.clone()
    opt.step()
    # t = 2: m/c1 = (b1 g1 + g2) / (1 + b1); d/c2 = (g2 - g1) / (1 + b2) (only one difference so far);
    # n/c3 = (b3 g1^2 + (g2 + b2 (g2 - g1))^2) / (1 + b3)
    m_hat = (b1 * g1 + g2) / (1 + b1)
    d_hat = (g2 - g1) / (1 + b2)
    n_hat = (b3 * g1 ** 2 + (g2 + b2 * (g2 - g1)) ** 2) / (1 + b3)
    p2 = (p1 - lr * (m_hat + b2 * d_hat) / n_hat.sqrt()) / (1 + lr * wd)
    torch.testing.assert_close(w.detach(), p2, rtol=1e-12, atol=0)
    state = opt.state[w]
    assert state["step"] == 2
    torch.testing.assert_close(state["prev_grad"], g2)


def test_clip_scales_gradients_but_leaves_them_in_place():
    w = torch.nn.Parameter(torch.zeros(2))
    opt = optim.get("adan").build([{"params": [w], "weight_decay": 0.0}], make_config("adan", max_grad_norm=1.0))
    w.grad = torch.tensor([3.0, 4.0])  # norm 5: clipped to norm 1
    opt.step()
    torch.testing.assert_close(w.grad, torch.tensor([3.0, 4.0]))
    torch.testing.assert_close(opt.state[w]["prev_grad"], torch.tensor([0.6, 0.8]))
