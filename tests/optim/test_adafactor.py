"""Adafactor is torch.optim.Adafactor: the tests check our config -> constructor mapping against a directly
built one, and the factored second moment on a hand-computed 2x3 step."""

import math

import torch

from optbench import optim
from optbench.optim.registry import make_config
from tests.optim.harness import compare_with_reference, reference_groups


def test_config_maps_onto_torch_adafactor():
    # Every hyperparameter away from its default, so a dropped or swapped key shows. The reference runs the
    # same foreach path as ours, so the trajectories agree exactly. (Against torch's for-loop path they agree
    # to rounding only, and a tiny eps1 turns that rounding into visible steps on the attention key bias,
    # whose exact gradient is zero: its ~1e-10 noise is normalised by a floor of 1e-12.)
    hp = dict(lr=2e-2, decay_rate=-0.6, eps1=1e-12, eps2=1e-2, d=1.5, weight_decay=0.1)
    compare_with_reference(
        lambda m: optim.create("adafactor", m, **hp),
        lambda m: torch.optim.Adafactor(reference_groups(m, 0.1), lr=2e-2, beta2_decay=-0.6, eps=(1e-12, 1e-2),
                                        d=1.5, foreach=True),
        steps=20, rtol=0.0, atol=0.0)


def test_defaults_are_torchs():
    cfg = make_config("adafactor")
    assert (cfg.lr, cfg.decay_rate, cfg.eps1, cfg.eps2, cfg.d, cfg.weight_decay) == (1e-2, -0.8, None, 1e-3, 1.0, 0.0)
    group = optim.create("adafactor", torch.nn.Linear(3, 2)).param_groups[0]
    assert (group["lr"], group["beta2_decay"], group["eps"], group["d"]) == (1e-2, -0.8, (None, 1e-3), 1.0)


def test_factored_second_moment_on_a_2x3_matrix():
    w = torch.nn.Parameter(torch.full((2, 3), 0.5))
    opt = optim.get("adafactor").build([{"params": [w], "weight_decay": 0.0}], make_config("adafactor"))
    g = torch.tensor([[1.0, 2.0, 2.0], [0.0, 3.0, 0.0]])
    w.grad = g
    opt.step()
    # t = 1: beta2_1 = 1 - 1^-0.8 = 0, so R and C are this gradient's mean squares over columns and rows:
    # g^2 = [[1, 4, 4], [0, 9, 0]] -> R = [9/3, 9/3] = [3, 3], C = [1/2, 13/2, 4/2] = [0.5, 6.5, 2]
    state = opt.state[w]
    torch.testing.assert_close(state["row_var"], torch.tensor([[3.0], [3.0]]))
    torch.testing.assert_close(state["col_var"], torch.tensor([[0.5, 6.5, 2.0]]))
    # V_hat = R C / mean(R) = C on both rows; its row and column means give back R and C (the rank-1
    # factorisation keeps both marginals): mean over columns 9/3 = 3, over rows = C
    v_hat = state["row_var"] @ state["col_var"] / state["row_var"].mean()
    torch.testing.assert_close(v_hat.mean(dim=1, keepdim=True), state["row_var"])
    torch.testing.assert_close(v_hat.mean(dim=0, keepdim=True), state["col_var"])
    # U = g / sqrt(V_hat) = g / sqrt(C); U^2 sums to 2 per column (two rows over their mean), so RMS(U) = 1 = d:
    # no clipping. alpha = max(eps2, RMS(w) = 0.5) * min(lr = 0.01, 1 / sqrt(1)) = 0.005
    u = g / torch.tensor([[0.5, 6.5, 2.0]]).sqrt()
    torch.testing.assert_close((u * u).mean(), torch.tensor(1.0))
    w1 = torch.full((2, 3), 0.5) - 0.005 * u
    torch.testing.assert_close(w.detach(), w1)

    # t = 2, a gradient 10x larger: beta2_2 = 1 - 2^-0.8, R and C grow by b = beta2_2 + 100 (1 - beta2_2), so
    # U = 10 U_1 / sqrt(b), RMS 10 / sqrt(b) ~ 1.31 > d: clipped back to RMS 1, the step is alpha_2 U_1.
    w.grad = 10 * g
    opt.step()
    beta2 = 1 - 2 ** -0.8
    torch.testing.assert_close(state["row_var"], torch.tensor([[3.0], [3.0]]) * (beta2 + 100 * (1 - beta2)))
    assert 10 / math.sqrt(beta2 + 100 * (1 - beta2)) > 1.3
    alpha2 = w1.square().mean().sqrt() * 0.01  # min(0.01, 1/sqrt(2)) = 0.01
    torch.testing.assert_close(w.detach(), w1 - alpha2 * u)
