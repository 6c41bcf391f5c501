"""Shampoo with grafting: inverse roots, the grafted optimizer's steps before preconditioning starts
(bit-equal to torch.optim.AdamW), each block's preconditioned step at Adam's norm after (the equations in
float64), a 2 x 2 step by hand, and the one setting in
which pytorch_optimizer 4.1.0's Shampoo runs the same algorithm.

pytorch_optimizer 4.1.0 (read before use): `Shampoo` is Gupta et al.'s original -- factors eps I + sum G G^T,
inverse roots by SVD every `preconditioning_compute_steps`, no grafting, no bias correction, vectors
preconditioned with a full n x n factor, and a momentum that blends the raw gradient with the previous
*preconditioned* update (not an EMA of gradients). So it matches ours only with statistics="sum",
grafting="none", beta1=0, preconditioning from step 1 on matrices, which is what test_matches_... checks.
`ScalableShampoo` ports Google's Scalable Shampoo (SGD/AdaGrad/RMSprop grafting, momentum on the grafted
and preconditioned steps, different epsilon placement, no Adam grafting), not distributed_shampoo; it is
not compared.
"""

import math

import pytest
import torch
from pytorch_optimizer import Shampoo as ReferenceShampoo
from torch import nn

from optbench import optim
from optbench.optim.functional.preconditioners import inverse_root
from tests.optim.harness import (assert_resume_is_bit_identical, compare_with_reference, lm_batches, lm_loss,
                                 matrix_model, reference_groups, regression_batches, regression_loss, tiny_lm, train)


@pytest.mark.parametrize("root", [2, 4])
def test_inverse_root_of_an_spd_matrix(root):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(12, 12, generator=g, dtype=torch.float64)
    x = (a @ a.T + 0.5 * torch.eye(12, dtype=torch.float64)).float()
    r = inverse_root(x, root, eps=0.0)
    assert r.dtype == torch.float32
    torch.testing.assert_close(torch.linalg.matrix_power(r, root) @ x, torch.eye(12), rtol=0, atol=1e-4)
    torch.testing.assert_close(r, r.T)


def test_inverse_root_regularises_a_singular_factor():
    v = torch.tensor([[1.0], [2.0], [2.0]])
    r = inverse_root(v @ v.T, 4, eps=1e-2)  # F + eps I has eigenvalues 9 + eps (along v), eps, eps
    u = v / 3
    expected = (9 + 1e-2) ** -0.25 * u @ u.T + (1e-2) ** -0.25 * (torch.eye(3) - u @ u.T)
    torch.testing.assert_close(r, expected, rtol=1e-3, atol=1e-3)


def test_before_start_preconditioning_step_it_is_adamw_bit_for_bit():
    """Matrices before start_preconditioning_step, and vectors always, take the grafted Adam step: with
    AdamW's own arithmetic, so equal to torch.optim.AdamW to the last bit (observed difference: 0)."""
    hp = dict(precondition_frequency=20, weight_decay=0.1)
    cfg = optim.make_config("shampoo", **hp)

    def adamw(model):
        return torch.optim.AdamW(reference_groups(model, cfg.weight_decay), lr=cfg.lr,
                                 betas=(cfg.beta1, cfg.grafting_beta2), eps=cfg.grafting_eps)

    compare_with_reference(lambda m: optim.create("shampoo", m, **hp), adamw, batches=lm_batches(19), steps=19,
                           rtol=0.0, atol=0.0)


def _blocks(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    """x cut into blocks of at most size x size, row-major, as views (distributed_shampoo's blocking)."""
    return [piece for rows in x.split(size, 0) for piece in rows.split(size, 1)]


def _inverse_fourth_root(factor: torch.Tensor, eps: float) -> torch.Tensor:
    """(F + eps I)^(-1/4) in float64, eigenvalues floored at eps as distributed_shampoo's matrix_inverse_root."""
    values, vectors = torch.linalg.eigh(factor + eps * torch.eye(len(factor), dtype=factor.dtype))
    return vectors * (values + max(eps - values.min().item(), 0.0)).pow(-0.25) @ vectors.T


# Unblocked, the 128 x 32 and 64 x 32 matrices have rank-deficient 128 x 128 / 64 x 64 factors after 4-8 steps
# (median eigenvalue ~1e-9): at epsilon 1e-12 eigh's float32 rounding (~1e-7 of the largest eigenvalue) decides
# their inverse roots, and ours' steps are up to 50% off float64's; so that case runs at epsilon 1e-4. The 16 x 16
# blocks are full rank by step 4 and take the default 1e-12. Steps (~1e-3 per entry) then agree to the float32
# rounding of the weights (<= 1.6e-8 measured, atol 3e-8), but for the token table, whose rows for tokens absent
# from the batches are zero: singular factors, measured 7.7e-8 (unblocked) and 2.6e-6 (blocked) off.
@pytest.mark.parametrize("max_dim, epsilon, wte_atol", [(8192, 1e-4, 3e-7), (16, 1e-12, 1e-5)])
def test_each_block_steps_along_its_preconditioned_direction_at_adams_norm(max_dim, epsilon, wte_atol):
    """Shampoo with Adam grafting per block, the equations written out in float64 on the gradients ours sees,
    from ours' weights before each step: steps 1-3 are Adam's step A = m^ / (sqrt(v^) + eps); from
    start_preconditioning_step = 4 on, block b steps along D_b = L_b^(-1/4) m^_b R_b^(-1/4) (its own
    bias-corrected factor EMAs, roots refreshed at steps 4 and 8) with Adam's norm ||A_b||."""
    lr, beta1, beta2, graft_beta2, frequency = 1e-3, 0.9, 0.999, 0.999, 4
    model = tiny_lm()
    ours = optim.create("shampoo", model, precondition_frequency=frequency, weight_decay=0.0,
                        max_preconditioner_dim=max_dim, epsilon=epsilon)
    matrices = {name: p for name, p in model.named_parameters() if p.dim() == 2}
    state = {name: dict(m=0.0, v=0.0) for name in matrices}
    for t, batch in enumerate(lm_batches(8), start=1):
        lm_loss(model, batch).backward()
        grads = {name: p.grad.double() for name, p in matrices.items()}
        before = {name: p.detach().double() for name, p in matrices.items()}
        ours.step()
        model.zero_grad(set_to_none=True)
        for name, p in matrices.items():
            g, s = grads[name], state[name]
            s["m"] = beta1 * s["m"] + (1 - beta1) * g
            s["v"] = graft_beta2 * s["v"] + (1 - graft_beta2) * g * g
            m_hat = s["m"] / (1 - beta1 ** t)
            adam = m_hat / ((s["v"] / (1 - graft_beta2 ** t)).sqrt() + 1e-8)
            blocks = _blocks(g, max_dim)
            s["L"] = [beta2 * L + (1 - beta2) * b @ b.T for L, b in zip(s.get("L", [0.0] * len(blocks)), blocks)]
            s["R"] = [beta2 * R + (1 - beta2) * b.T @ b for R, b in zip(s.get("R", [0.0] * len(blocks)), blocks)]
            if t % frequency == 0:
                s["roots"] = [(_inverse_fourth_root(L / (1 - beta2 ** t), epsilon),
                               _inverse_fourth_root(R / (1 - beta2 ** t), epsilon)) for L, R in zip(s["L"], s["R"])]
            expected = adam.clone()
            if t >= frequency:
                for out, m_b, a_b, (left, right) in zip(_blocks(expected, max_dim), _blocks(m_hat, max_dim),
                                                        _blocks(adam, max_dim), s["roots"]):
                    d = left @ m_b @ right
                    out.copy_(d * a_b.norm() / d.norm())
                assert (expected - adam).norm() > 0.1 * adam.norm(), f"{name}: Shampoo's direction is Adam's here"
            atol = wte_atol if name == "transformer.wte.weight" else 3e-8
            torch.testing.assert_close(before[name] - p.detach().double(), lr * expected, rtol=0.0, atol=atol,
                                       msg=lambda m: f"{name}, step {t}: {m}")


class Bilinear(nn.Module):
    """loss = sum(W * C): the gradient is C whatever W is."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([[1.0, -2.0], [0.5, 3.0]]))

    def forward(self, c):
        return (self.w * c).sum()


C = torch.tensor([[3.0, 0.0], [4.0, 5.0]])
POLAR = torch.tensor([[2.0, -1.0], [1.0, 2.0]]) / math.sqrt(5.0)
"""C = U S V^T with C^T C = [[25, 20], [20, 25]]: S = (3 sqrt 5, sqrt 5), and U V^T = C (C^T C)^{-1/2}
= [[3, 0], [4, 5]] [[2, -1], [-1, 2]] / (3 sqrt 5) = [[2, -1], [1, 2]] / sqrt 5."""


@pytest.mark.parametrize("grafting", ["none", "adam"])
def test_one_step_on_a_2x2_matrix_by_hand(grafting):
    """Step 1 with preconditioning from the start: L^ = (C C^T / (1 - beta2))... bias-corrected = C C^T,
    m^ = C, so L^{-1/4} C R^{-1/4} = U S^{-1/2} S S^{-1/2} V^T = U V^T, the polar factor. With Adam
    grafting it is rescaled to ||C / |C| || = sqrt 3 (three non-zero entries, each step +-1)."""
    model = Bilinear()
    w0 = model.w.detach().clone()
    opt = optim.create("shampoo", model, lr=0.1, weight_decay=0.0, precondition_frequency=1,
                       start_preconditioning_step=1, grafting=grafting)
    model(C).backward()
    opt.step()
    scale = 1.0 if grafting == "none" else math.sqrt(3.0) / math.sqrt(2.0)  # ||POLAR||_F = sqrt 2
    torch.testing.assert_close(model.w.detach(), w0 - 0.1 * scale * POLAR, rtol=1e-5, atol=1e-6)


def test_decoupled_weight_decay_and_nesterov_by_hand():
    """Two SGD-grafted steps (no preconditioning yet) with a constant gradient: m^ stays C; Nesterov's
    beta1 m_t + (1 - beta1) g over 1 - beta1^(t+1) too; W <- W (1 - lr wd) - lr m^."""
    for nesterov in (False, True):
        model = Bilinear()
        w = model.w.detach().clone()
        opt = optim.create("shampoo", model, lr=0.1, weight_decay=0.5, grafting="sgd", nesterov=nesterov)
        for _ in range(2):
            model(C).backward()
            opt.step()
            opt.zero_grad()
            w = w * (1 - 0.1 * 0.5) - 0.1 * C
        torch.testing.assert_close(model.w.detach(), w)


def test_matches_pytorch_optimizer_shampoo_in_its_setting():
    """Original Shampoo: sums of G G^T, (sum + eps I)^{-1/4} every step from the first, no grafting, no
    moments, decoupled decay, on matrices only. Ours by eigh, the reference by SVD: both float32, so epsilon
    1e-4 keeps the roots well conditioned (at 1e-6 the two factorizations differ by ~1e-3 relative, no
    algorithmic difference). Observed: |difference| <= 9e-8 over 20 steps (rtol 1e-5, atol 1e-7)."""
    eps, lr, wd = 1e-4, 1e-2, 0.1

    def ours(model):
        return optim.create("shampoo", model, lr=lr, weight_decay=wd, beta1=0.0, statistics="sum", grafting="none",
                            precondition_frequency=1, start_preconditioning_step=1, epsilon=eps)

    def reference(model):
        return ReferenceShampoo(model.parameters(), lr=lr, momentum=0.0, weight_decay=wd, weight_decouple=True,
                                preconditioning_compute_steps=1, matrix_eps=eps)

    compare_with_reference(ours, reference, model_fn=matrix_model, batches=regression_batches(20),
                           loss_fn=regression_loss, steps=20)


def test_factors_are_bias_corrected_emas_and_roots_refresh_on_schedule():
    model = matrix_model()
    opt = optim.create("shampoo", model, precondition_frequency=3, beta2=0.9)
    first = model[0].weight  # 24 x 12: factors 24 x 24 and 12 x 12
    grads, factors, roots = [], [], []
    for batch in regression_batches(7):
        regression_loss(model, batch).backward()
        grads.append(first.grad.clone())
        opt.step()
        opt.zero_grad()
        factors.append([f.clone() for f in opt.state[first]["factors"][0]])
        roots.append([r.clone() for r in opt.state[first]["inv_roots"][0]])
    left, right = torch.zeros(24, 24), torch.zeros(12, 12)
    for g in grads:
        left, right = 0.9 * left + 0.1 * g @ g.T, 0.9 * right + 0.1 * g.T @ g
    torch.testing.assert_close(factors[-1][0], left, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(factors[-1][1], right, rtol=1e-5, atol=1e-9)
    changed = [not torch.equal(a[0], b[0]) for a, b in zip(roots, roots[1:])]
    assert changed == [False, True, False, False, True, False], "computed at steps 3 and 6 only"
    assert torch.equal(roots[0][0], torch.eye(24)) and torch.equal(roots[0][1], torch.eye(12))
    for factor, root in zip(factors[5], roots[5]):  # step 6: roots of the bias-corrected EMAs
        torch.testing.assert_close(root, inverse_root(factor / (1 - 0.9 ** 6), 4, 1e-12))


def test_resume_with_preconditioning_active_is_bit_identical():
    assert_resume_is_bit_identical("shampoo", lm_batches(14), 7, precondition_frequency=3,
                                   max_preconditioner_dim=24, nesterov=True)


@pytest.mark.parametrize("hp", [dict(grafting="adagrad"), dict(grafting="rmsprop", statistics="sum"),
                                dict(merge_dims=True, max_preconditioner_dim=600)])
def test_other_settings_learn(hp):
    """AdaGrad / RMSprop grafting, summed factors, and merged dimensions (with max 600 the 16 x 32 position
    table becomes one 512-vector with a full 512 x 512 factor and exponent -1/2, as the reference does)."""
    model = tiny_lm()
    opt = optim.create("shampoo", model, precondition_frequency=5, lr=3e-3, **hp)
    losses = train(model, opt, lm_batches(30))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.25
    if hp.get("merge_dims"):
        assert [f.shape for f in opt.state[model.transformer.wpe.weight]["factors"][0]] == [(512, 512)]
        assert [f.shape for f in opt.state[model.transformer.h[0].attn.c_attn.weight]["factors"][0]] == [(96, 96),
                                                                                                     (32, 32)]
