"""NorMuon against pytorch-optimizer==4.1.0's NorMuon step by step (both update scales), against the authors'
equations on a hand-sized case, and its routing."""

import functools
import math

import pytest
import torch
from pytorch_optimizer import NorMuon as ReferenceNorMuon
from pytorch_optimizer.optimizer.muon import base as reference_base
from pytorch_optimizer.optimizer.muon import normuon as reference_module
from torch import nn

from optbench import optim
from optbench.errors import UserError
from optbench.optim.algorithms import normuon as ours
from optbench.optim.algorithms.normuon import NorMuon
from tests.optim.harness import compare_with_reference, matrix_model, regression_batches, regression_loss, tiny_lm

STEPS = 25
# Both iterate Newton–Schulz in float32 here, but with different fusions (baddbmm here, addmm with `out=`
# there) and norm guards (+1e-7 here, clamp_min(1e-7) there): the orthogonalised update moves by ~1e-6
# relative, which 25 steps at lr 0.02 grow to a few 1e-7 absolute in O(0.1-1) parameters, as for Muon
# (test_muon.py): atol 5e-6, rtol stays 1e-5.
ATOL = 5e-6


@pytest.fixture
def reference_in_fp32(monkeypatch):
    """pytorch_optimizer iterates Newton–Schulz in bfloat16 by default; its own dtype argument makes it float32."""
    fp32 = functools.partial(reference_base.zero_power_via_newton_schulz_5, dtype=torch.float32)
    monkeypatch.setattr(reference_base, "zero_power_via_newton_schulz_5", fp32)
    monkeypatch.setattr(reference_module, "zero_power_via_newton_schulz_5", fp32)


def _reference(model, **hparams):
    return ReferenceNorMuon([{"params": list(model.parameters()), "use_muon": True, **hparams}])


@pytest.mark.parametrize("update_scale,lr", [("preserve_norm", 0.02), ("match_rms", 3e-3)])
def test_matches_pytorch_optimizer(reference_in_fp32, update_scale, lr):
    hparams = dict(lr=lr, momentum=0.9, beta2=0.9, weight_decay=0.1, update_scale=update_scale)
    compare_with_reference(lambda model: optim.create("normuon", model, ns_dtype="float32", **hparams),
                           lambda model: _reference(model, **hparams),
                           model_fn=matrix_model, batches=regression_batches(STEPS), loss_fn=regression_loss,
                           steps=STEPS, atol=ATOL)


def test_matches_pytorch_optimizer_without_nesterov_at_defaults(reference_in_fp32):
    compare_with_reference(lambda model: optim.create("normuon", model, ns_dtype="float32", nesterov=False),
                           lambda model: _reference(model, nesterov=False),
                           model_fn=matrix_model, batches=regression_batches(STEPS), loss_fn=regression_loss,
                           steps=STEPS, atol=ATOL)


def _polar(G: torch.Tensor) -> torch.Tensor:
    U, _, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    return (U @ Vh).to(G.dtype)


@pytest.fixture
def exact_orthogonalization(monkeypatch):
    monkeypatch.setattr(ours, "orthogonalize", lambda tensors, steps, ns_dtype: [_polar(t) for t in tensors])


def test_two_steps_by_the_authors_equations(exact_orthogonalization):
    """normuon_update of zichongli5/NorMuon with U V^T for Newton–Schulz, on a 3 x 2 (tall) matrix."""
    torch.manual_seed(0)
    p0 = torch.randn(3, 2)
    p = nn.Parameter(p0.clone())
    lr, wd, b1, b2, eps = 0.05, 0.1, 0.9, 0.8, 1e-10
    opt = NorMuon([p], lr=lr, momentum=b1, beta2=b2, weight_decay=wd)
    m, v, expected = torch.zeros(3, 2), torch.zeros(3, 1), p0.clone()
    for g in (torch.randn(3, 2), torch.randn(3, 2)):
        p.grad = g.clone()
        opt.step()
        m = b1 * m + (1 - b1) * g
        o = _polar((1 - b1) * g + b1 * m)
        v = b2 * v + (1 - b2) * (o ** 2).mean(dim=1, keepdim=True)
        n = o / (v.sqrt() + eps)
        n = n * o.norm() / (n.norm() + eps) * math.sqrt(3 / 2)
        expected = expected * (1 - lr * wd) - lr * n
        torch.testing.assert_close(opt.state[p]["second_momentum_buffer"], v)
        torch.testing.assert_close(p.detach(), expected)


def test_rows_are_equalised_and_the_norm_kept(exact_orthogonalization):
    """With beta2 = 0 the second moment is this step's row mean square: every row of the update then has the
    same norm, and preserve_norm keeps the orthogonal factor's Frobenius norm (sqrt(min(out, in)))."""
    torch.manual_seed(1)
    p = nn.Parameter(torch.zeros(4, 6))
    p.grad = torch.randn(4, 6)
    NorMuon([p], lr=1.0, beta2=0.0, nesterov=False).step()
    rows = p.detach().norm(dim=1)
    torch.testing.assert_close(rows, rows.mean().expand(4))
    torch.testing.assert_close(p.detach().norm(), torch.tensor(2.0))


def test_match_rms_gives_rms_0_2_lr():
    torch.manual_seed(2)
    p = nn.Parameter(torch.zeros(16, 8))
    p.grad = torch.randn(16, 8)
    NorMuon([p], lr=1e-3, update_scale="match_rms", ns_dtype="float32").step()
    torch.testing.assert_close(p.detach().square().mean().sqrt(), torch.tensor(0.2e-3), rtol=1e-5, atol=0)


def test_matrix_only_and_bad_settings():
    rows = optim.routing_table(optim.plan(optim.make_config("normuon"), tiny_lm()))
    assert {r["optimizer"] for r in rows if r["role"] == "matrix"} == {"normuon"}
    assert {r["optimizer"] for r in rows if r["role"] != "matrix"} == {"adamw"}
    with pytest.raises(UserError, match="update_scale"):
        optim.make_config("normuon", update_scale="rms")
    with pytest.raises(UserError, match="eps"):
        optim.make_config("normuon", eps=0.0)
