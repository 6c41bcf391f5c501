"""RMNP against its paper's equations (Deng et al. 2026, Algorithm 1) and the authors' code's choices, by hand;
no package implements it."""

import math

import pytest
import torch
from torch import nn

from optbench import optim
from optbench.errors import UserError
from optbench.optim.algorithms.rmnp import RMNP, row_normalize
from tests.optim.harness import matrix_model, regression_batches, regression_loss, tiny_lm, train


def test_one_step_on_a_2x3_matrix_by_hand():
    """M = (1 - mu) g; Nesterov: U = (1 - mu) g + mu M = (1 - mu^2) g; rows of g are (3, 4, 0) and (0, 0, 2):
    normalised (0.6, 0.8, 0) and (0, 0, 1); wide matrix: scale 1; p <- p (1 - lr wd) - lr R."""
    p = nn.Parameter(torch.tensor([[1.0, 1.0, 1.0], [2.0, 0.0, -1.0]]))
    p.grad = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]])
    opt = RMNP([p], lr=0.1, momentum=0.5, weight_decay=0.2)
    opt.step()
    expected = torch.tensor([[1.0, 1.0, 1.0], [2.0, 0.0, -1.0]]) * (1 - 0.1 * 0.2) - 0.1 * torch.tensor(
        [[0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(p.detach(), expected)
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], 0.5 * p.grad)


def test_two_steps_on_a_3x2_matrix_without_nesterov():
    """A tall matrix (3 x 2) is scaled by sqrt(3 / 2); the second step normalises M = mu M1 + (1 - mu) g2."""
    p = nn.Parameter(torch.zeros(3, 2))
    opt = RMNP([p], lr=1.0, momentum=0.5, nesterov=False)
    g1 = torch.tensor([[1.0, 0.0], [0.0, -2.0], [3.0, 4.0]])
    g2 = torch.tensor([[-1.0, 0.0], [0.0, 2.0], [0.0, -4.0]])
    for g in (g1, g2):
        p.grad = g.clone()
        opt.step()
    m1 = 0.5 * g1  # rows (0.5, 0), (0, -1), (1.5, 2)
    m2 = 0.5 * m1 + 0.5 * g2  # rows (-0.25, 0), (0, 0.5), (0.75, -1)
    r1 = torch.tensor([[1.0, 0.0], [0.0, -1.0], [0.6, 0.8]])
    r2 = torch.tensor([[-1.0, 0.0], [0.0, 1.0], [0.6, -0.8]])
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], m2)
    torch.testing.assert_close(p.detach(), -math.sqrt(1.5) * (r1 + r2))


def test_the_authors_sgd_momentum_gives_the_same_updates():
    """The authors' code: B <- mu B + g; U = g + mu B (Nesterov); F.normalize(U) rows -- the same direction as
    the paper's EMA form, so the trajectories agree to float precision."""
    torch.manual_seed(0)
    p0 = torch.randn(4, 6)
    p = nn.Parameter(p0.clone())
    lr, mu = 0.02, 0.95
    opt = RMNP([p], lr=lr, momentum=mu)
    buf, expected = torch.zeros(4, 6), p0.clone()
    for _ in range(5):
        g = torch.randn(4, 6)
        p.grad = g.clone()
        opt.step()
        buf = mu * buf + g
        expected = expected - lr * torch.nn.functional.normalize(g + mu * buf, dim=-1)
    torch.testing.assert_close(p.detach(), expected)


def test_invariants():
    """Each row of the update has norm lr * max(1, out/in)^0.5; scaling the gradient changes nothing;
    a zero row stays zero; experts (3-D) normalise each expert's rows."""
    torch.manual_seed(1)
    for shape in ((8, 4), (4, 8), (2, 5, 3)):
        p, q = nn.Parameter(torch.zeros(shape)), nn.Parameter(torch.zeros(shape))
        g = torch.randn(shape)
        g[..., 0, :] = 0.0
        p.grad, q.grad = g.clone(), 1000.0 * g
        RMNP([p], lr=0.1).step()
        RMNP([q], lr=0.1).step()
        rows = p.detach().norm(dim=-1)
        scale = max(1.0, shape[-2] / shape[-1]) ** 0.5
        torch.testing.assert_close(rows[..., 1:], torch.full_like(rows[..., 1:], 0.1 * scale))
        assert torch.equal(rows[..., 0], torch.zeros_like(rows[..., 0]))
        torch.testing.assert_close(p.detach(), q.detach())
    torch.testing.assert_close(row_normalize(torch.tensor([[3.0, 4.0]]), 1.0), torch.tensor([[0.5, 2 / 3]]))


def test_learns_a_regression():
    model = matrix_model()
    opt = optim.create("rmnp", model, lr=0.01)
    losses = train(model, opt, regression_batches(30), loss_fn=regression_loss)
    assert losses[-1] < 0.5 * losses[0]


def test_matrix_only_and_bad_settings():
    rows = optim.routing_table(optim.plan(optim.make_config("rmnp"), tiny_lm()))
    assert {r["optimizer"] for r in rows if r["role"] == "matrix"} == {"rmnp"}
    assert {r["optimizer"] for r in rows if r["role"] != "matrix"} == {"adamw"}
    with pytest.raises(UserError, match="eps"):
        optim.make_config("rmnp", eps=0.0)
    with pytest.raises(ValueError, match="matrices"):
        RMNP([nn.Parameter(torch.zeros(3))])
