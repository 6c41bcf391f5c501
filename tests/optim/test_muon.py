"""Muon against muon-optimizer==0.1.0 step by step; D-Muon against its equations and against Muon with the
scales mapped; routing of the matrix-only optimizers."""

import math

import muon
import pytest
import torch
from torch import nn

from optbench import optim
from optbench.errors import UserError
from optbench.optim.algorithms import muon as ours
from optbench.optim.algorithms.muon import DMuon, Muon
from optbench.optim.functional import newton_schulz as newton_schulz_module
from tests.optim.harness import compare_with_reference, matrix_model, regression_batches, regression_loss, tiny_lm
from tests.optim.test_newton_schulz import reference_iteration_fp32

STEPS = 25


@pytest.fixture
def reference_in_fp32(monkeypatch):
    """muon-optimizer hard-codes bfloat16 in zeropower_via_newtonschulz5 (`X = G.bfloat16()`); for an fp32
    step-by-step comparison its module function is replaced by the same iteration transcribed in float32
    (tests/optim/test_newton_schulz.py checks that transcription against ours and the bf16 original)."""
    monkeypatch.setattr(muon, "zeropower_via_newtonschulz5", reference_iteration_fp32)


def _polar(G: torch.Tensor) -> torch.Tensor:
    U, _, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    return (U @ Vh).to(G.dtype)


@pytest.fixture
def exact_orthogonalization(monkeypatch):
    """Replace Newton–Schulz by the exact polar factor U V^T, so equations hold to float precision."""
    monkeypatch.setattr(ours, "orthogonalize", lambda tensors, steps, ns_dtype: [_polar(t) for t in tensors])


def _ours(model, **hparams):
    return optim.create("muon", model, ns_dtype="float32", **hparams)


def _reference(model, **hparams):
    return muon.SingleDeviceMuon(list(model.parameters()), **hparams)


# Our Newton–Schulz fuses b A + c A^2 and a X + B X into baddbmm; the reference adds separate products. In
# float32 that moves the orthogonalised update by ~1e-6 relative, i.e. ~1e-7 absolute in the parameters per
# step at lr 0.02 -- right at compare_with_reference's default atol of 1e-7 -- and the training dynamics grow
# it to <= 8.8e-7 after 25 steps (parameters are O(0.1-1)). atol is therefore 5e-6 (rtol stays 1e-5); the
# test below shows the remaining bookkeeping is bit-identical when both run the same iteration.
ATOL = 5e-6


def test_muon_matches_muon_optimizer_single_device(reference_in_fp32):
    result = compare_with_reference(
        lambda model: _ours(model, lr=0.02, momentum=0.95, weight_decay=0.1),
        lambda model: _reference(model, lr=0.02, momentum=0.95, weight_decay=0.1),
        model_fn=matrix_model, batches=regression_batches(STEPS), loss_fn=regression_loss, atol=ATOL)
    # all three matrices, every step; the discrepancy stays well inside ATOL (8.8e-7 measured)
    assert result.steps == STEPS and result.compared == (3,) * STEPS and max(result.max_diff.values()) < ATOL / 2


def test_muon_is_bit_identical_to_muon_optimizer_given_the_same_iteration(reference_in_fp32, monkeypatch):
    monkeypatch.setattr(newton_schulz_module, "newton_schulz",
                        lambda G, steps, dtype: reference_iteration_fp32(G, steps))
    compare_with_reference(
        lambda model: _ours(model, lr=0.05, momentum=0.9, weight_decay=0.2),
        lambda model: _reference(model, lr=0.05, momentum=0.9, weight_decay=0.2),
        model_fn=matrix_model, batches=regression_batches(STEPS), loss_fn=regression_loss, steps=STEPS,
        rtol=0.0, atol=0.0)


class Experts(nn.Module):
    """A 3-D parameter [E, out, in], as MoE experts store it: each expert's matrix is its own matrix."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w_in = nn.Parameter(torch.randn(3, 24, 12) / 12 ** 0.5)
        self.w_out = nn.Parameter(torch.randn(3, 6, 24) / 24 ** 0.5)

    def forward(self, x):
        h = torch.tanh(torch.einsum("eoi,bi->ebo", self.w_in, x))
        return torch.einsum("eoi,ebi->bo", self.w_out, h)


def test_muon_treats_3d_experts_as_the_reference_batched_iteration(reference_in_fp32):
    """muon-optimizer's iteration is batched over leading dimensions and scales by the last two: agreement."""
    compare_with_reference(
        lambda model: _ours(model, weight_decay=0.05), lambda model: _reference(model, lr=0.02, weight_decay=0.05),
        model_fn=Experts, batches=regression_batches(20), loss_fn=regression_loss, steps=20, atol=ATOL)


def test_muon_without_nesterov_orthogonalizes_the_momentum(exact_orthogonalization):
    p = nn.Parameter(torch.zeros(4, 3))
    opt = Muon([p], lr=0.1, momentum=0.5, nesterov=False)
    g1, g2 = torch.randn(4, 3), torch.randn(4, 3)
    for g in (g1, g2):
        p.grad = g.clone()
        opt.step()
    m1 = 0.5 * g1
    m2 = 0.5 * m1 + 0.5 * g2
    torch.testing.assert_close(p.detach(), -0.1 * (_polar(m1) + _polar(m2)) * math.sqrt(4 / 3))


def test_dmuon_update_rms_is_0_2_lr(exact_orthogonalization):
    """Moonlight's rule: an orthogonal (r x c) matrix has RMS 1/sqrt(max(r, c)); times 0.2 sqrt(max(r, c))."""
    for shape in ((64, 16), (16, 64), (32, 32)):
        p = nn.Parameter(torch.zeros(shape))
        p.grad = torch.randn(shape)
        DMuon([p], lr=1e-3, weight_decay=0.0).step()
        torch.testing.assert_close(p.detach().square().mean().sqrt(), torch.tensor(0.2 * 1e-3), rtol=1e-5, atol=0)


def test_dmuon_update_rms_with_newton_schulz_is_near_0_2_lr():
    """Newton–Schulz leaves singular values in ~[0.7, 1.2] rather than at 1, so the RMS is 0.2 lr within that."""
    torch.manual_seed(0)
    p = nn.Parameter(torch.zeros(96, 32))
    p.grad = torch.randn(96, 32)
    DMuon([p], lr=1e-3, weight_decay=0.0, ns_dtype="float32").step()
    rms = p.detach().square().mean().sqrt().item()
    assert 0.7 * 0.2e-3 < rms < 1.2 * 0.2e-3


def test_dmuon_follows_the_epfl_equations(exact_orthogonalization):
    """Two steps by hand: buf <- beta buf + g; u = g + beta buf; p <- p (1 - lr wd) - lr 0.2 sqrt(max) polar(u)."""
    torch.manual_seed(1)
    p0 = torch.randn(6, 4)
    p = nn.Parameter(p0.clone())
    lr, wd, beta = 1e-2, 0.1, 0.9
    opt = DMuon([p], lr=lr, momentum=beta, weight_decay=wd)
    g1, g2 = torch.randn(6, 4), torch.randn(6, 4)
    expected, buf = p0.clone(), torch.zeros(6, 4)
    for g in (g1, g2):
        p.grad = g.clone()
        opt.step()
        buf = beta * buf + g
        expected = expected * (1 - lr * wd) - lr * 0.2 * math.sqrt(6) * _polar(g + beta * buf)
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], buf)
        torch.testing.assert_close(p.detach(), expected)
    assert torch.equal(p.grad, g2), "the gradient is left as it was"


def test_dmuon_is_muon_with_the_scale_mapped():
    """Per matrix (r x c), D-Muon(lr, wd) = Muon(lr * 0.2 sqrt(max(r, c)) / max(1, r/c)^0.5, wd scaled back).

    The momentum conventions differ only by the factor 1 - beta (SGD-style sum vs EMA), which Newton–Schulz
    normalises away up to its eps of 1e-7 on the Frobenius norm; the parameters agree to 1e-5 relative."""
    lr, wd = 3e-3, 0.1

    def mapped_muon(model):
        groups = []
        for p in model.parameters():
            r, c = p.shape[-2:]
            lr_muon = lr * 0.2 * math.sqrt(max(r, c)) / max(1.0, r / c) ** 0.5
            groups.append({"params": [p], "lr": lr_muon, "weight_decay": wd * lr / lr_muon})
        return Muon(groups, ns_dtype="float32")

    compare_with_reference(
        lambda model: optim.create("dmuon", model, lr=lr, weight_decay=wd, ns_dtype="float32"), mapped_muon,
        model_fn=matrix_model, batches=regression_batches(STEPS), loss_fn=regression_loss, steps=STEPS)


@pytest.mark.parametrize("name", ["muon", "dmuon"])
def test_matrix_only_embeddings_head_and_vectors_go_to_the_backup(name):
    cfg = optim.make_config(name)
    rows = optim.routing_table(optim.plan(cfg, tiny_lm()))
    assert {r["optimizer"] for r in rows if r["role"] == "matrix"} == {name}
    assert {r["optimizer"] for r in rows if r["role"] != "matrix"} == {"adamw"}


def test_dmuon_backup_shares_its_lr_and_weight_decay_by_default():
    cfg = optim.make_config("dmuon")
    assert (cfg.backup.lr, cfg.backup.weight_decay) == (cfg.lr, cfg.weight_decay) == (1e-3, 0.1)


def test_bad_newton_schulz_settings_are_user_errors():
    with pytest.raises(UserError, match="ns_dtype"):
        optim.make_config("muon", ns_dtype="float16")
    with pytest.raises(UserError, match="ns_steps"):
        optim.make_config("dmuon", ns_steps=0)
    with pytest.raises(UserError, match="matched_adamw_rms"):
        optim.make_config("dmuon", matched_adamw_rms=0.0)
