"""Scion against pytorch-optimizer==4.1.0's SCION, norm by norm, step by step; the LMO invariants; the
role -> norm mapping."""

import math

import pytest
import torch
from pytorch_optimizer.optimizer import scion as po_scion
from pytorch_optimizer.optimizer.scion import SCION, LMONorm

from optbench import optim
from optbench.errors import UserError
from optbench.models import build
from optbench.models.llama import LlamaConfig
from optbench.optim.algorithms.scion import bias_rms_lmo, colnorm_lmo, norms_for_roles, sign_lmo, spectral_lmo
from optbench.optim.functional import newton_schulz as newton_schulz_module
from tests.optim.harness import BATCH, SEQ, VOCAB, compare_with_reference, lm_batches, reference_groups, tiny_lm
from tests.optim.test_newton_schulz import reference_iteration_fp32

STEPS = 20
LR = 2 ** -7


def untied_lm(seed: int = 0):
    """A 1-layer Llama with an untied head: every role (embedding, head, matrix, vector) is present."""
    torch.manual_seed(seed)
    return build(LlamaConfig(n_layer=1, n_head=2, n_embd=16, multiple_of=16, tie_embeddings=False), VOCAB, SEQ)


# Our role -> norm, as pytorch-optimizer spells it (norm type, kwargs).
PO_NORMS = {
    "spectral": (LMONorm.SPECTRAL, {"normalize": True}),
    "sign": (LMONorm.SIGN, {"normalize": False}),
    "sign_normalized": (LMONorm.SIGN, {"normalize": True}),
    "colnorm": (LMONorm.COL, {"transpose": True}),
    "bias_rms": (LMONorm.BIAS, {}),
}


@pytest.fixture(autouse=True)
def reference_iteration(monkeypatch):
    """pytorch-optimizer's SCION orthogonalises with its own zero_power_via_newton_schulz_5, in bfloat16 by
    default, and normalising by max(||G||, eps) where the paper's reference (LIONS-EPFL/scion, after
    muon-optimizer) divides by ||G|| + eps: for the tiny query/key gradients of an attention layer at init
    (||d|| ~ 1e-5) that alone moves the update by ~1%. The comparison therefore swaps in the paper's iteration,
    transcribed in float32 (checked against muon-optimizer and ours in test_newton_schulz.py), so it checks
    the LMOs, scales, momentum and decay."""
    monkeypatch.setattr(po_scion, "zero_power_via_newton_schulz_5",
                        lambda g, num_steps=5, **_: reference_iteration_fp32(g, num_steps))


# Our Newton–Schulz fuses its products into baddbmm, the transcription does not, and the LMOs compute their
# norms with different (equivalent) ops: float32 rounding moves the parameters by ~1e-7 per step, which the
# training dynamics grow to <= 1.3e-6 after 20 steps (parameters are O(0.02-1)). atol is 5e-6 (rtol stays
# 1e-5); a wrong scale, norm or decay shows as >= 1e-4 at the first step, and the bit-identical test below
# shows the bookkeeping matches exactly when both sides run the same iteration.
ATOL = 5e-6


def reference_scion(model, constrained: bool = False, **hparams):
    """pytorch-optimizer's SCION over the test's own role groups, each with the norm and scale ours picks."""
    cfg = optim.make_config("scion", **hparams)
    groups = reference_groups(model, cfg.weight_decay, tagged=True)
    norms = norms_for_roles(cfg, {g["role"] for g in groups})
    po_groups = []
    for g in groups:
        norm, scale = norms[g["role"]]
        norm_type, kwargs = PO_NORMS[norm]
        po_groups.append({"params": g["params"], "norm_type": norm_type, "norm_kwargs": kwargs, "scale": scale,
                          "weight_decay": 0.0 if constrained else g["weight_decay"]})
    return SCION(po_groups, lr=cfg.lr, momentum=1 - cfg.momentum, constraint=constrained, weight_decouple=True)


@pytest.mark.parametrize("embedding_norm", ["colnorm", "sign"])
def test_matches_pytorch_optimizer_on_an_untied_lm(embedding_norm):
    hparams = dict(lr=LR, momentum=0.9, weight_decay=0.1, embedding_norm=embedding_norm)
    compare_with_reference(lambda model: optim.create("scion", model, ns_dtype="float32", **hparams),
                           lambda model: reference_scion(model, **hparams),
                           model_fn=untied_lm, batches=lm_batches(STEPS), steps=STEPS, atol=ATOL)


def test_matches_pytorch_optimizer_on_the_tied_tiny_lm_constrained():
    hparams = dict(lr=LR, momentum=0.5, constrained=True, matrix_scale=2.0, vector_scale=0.5)
    compare_with_reference(lambda model: optim.create("scion", model, ns_dtype="float32", **hparams),
                           lambda model: reference_scion(model, **hparams),
                           model_fn=tiny_lm, batches=lm_batches(STEPS), steps=STEPS, atol=ATOL)


def test_bit_identical_to_pytorch_optimizer_given_the_same_iteration(monkeypatch):
    monkeypatch.setattr(newton_schulz_module, "newton_schulz",
                        lambda G, steps, dtype: reference_iteration_fp32(G, steps))
    hparams = dict(lr=LR, momentum=0.8, weight_decay=0.2)
    compare_with_reference(lambda model: optim.create("scion", model, ns_dtype="float32", **hparams),
                           lambda model: reference_scion(model, **hparams),
                           model_fn=tiny_lm, batches=lm_batches(STEPS), steps=STEPS, rtol=0.0, atol=0.0)


# ------------------------------------------------------------------------------------------- invariants
def _gaussian(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", [(48, 16), (16, 48), (24, 24), (3, 20, 12)])
def test_spectral_lmo_has_singular_values_near_sqrt_dout_over_din(shape):
    (update,) = spectral_lmo([_gaussian(shape)], ns_dtype="float32")
    s = torch.linalg.svdvals(update) / math.sqrt(shape[-2] / shape[-1])
    assert 0.6 < s.min() and s.max() < 1.2  # the quintic Newton–Schulz band around 1


def test_sign_lmo_entries_are_plus_minus_one_or_one_over_d_in():
    g = _gaussian((10, 8))
    (plain,), (normalized,) = sign_lmo([g], normalized=False), sign_lmo([g], normalized=True)
    assert torch.equal(plain.abs(), torch.ones(10, 8)) and torch.equal(plain, g.sign())
    torch.testing.assert_close(normalized, g.sign() / 8)


def test_colnorm_lmo_gives_every_token_row_rms_one():
    g = _gaussian((64, 16))
    g[3] = 0.0  # a token absent from the batch keeps a zero update
    (update,) = colnorm_lmo([g])
    rms = update.square().mean(dim=1).sqrt()
    torch.testing.assert_close(rms[torch.arange(64) != 3], torch.ones(63))
    assert torch.equal(update[3], torch.zeros(16))
    torch.testing.assert_close(update / update.norm(dim=1, keepdim=True).clamp_min(1e-12),
                               g / g.norm(dim=1, keepdim=True).clamp_min(1e-12))


def test_bias_rms_lmo_has_rms_one():
    (update,) = bias_rms_lmo([_gaussian((32,))])
    torch.testing.assert_close(update.square().mean().sqrt(), torch.tensor(1.0))


def test_first_step_moves_each_role_by_lr_times_its_scale():
    """From a zero average, d = (1 - momentum) g; every LMO is scale-invariant, so the first step is
    -lr * scale * lmo(g): the head's entries move by exactly lr * head_scale / d_in."""
    model = untied_lm()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = optim.create("scion", model, lr=LR, head_scale=10.0, embedding_scale=2.0, ns_dtype="float32")
    x, y = lm_batches(1)[0]
    torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
    opt.step()
    moved = {n: p.detach() - before[n] for n, p in model.named_parameters()}
    torch.testing.assert_close(moved["output.weight"].abs(), torch.full((VOCAB, 16), LR * 10.0 / 16))
    rows = moved["tok_embeddings.weight"].square().mean(dim=1).sqrt()
    seen = torch.zeros(VOCAB, dtype=torch.bool)
    seen[x.flatten()] = True
    torch.testing.assert_close(rows[seen], torch.full((int(seen.sum()),), LR * 2.0))
    assert BATCH * SEQ >= seen.sum() > 0


# --------------------------------------------------------------------------------------------- routing
def test_roles_map_to_the_papers_norms():
    cfg = optim.make_config("scion")
    untied = norms_for_roles(cfg, {"embedding", "head", "matrix", "vector"})
    assert {role: norm for role, (norm, _) in untied.items()} == {
        "embedding": "colnorm", "head": "sign_normalized", "matrix": "spectral", "vector": "bias_rms"}
    assert {role: scale for role, (_, scale) in untied.items()} == {
        "embedding": 1.0, "head": 10.0, "matrix": 3.0, "vector": 1.0}
    tied = norms_for_roles(cfg, {"embedding", "matrix", "vector"})
    assert tied["embedding"][0] == "sign"  # the table is also the output layer
    assert norms_for_roles(optim.make_config("scion", embedding_norm="colnorm"), {"embedding"})["embedding"][0] \
        == "colnorm"


def test_build_tags_each_group_with_its_norm():
    opt = optim.create("scion", tiny_lm())
    assert {g["role"]: g["norm"] for g in opt.param_groups} == {
        "embedding": "sign", "vector": "bias_rms", "matrix": "spectral"}
    assert "backup" not in getattr(opt, "parts", {}), "Scion handles every role itself"


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="embedding_norm"):
        optim.make_config("scion", embedding_norm="rownorm")
    with pytest.raises(UserError, match="head_scale"):
        optim.make_config("scion", head_scale=0.0)
    with pytest.raises(UserError, match="constrained"):
        optim.make_config("scion", constrained=True, weight_decay=0.1)
