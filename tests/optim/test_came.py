"""CAME against came-pytorch==0.1.3 (the authors' package) step by step on the tiny LM (matrices factored,
vectors not), and the shapes of the factored state and the vector path on a hand-computed step."""

import torch
from came_pytorch import CAME as ReferenceCAME

from optbench import optim
from optbench.optim.functional.factored import factored_rsqrt
from optbench.optim.registry import make_config
from tests.optim.harness import compare_with_reference, lm_batches, reference_groups

HP = dict(lr=2e-3, beta1=0.9, beta2=0.99, beta3=0.999, eps1=1e-30, eps2=1e-16, clip_threshold=1.0,
          weight_decay=0.1)


def test_matches_came_pytorch_step_by_step():
    # 30 steps, lr 10x the README's so that the tiny LM moves; every matrix, embedding and head decays.
    compare_with_reference(
        lambda m: optim.create("came", m, **HP),
        lambda m: ReferenceCAME(reference_groups(m, HP["weight_decay"]), lr=HP["lr"], eps=(HP["eps1"], HP["eps2"]),
                                clip_threshold=HP["clip_threshold"],
                                betas=(HP["beta1"], HP["beta2"], HP["beta3"])),
        steps=30, batches=lm_batches(30))


def test_matches_came_pytorch_at_its_readme_defaults():
    compare_with_reference(
        lambda m: optim.create("came", m),
        lambda m: ReferenceCAME(reference_groups(m, 1e-2), lr=2e-4, eps=(1e-30, 1e-16),
                                betas=(0.9, 0.999, 0.9999)),
        steps=20)


def test_defaults_are_the_readmes():
    cfg = make_config("came")
    assert (cfg.lr, cfg.weight_decay, cfg.beta1, cfg.beta2, cfg.beta3) == (2e-4, 1e-2, 0.9, 0.999, 0.9999)
    assert (cfg.eps1, cfg.eps2, cfg.clip_threshold) == (1e-30, 1e-16, 1.0)


def test_factored_rsqrt_is_the_rank_one_estimate():
    # Row and column means of one matrix share its overall mean (2.5 here); V_hat keeps both marginals.
    row, col = torch.tensor([1.0, 4.0]), torch.tensor([0.5, 2.0, 5.0])
    v_hat = torch.outer(row, col) / row.mean()
    torch.testing.assert_close(v_hat.mean(dim=1), row)
    torch.testing.assert_close(v_hat.mean(dim=0), col)
    torch.testing.assert_close(factored_rsqrt(row, col), v_hat.rsqrt())


def test_state_shapes_and_the_vector_path_by_hand():
    w = torch.nn.Parameter(torch.zeros(3, 4))
    b = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    opt = optim.get("came").build([{"params": [w, b], "weight_decay": 0.0}], make_config("came", lr=0.1))
    w.grad = torch.ones(3, 4)
    b.grad = torch.tensor([3.0, -4.0])
    opt.step()
    assert opt.state[w]["exp_avg_sq_row"].shape == (3,) and opt.state[w]["exp_avg_sq_col"].shape == (4,)
    assert opt.state[w]["exp_avg_res_row"].shape == (3,) and "exp_avg_sq" not in opt.state[w]
    # Vector, t = 1: v = (1 - beta2) g^2, u = g / sqrt(v) = sign(g) / sqrt(0.001), RMS 31.6 > 1: clipped to
    # sign(g); m = (1 - beta1) sign(g) = 0.1 sign(g) is the step (no instability matrix for vectors).
    torch.testing.assert_close(b.detach(), torch.tensor([1.0 - 0.1 * 0.1, 1.0 + 0.1 * 0.1]))
    # Matrix of ones, t = 1: u = 1 everywhere after clipping, m = 0.1, instability (0.9)^2 uniform, so the
    # factored rsqrt is 1 / sqrt((1 - beta3) 0.81) = 1 / (0.9 sqrt(1e-4)) and the step is 0.1 / 0.009.
    torch.testing.assert_close(w.detach(), torch.full((3, 4), -0.1 * 0.1 / (0.9 * 1e-2)), rtol=1e-5, atol=0)
