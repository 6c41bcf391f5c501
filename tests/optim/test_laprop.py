"""LaProp against pytorch-optimizer==4.1.0 `LaProp` step by step where their denominators coincide, and the
paper's (the authors' code's) denominator and learning-rate-averaged bias correction on hand-computed steps."""

import torch
from pytorch_optimizer import LaProp as ReferenceLaProp

from optbench import optim
from optbench.optim.registry import make_config
from tests.optim.harness import (compare_with_reference, matrix_model, reference_groups, regression_batches,
                                 regression_loss)

HP = dict(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-15, weight_decay=0.1)


def test_matches_pytorch_optimizer_step_by_step():
    # pytorch-optimizer's denominator is (sqrt(v + 1e-15) + eps) / sqrt(1 - beta2^t), the paper's (ours)
    # sqrt(v / (1 - beta2^t)) + eps: they agree where g^2 >> 1e-15 only. LaProp's step does not depend on the
    # scale of the loss otherwise, so the loss is multiplied by 1e4, putting the smallest gradient entry of
    # this run (~3e-7 unscaled) at g^2 ~ 1e-5. Not the tiny LM: its attention key bias has an exactly-zero
    # gradient up to ~1e-10 of rounding noise, which the paper's form normalises to full steps and
    # pytorch-optimizer's floor damps (test_noise_coordinates_take_full_steps).
    compare_with_reference(
        lambda m: optim.create("laprop", m, **HP),
        lambda m: ReferenceLaProp(reference_groups(m, HP["weight_decay"]), lr=HP["lr"],
                                  betas=(HP["beta1"], HP["beta2"]), eps=HP["eps"]),
        model_fn=lambda: matrix_model(bias=True), batches=regression_batches(30),
        loss_fn=lambda m, b: 1e4 * regression_loss(m, b), steps=30)


def test_defaults_are_the_authors():
    cfg = make_config("laprop")
    assert (cfg.lr, cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay) == (4e-4, 0.9, 0.999, 1e-15, 0.0)


def _vector_optimizer(w, **hparams):
    return optim.get("laprop").build([{"params": [w], "weight_decay": hparams.pop("weight_decay", 0.0)}],
                                     make_config("laprop", **hparams))


def test_two_steps_with_a_changing_learning_rate_by_hand():
    b1, b2, wd = 0.9, 0.99, 0.5
    w = torch.nn.Parameter(torch.tensor([1.0, -1.0], dtype=torch.float64))
    opt = _vector_optimizer(w, lr=0.1, beta1=b1, beta2=b2, weight_decay=wd)
    g1 = torch.tensor([2.0, -0.5], dtype=torch.float64)
    w.grad = g1
    opt.step()
    # t = 1: v/c2 = g1^2, so g/denom = sign(g1); m = (1 - b1) lr sign(g1); c1 = (1 - b1) lr / lr = 0.1:
    # the step is lr sign(g1) = 0.1 sign(g1), then the decay (1 - lr wd) = 0.95.
    p1 = (torch.tensor([1.0, -1.0], dtype=torch.float64) - 0.1 * torch.sign(g1)) * 0.95
    torch.testing.assert_close(w.detach(), p1, rtol=1e-12, atol=0)

    g2 = torch.tensor([1.0, 1.0], dtype=torch.float64)
    w.grad = g2
    opt.param_groups[0]["lr"] = 0.2  # a schedule doubles lr
    opt.step()
    # t = 2: v = b2 (1 - b2) g1^2 + (1 - b2) g2^2, c2 = 1 - b2^2; m = b1 m1 + (1 - b1) 0.2 g2 / denom;
    # EMA of lr = b1 (1 - b1) 0.1 + (1 - b1) 0.2 = 0.029, c1 = 0.029 / 0.2 = 0.145
    denom = ((b2 * (1 - b2) * g1 ** 2 + (1 - b2) * g2 ** 2) / (1 - b2 ** 2)).sqrt()
    m2 = b1 * (1 - b1) * 0.1 * torch.sign(g1) + (1 - b1) * 0.2 * g2 / denom
    p2 = (p1 - m2 / 0.145) * (1 - 0.2 * wd)
    torch.testing.assert_close(w.detach(), p2, rtol=1e-12, atol=0)
    assert abs(opt.state[w]["exp_avg_lr_1"] - 0.029) < 1e-15


def test_noise_coordinates_take_full_steps():
    # The paper's denominator with eps = 1e-15: a gradient of 1e-10 is normalised like any other (step lr at
    # t = 1, up to eps / 1e-10 = 1e-5 relative); pytorch-optimizer's sqrt(v + 1e-15) floor would scale it by
    # ~1e-10 / 3e-8.
    w = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = _vector_optimizer(w, lr=0.1)
    w.grad = torch.tensor([1e-10, -3.0], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([-0.1, 0.1], dtype=torch.float64), rtol=2e-5, atol=0)
