"""Conda against pytorch-optimizer==4.1.0 `Conda` step by step (with basis refreshes inside the run), the
first step on hand-computed matrices (the polar factor of a rotated gradient; sign(G) for a diagonal one),
and the refresh schedule."""

import math

import torch
from pytorch_optimizer import Conda as ReferenceConda

from optbench import optim
from optbench.optim.registry import make_config
from tests.optim.harness import compare_with_reference, lm_batches, reference_groups

HP = dict(lr=3e-3, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, update_proj_gap=4, scale=0.5)


def test_matches_pytorch_optimizer_step_by_step():
    # 24 steps with a refresh every 4: six bases per matrix. Tall (c_attn 96 x 32, c_fc, the tied embedding),
    # wide (the MLP's c_proj, 32 x 128) and square (attention c_proj) matrices, and vectors on the Adam path.
    compare_with_reference(
        lambda m: optim.create("conda", m, **HP),
        lambda m: ReferenceConda(reference_groups(m, HP["weight_decay"]), lr=HP["lr"], betas=(HP["beta1"], HP["beta2"]),
                                 eps=HP["eps"], update_proj_gap=HP["update_proj_gap"], scale=HP["scale"],
                                 projection_type="std"),
        steps=24, batches=lm_batches(24))


def test_defaults_are_the_references():
    cfg = make_config("conda")
    assert (cfg.lr, cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay) == (1e-3, 0.9, 0.999, 1e-8, 0.0)
    assert (cfg.update_proj_gap, cfg.scale) == (2000, 1.0)


def _first_step(grad: torch.Tensor, lr=0.1, scale=0.5) -> torch.Tensor:
    w = torch.nn.Parameter(torch.zeros_like(grad))
    opt = optim.get("conda").build([{"params": [w], "weight_decay": 0.0}],
                                   make_config("conda", lr=lr, scale=scale))
    w.grad = grad
    opt.step()
    return w.detach()


def test_first_step_is_the_polar_factor_of_a_rotated_gradient():
    # t = 1: M = (1 - b1) G, v = (1 - b2) proj(G)^2 and the step size lr sqrt(1 - b2) / (1 - b1) cancel to
    # lr scale back(sign(proj(G))). For G = S R (S diagonal positive, R a rotation) the SVD is U = I, V^T = R,
    # proj(G) = G V = S, sign(S) = I, and the step is lr scale R: the polar factor, as Muon's. (Adam's
    # first step would be lr sign(G).) eps = 1e-8 keeps the ~1e-17 rounding noise of the zero off-diagonals
    # of proj(G) from being normalised to +-1; it moves the others by
    # eps / sqrt((1 - b2) S^2) <= 3.2e-7 relative.
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    rotation = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    grad = torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64)) @ rotation
    torch.testing.assert_close(_first_step(grad), -0.1 * 0.5 * rotation, rtol=1e-6, atol=1e-12)


def test_first_step_on_a_diagonal_wide_gradient_is_its_sign():
    # Wide (2 x 3): the basis is U (2 x 2) = I up to signs, proj(G) = U^T G, back(sign(U^T G)) = sign(G).
    grad = torch.tensor([[0.0, -2.0, 0.0], [5.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(_first_step(grad), -0.1 * 0.5 * torch.sign(grad), rtol=1e-6, atol=1e-12)


def test_basis_is_recomputed_every_update_proj_gap_steps():
    w = torch.nn.Parameter(torch.zeros(4, 3))
    b = torch.nn.Parameter(torch.zeros(3))
    opt = optim.get("conda").build([{"params": [w, b], "weight_decay": 0.0}], make_config("conda", update_proj_gap=3))
    g = torch.Generator().manual_seed(0)
    refreshed = []
    for _ in range(7):
        w.grad, b.grad = torch.randn(4, 3, generator=g), torch.randn(3, generator=g)
        before = opt.state[w].get("basis")
        opt.step()
        refreshed.append(before is None or not torch.equal(before, opt.state[w]["basis"]))
    assert refreshed == [True, False, True, False, False, True, False]  # steps 1, 3, 6
    assert opt.state[w]["basis"].shape == (3, 3) and "basis" not in opt.state[b]
