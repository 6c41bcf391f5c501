"""MARS-AdamW / -Lion / -Shampoo (approx): the paper's equations by hand, invariants, and pytorch-optimizer.

pytorch-optimizer==4.1.0's `MARS` matches the authors' reference (AGI-Arena/MARS mars.py) on the MARS-Lion
path, so MARS-Lion is compared with it as it is. It deviates elsewhere, where the tests say so:
- every Adam denominator (mars-adamw, and the 1-D AdamW fallback of all three) is sqrt(v + 1e-15) + eps
  before the bias correction, where the reference has sqrt(v) / sqrt(1 - beta2^t) + eps;
- MARS-Shampoo's Newton-Schulz runs in bfloat16 (the reference's too) and normalises after the cast.
Those variants are checked against the paper's update written out by hand in float64, and additionally
against pytorch-optimizer with exactly those deviations patched out.
"""

import copy
import functools

import pytest
import torch
import pytorch_optimizer.optimizer.mars as ptopt_mars
from pytorch_optimizer import MARS as PtoptMARS
from torch import nn

from optbench import optim
from optbench.errors import UserError
from optbench.optim.algorithms.mars import shampoo_direction
from optbench.optim.functional.variance_reduction import (clip_unit_norm, clip_unit_norms_, corrected_gradient,
                                                          corrected_gradients)
from optbench.optim.registry import build_for, make_config
from optbench.optim.routing import route
from tests.optim.harness import (compare_with_reference, lm_batches, lm_loss, matrix_model, reference_groups,
                                 regression_batches, regression_loss, tiny_lm)

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


# ------------------------------------------------------------------------- the corrected gradient, by hand

def test_corrected_gradient_on_a_3_vector_by_hand():
    g_prev, g = torch.tensor([0.1, -0.2, 0.3]), torch.tensor([0.2, 0.1, -0.1])
    # gamma * beta1 / (1 - beta1) = 0.025 * 0.95 / 0.05 = 0.475; c = g + 0.475 (g - g_prev)
    expected = torch.tensor([0.2 + 0.475 * 0.1, 0.1 + 0.475 * 0.3, -0.1 - 0.475 * 0.4])
    c = corrected_gradient(g, g_prev, gamma=0.025, beta1=0.95)
    torch.testing.assert_close(c, expected)
    assert torch.equal(clip_unit_norm(c), c)  # norm 0.45 <= 1: untouched
    torch.testing.assert_close(corrected_gradient(g, g_prev, gamma=0.0, beta1=0.95), g)


def test_clipping_caps_the_norm_at_one_and_keeps_the_direction():
    big = torch.tensor([3.0, -4.0, 12.0])  # norm 13
    torch.testing.assert_close(clip_unit_norm(big), big / 13)
    torch.testing.assert_close(torch.linalg.vector_norm(clip_unit_norm(100 * torch.randn(5, 7))), torch.tensor(1.0))
    grads = [torch.randn(4, 3), 10 * torch.randn(5), torch.zeros(2, 2)]
    lasts = [torch.randn(4, 3), torch.randn(5), torch.zeros(2, 2)]
    batched = clip_unit_norms_(corrected_gradients(grads, lasts, 0.05, 0.9))
    for c, g, last in zip(batched, grads, lasts):
        torch.testing.assert_close(c, clip_unit_norm(corrected_gradient(g, last, 0.05, 0.9)))
        assert torch.linalg.vector_norm(c) <= 1.0 + 1e-6


# ------------------------------------------------------------- one and two steps of the paper's update, by hand

def ns_by_singular_values(m: torch.Tensor, eps: float) -> torch.Tensor:
    """Five quintic Newton-Schulz steps map each singular value s of M / (||M||_F + eps) by a s + b s^3 + c s^5."""
    u, s, vh = torch.linalg.svd(m / (m.norm() + eps), full_matrices=False)
    a, b, c = NS_COEFFICIENTS
    for _ in range(5):
        s = a * s + b * s ** 3 + c * s ** 5
    return u @ torch.diag(s) @ vh


def by_hand(x0, grads, variant, lr, weight_decay, beta1, beta2, gamma, eps, mars=True):
    """The paper's MARS-approx update (Sec. 3 / the authors' README), in float64; mars=False: plain AdamW."""
    x = torch.tensor(x0, dtype=torch.float64)
    m, v, g_prev, trajectory = torch.zeros_like(x), torch.zeros_like(x), torch.zeros_like(x), []
    for t, g in enumerate(grads, start=1):
        g = torch.tensor(g, dtype=torch.float64)
        c = g
        if mars:
            c = g + gamma * beta1 / (1 - beta1) * (g - g_prev)
            if c.norm() > 1:
                c = c / c.norm()
        m = beta1 * m + (1 - beta1) * c
        if mars and variant == "lion":
            d = torch.sign(m)
        elif mars and variant == "shampoo" and x.dim() == 2:
            d = ns_by_singular_values(m / (1 - beta1), eps) * max(1.0, x.shape[0] / x.shape[1]) ** 0.5
        else:
            v = beta2 * v + (1 - beta2) * c ** 2
            d = (m / (1 - beta1 ** t)) / ((v / (1 - beta2 ** t)).sqrt() + eps)
        x = x - lr * (d + weight_decay * x)
        g_prev = g
        trajectory.append(x)
    return trajectory


W0 = [[0.5, -0.3], [0.2, 0.8], [-0.6, 0.1]]
W_GRADS = [[[0.3, -0.1], [0.2, 0.4], [-0.25, 0.15]],  # c_1 = 1.45 g_1: norm < 1, not clipped
           [[1.0, 0.5], [-0.8, 0.2], [0.6, -0.9]]]    # c_2: norm > 1, clipped
V0 = [0.1, -0.2, 0.3]
V_GRADS = [[0.5, -1.0, 0.25],                         # c_1: norm 1.66, clipped
           [0.1, 0.2, -0.1]]                          # c_2: norm 0.79, not clipped
HP = dict(lr=0.01, weight_decay=0.1, beta1=0.9, gamma=0.05, eps=1e-8,
          lr_1d=0.02, beta1_1d=0.8, beta2_1d=0.9, weight_decay_1d=0.2)


class Toy(nn.Module):
    """A `rows` x 2 matrix (routed as `matrix`) and a 3-vector (routed as `vector`)."""

    def __init__(self, rows: int):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(W0[:rows]))
        self.v = nn.Parameter(torch.tensor(V0))


@pytest.mark.parametrize("name, optimize_1d, rows", [
    ("mars-adamw", True, 2), ("mars-adamw", False, 2), ("mars-lion", True, 2), ("mars-lion", False, 2),
    ("mars-shampoo", True, 2), ("mars-shampoo", False, 3)])
def test_one_and_two_steps_by_hand(name, optimize_1d, rows):
    variant = name.removeprefix("mars-")
    hp = dict(HP, optimize_1d=optimize_1d, **({} if variant == "lion" else {"beta2": 0.99}))
    model = Toy(rows)
    opt = optim.create(name, model, **hp)
    w_expected = by_hand(W0[:rows], [g[:rows] for g in W_GRADS], variant, hp["lr"], hp["weight_decay"],
                         hp["beta1"], hp.get("beta2", 0.0), hp["gamma"], hp["eps"])
    if optimize_1d:  # the vector on the MARS path, with routing's weight decay for vectors: 0
        v_expected = by_hand(V0, V_GRADS, variant, hp["lr"], 0.0, hp["beta1"], hp.get("beta2", 0.0),
                             hp["gamma"], hp["eps"])
    else:  # the reference's AdamW fallback: raw gradient, lr_1d, betas_1d, weight_decay_1d
        v_expected = by_hand(V0, V_GRADS, "adamw", hp["lr_1d"], hp["weight_decay_1d"], hp["beta1_1d"],
                             hp["beta2_1d"], hp["gamma"], hp["eps"], mars=False)
    for step in range(2):
        model.w.grad = torch.tensor(W_GRADS[step][:rows])
        model.v.grad = torch.tensor(V_GRADS[step])
        opt.step()
        torch.testing.assert_close(model.w.detach().double(), w_expected[step], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(model.v.detach().double(), v_expected[step], rtol=1e-6, atol=1e-7)


def test_a_matrix_that_skipped_a_step_gets_its_own_bias_correction():
    model = nn.Module()
    model.a, model.b = nn.Parameter(torch.tensor(W0[:2])), nn.Parameter(torch.tensor(W0[1:]))
    hp = dict(lr=0.01, weight_decay=0.1, beta1=0.9, beta2=0.99, gamma=0.05, eps=1e-8)
    opt = optim.create("mars-adamw", model, **hp)
    model.a.grad = torch.tensor(W_GRADS[0][:2])
    opt.step()  # b has no gradient yet: untouched, no state
    model.a.grad, model.b.grad = torch.tensor(W_GRADS[1][:2]), torch.tensor(W_GRADS[1][1:])
    opt.step()  # one group, a at step 2 and b at step 1
    args = ("adamw", hp["lr"], hp["weight_decay"], hp["beta1"], hp["beta2"], hp["gamma"], hp["eps"])
    expected_a = by_hand(W0[:2], [g[:2] for g in W_GRADS], *args)[1]
    expected_b = by_hand(W0[1:], [W_GRADS[1][1:]], *args)[0]
    torch.testing.assert_close(model.a.detach().double(), expected_a, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(model.b.detach().double(), expected_b, rtol=1e-6, atol=1e-7)


def test_shampoo_direction_is_the_singular_value_polynomial_scaled_for_tall_matrices():
    torch.manual_seed(0)
    for shape in ((8, 8), (24, 6), (6, 24)):
        m = torch.randn(shape)
        expected = ns_by_singular_values(m.double() / (1 - 0.9), 1e-8) * max(1.0, shape[0] / shape[1]) ** 0.5
        torch.testing.assert_close(shampoo_direction(m, beta1=0.9, eps=1e-8).double(), expected,
                                   rtol=1e-4, atol=2e-5)


# --------------------------------------------------------------------------------------------- invariants

def adamw_like(model, cfg):
    """torch.optim.AdamW with MARS's grouping: its betas on the MARS path, the *_1d keys on vectors."""
    groups = []
    for g in reference_groups(model, cfg.weight_decay, tagged=True):
        if g["role"] == "vector":
            groups.append(dict(params=g["params"], lr=cfg.lr_1d, betas=(cfg.beta1_1d, cfg.beta2_1d),
                               weight_decay=cfg.weight_decay_1d))
        else:
            groups.append(dict(params=g["params"], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                               weight_decay=g["weight_decay"]))
    return torch.optim.AdamW(groups, eps=cfg.eps, foreach=True)


def test_gamma_zero_is_adamw():
    # With gamma = 0, c_t = g_t; with every gradient's norm below 1 the clip is idle, and MARS-AdamW is AdamW
    # (up to float rounding). On matrix_model(bias=True), so the biases' AdamW fallback is compared too
    # (tiny_lm's attention key biases have a mathematically zero gradient made of rounding noise, which Adam
    # amplifies to ~lr * 1e-3 differences as soon as two trajectories round differently).
    cfg = make_config("mars-adamw", gamma=0.0, weight_decay=0.1, lr_1d=1e-2)
    norms = []

    def ours(model):
        opt = build_for(cfg, route(model, cfg))
        opt.register_step_pre_hook(lambda o, args, kwargs: norms.extend(
            p.grad.norm().item() for g in o.param_groups for p in g["params"]))
        return opt

    compare_with_reference(ours, lambda model: adamw_like(model, cfg), model_fn=lambda: matrix_model(bias=True),
                           batches=regression_batches(30), loss_fn=regression_loss, steps=30)
    assert max(norms) < 1.0, "the clip must be idle for this comparison"


@pytest.mark.parametrize("name", ["mars-adamw", "mars-lion", "mars-shampoo"])
def test_the_clip_caps_what_enters_the_momentum(name):
    model = tiny_lm()
    opt = optim.create(name, model, beta1=0.9)
    (1e4 * lm_loss(model, lm_batches(1)[0])).backward()  # every gradient far above norm 1
    grads = {p: p.grad.clone() for p in model.parameters()}
    opt.step()
    for group in opt.param_groups:
        for p in group["params"]:
            norm = opt.state[p]["exp_avg"].norm()
            if group["mars"]:  # m_1 = (1 - beta1) c~_1 with ||c~_1|| = 1
                torch.testing.assert_close(norm, torch.tensor(0.1))
            else:  # the AdamW fallback takes the raw gradient
                torch.testing.assert_close(norm, 0.1 * grads[p].norm())


def test_the_previous_gradient_is_a_copy():
    model = Toy(2)
    opt = optim.create("mars-adamw", model, optimize_1d=True)
    model.w.grad, model.v.grad = torch.ones(2, 2), torch.ones(3)
    opt.step()
    model.w.grad.zero_()  # a trainer zeroing gradients in place must not erase g_{t-1}
    assert torch.equal(opt.state[model.w]["last_grad"], torch.ones(2, 2))


def test_roles_embeddings_and_hidden_matrices_take_mars_vectors_take_adamw():
    model = tiny_lm()
    opt = optim.create("mars-adamw", model, lr=1e-3, weight_decay=0.01, lr_1d=2e-3, weight_decay_1d=0.05)
    by_role = {g["role"]: g for g in opt.param_groups}
    assert {role: g["mars"] for role, g in by_role.items()} == {"embedding": True, "matrix": True, "vector": False}
    assert (by_role["embedding"]["lr"], by_role["embedding"]["weight_decay"]) == (1e-3, 0.01)
    assert (by_role["vector"]["lr"], by_role["vector"]["weight_decay"]) == (2e-3, 0.05)
    assert (by_role["vector"]["beta1"], by_role["vector"]["beta2"]) == (0.9, 0.95)
    opt = optim.create("mars-adamw", model, optimize_1d=True)
    assert all(g["mars"] for g in opt.param_groups)
    assert {g["role"]: g["weight_decay"] for g in opt.param_groups}["vector"] == 0.0


def test_lion_has_no_beta2_and_gamma_must_be_non_negative():
    with pytest.raises(UserError, match="unknown hyperparameter 'beta2'"):
        make_config("mars-lion", beta2=0.99)
    with pytest.raises(UserError, match="gamma"):
        make_config("mars-adamw", gamma=-0.1)


# ------------------------------------------------------------------------------ pytorch-optimizer==4.1.0

def ptopt(variant: str, cfg):
    """pytorch-optimizer's MARS over the test's own role groups with our hyperparameters."""
    def build(model):
        return PtoptMARS(reference_groups(model, cfg.weight_decay), lr=cfg.lr,
                         betas=(cfg.beta1, getattr(cfg, "beta2", 0.99)), gamma=cfg.gamma, mars_type=variant,
                         optimize_1d=cfg.optimize_1d, lr_1d=cfg.lr_1d, betas_1d=(cfg.beta1_1d, cfg.beta2_1d),
                         weight_decay_1d=cfg.weight_decay_1d, eps=cfg.eps)
    return build


def ours(cfg):
    return lambda model: build_for(cfg, route(model, cfg))


def test_lion_matches_pytorch_optimizer():
    # Every parameter on the MARS-Lion path (optimize_1d), where pytorch-optimizer is the reference's update.
    cfg = make_config("mars-lion", weight_decay=0.1, optimize_1d=True)
    result = compare_with_reference(ours(cfg), ptopt("lion", cfg))
    assert result.steps == 20 and min(result.moved.values()) > 5 * cfg.lr  # sign steps: lr per entry per step


def test_adamw_matches_pytorch_optimizer_with_the_references_denominator(monkeypatch):
    # pytorch-optimizer adds 1e-15 under the square root: removed here.
    monkeypatch.setattr(PtoptMARS, "apply_ams_bound_foreach", staticmethod(functools.partial(
        PtoptMARS.apply_ams_bound_foreach, exp_avg_sq_eps=0.0)))
    # ... and adds eps before dividing by sqrt(1 - beta2^t): eps * sqrt(1 - beta2^t) there is the reference's eps.
    step_foreach = PtoptMARS._step_foreach

    def reference_eps(self, group, params, grads, state, mixed, bias_correction1, bias_correction2_sq):
        return step_foreach(self, {**group, "eps": group["eps"] * bias_correction2_sq}, params, grads, state, mixed,
                            bias_correction1, bias_correction2_sq)

    monkeypatch.setattr(PtoptMARS, "_step_foreach", reference_eps)
    cfg = make_config("mars-adamw", weight_decay=0.1, lr_1d=1e-2, beta1_1d=0.8, beta2_1d=0.9, weight_decay_1d=0.05)
    compare_with_reference(ours(cfg), ptopt("adamw", cfg), model_fn=lambda: matrix_model(bias=True),
                           batches=regression_batches(30), loss_fn=regression_loss, steps=30)


def test_shampoo_matches_pytorch_optimizer_with_float32_newton_schulz(monkeypatch):
    # pytorch-optimizer (like the reference) orthogonalises in bfloat16; in float32 it is our update. Matrices
    # only: its 1-D AdamW fallback has the denominator deviation above. atol 1e-6 instead of 1e-7: the two
    # float32 iterations (addmm there, batched baddbmm here; X / max(|X|, eps) there, X / (|X| + eps) here)
    # round apart by ~1e-8 per step, 3e-7 after 30 steps at weights ~1e-3 where rtol gives no room.
    monkeypatch.setattr(ptopt_mars, "zero_power_via_newton_schulz_5", functools.partial(
        ptopt_mars.zero_power_via_newton_schulz_5, dtype=torch.float32))
    cfg = make_config("mars-shampoo", weight_decay=0.1)
    compare_with_reference(ours(cfg), ptopt("shampoo", cfg), model_fn=matrix_model,
                           batches=regression_batches(30), loss_fn=regression_loss, steps=30, atol=1e-6)


def test_shampoo_is_not_silently_bfloat16_on_cpu():
    # Guard for the tolerance above: pytorch-optimizer's own bfloat16 step differs visibly from ours.
    cfg = make_config("mars-shampoo", weight_decay=0.1)
    model = matrix_model()
    other = copy.deepcopy(model)
    a, b = ours(cfg)(model), ptopt("shampoo", cfg)(other)
    for m, o in ((model, a), (other, b)):
        regression_loss(m, regression_batches(1)[0]).backward()
        o.step()
    assert not all(torch.allclose(x, y, rtol=1e-5, atol=1e-7) for x, y in zip(model.parameters(), other.parameters()))
