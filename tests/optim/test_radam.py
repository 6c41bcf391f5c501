"""RAdamW: ours (torch.optim.RAdam wired through routing and the config) against torch.optim.RAdam built
directly on a grouping of our own, and where rectification starts."""

import math

import pytest
import torch

from optbench import optim
from optbench.optim.registry import make_config
from tests.optim.harness import compare_with_reference, reference_groups

HP = dict(lr=3e-3, beta1=0.85, beta2=0.97, eps=1e-7, weight_decay=0.1)


@pytest.mark.parametrize("decouple", [True, False])
def test_matches_torch_radam_built_directly(decouple):
    # Non-default betas and eps so that a dropped or swapped hyperparameter shows; 24 steps cover the SGD
    # phase (t <= 5) and rectified steps. The same foreach code on both sides, so bit-identical
    # (rtol = atol = 0): any difference is wiring (groups, decay per role, betas).
    compare_with_reference(
        lambda m: optim.create("radam", m, decouple=decouple, **HP),
        lambda m: torch.optim.RAdam(reference_groups(m, HP["weight_decay"]), lr=HP["lr"],
                                    betas=(HP["beta1"], HP["beta2"]), eps=HP["eps"], decoupled_weight_decay=decouple,
                                    foreach=True),
        steps=24, rtol=0.0, atol=0.0)


def test_defaults():
    cfg = make_config("radam")
    assert (cfg.beta1, cfg.beta2, cfg.eps) == (0.9, 0.95, 1e-8)
    assert cfg.decouple and cfg.weight_decay > 0  # RAdamW
    group = optim.create("radam", torch.nn.Linear(2, 2)).param_groups[0]
    assert group["decoupled_weight_decay"] and group["foreach"] and group["betas"] == (0.9, 0.95)


def rho(beta2, t):
    rho_inf = 2 / (1 - beta2) - 1
    return rho_inf - 2 * t * beta2 ** t / (1 - beta2 ** t)


@pytest.mark.parametrize("beta2", [0.95, 0.999])
def test_sgd_steps_until_rho_exceeds_five_then_rectified(beta2):
    # A constant gradient g = 1 on one weight (no decay): m_hat = v_hat = 1, so an SGD step moves lr, a
    # rectified one lr r_t / (1 + eps sqrt(1 - beta2^t)) ~ lr r_t.
    first_rectified = next(t for t in range(1, 100) if rho(beta2, t) > 5)
    assert first_rectified == 6  # rho_5 = 4.80 (0.95), 4.996 (0.999)
    lr = 0.01
    p = torch.nn.Parameter(torch.zeros(1))
    opt = optim.get("radam").build([{"params": [p], "weight_decay": 0.0}],
                                   make_config("radam", lr=lr, beta2=beta2, weight_decay=0.0))
    moves = []
    for _ in range(8):
        before = p.item()
        p.grad = torch.ones(1)
        opt.step()
        moves.append(before - p.item())
    for t, move in enumerate(moves, start=1):
        r = rho(beta2, t)
        rect = 1.0 if r <= 5 else math.sqrt((r - 4) * (r - 2) * (2 / (1 - beta2) - 1)
                                            / ((2 / (1 - beta2) - 5) * (2 / (1 - beta2) - 3) * r))
        assert math.isclose(move, lr * rect, rel_tol=1e-5), (t, move, lr * rect)
    assert moves[5] < 0.2 * lr  # r_6 = 0.18 (0.95), 0.026 (0.999): rectification starts as a warm-up
