"""Linear attention: chunked forms equal the recurrences (values, states, gradients), causality, dispatch,
configs, presets, FLOPs, and the three families training; fla's kernels against ours when CUDA and fla exist."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import optbench
from optbench.config.compose import compose
from optbench.errors import UserError
from optbench.models import build
from optbench.models.linear_attention import DeltaNetConfig, GatedDeltaNetConfig, GLAConfig, kernels
from optbench.models.linear_attention.chunked import delta_rule_chunked, gated_delta_rule_chunked, gla_chunked
from optbench.models.linear_attention.mixers import chunk_flops
from optbench.models.linear_attention.recurrent import (
    delta_rule_recurrent,
    gated_delta_rule_recurrent,
    gla_recurrent,
)
from optbench.training.rundir import read_metrics
from tests.models.fitting import fit_repeated_batch

FAMILIES = ("gla", "deltanet", "gated-deltanet")
OPS = {  # family -> (recurrence, chunked form, kernels entry point)
    "gla": (gla_recurrent, gla_chunked, kernels.gla),
    "deltanet": (delta_rule_recurrent, delta_rule_chunked, kernels.delta_rule),
    "gated-deltanet": (gated_delta_rule_recurrent, gated_delta_rule_chunked, kernels.gated_delta_rule),
}


def op_inputs(family: str, batch: int, seq: int, heads: int, k_dim: int, v_dim: int, seed: int = 0,
              device: str = "cpu") -> list[torch.Tensor]:
    """The op's arguments as the mixers make them: L2-normalised q, k for the delta rules; for GLA, q and k of
    std 0.5, about a 1024-wide model's projections at init (0.02 sqrt(1024)); strong decays (log a down to
    about -7 per token, so a chunk's cumulative exponents span far more than float32's range)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    q, k, v = randn(batch, seq, heads, k_dim), randn(batch, seq, heads, k_dim), randn(batch, seq, heads, v_dim)
    if family == "gla":
        args = [q / 2, k / 2, v, F.logsigmoid(3 * randn(batch, seq, heads, k_dim))]
    else:
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        beta = torch.sigmoid(randn(batch, seq, heads))
        log_decay = -F.softplus(2 * randn(batch, seq, heads))
        args = [q, k, v, beta] if family == "deltanet" else [q, k, v, log_decay, beta]
    return [a.to(device).requires_grad_() for a in args]


def state_like(args: list[torch.Tensor], seed: int = 1) -> torch.Tensor:
    q, v = args[0], args[2]
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(q.size(0), q.size(2), q.size(3), v.size(3), generator=gen).to(q.device).requires_grad_()


# (batch, seq, heads, K, V, chunk): a length that is no multiple of the chunk, an exact multiple, one shorter
# than a chunk, and the delta rules' default chunk of 64.
SHAPES = [(2, 37, 3, 8, 12, 16), (1, 48, 2, 16, 16, 16), (2, 5, 1, 4, 6, 16), (1, 80, 2, 8, 8, 64)]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "initial-state"])
def test_chunked_equals_recurrence_in_fp32(family, shape, with_state):
    recurrent, chunked, _ = OPS[family]
    *dims, chunk = shape
    args = op_inputs(family, *dims)
    state = state_like(args) if with_state else None
    o_ref, s_ref = recurrent(*args, initial_state=state)
    o, s = chunked(*args, initial_state=state, chunk=chunk)
    assert o.shape == o_ref.shape == (*args[2].shape[:3], args[2].size(-1)) and s.shape == s_ref.shape
    assert (o - o_ref).abs().max().item() <= 1e-5
    assert (s - s_ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_equals_recurrence_exactly_in_fp64(family):
    """The algebra itself, free of float32 rounding: both forms agree to 1e-12 in float64."""
    recurrent, chunked, _ = OPS[family]
    args = [a.detach().double() for a in op_inputs(family, 2, 37, 2, 8, 12)]
    state = state_like(args).detach().double()
    for ours, ref in zip(chunked(*args, initial_state=state, chunk=16), recurrent(*args, initial_state=state)):
        assert ours.dtype == torch.float64 and (ours - ref).abs().max().item() <= 1e-12


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_of_chunked_and_recurrence_agree(family):
    recurrent, chunked, _ = OPS[family]
    grads = []
    for fn, kw in ((recurrent, {}), (chunked, {"chunk": 16})):
        args = op_inputs(family, 2, 37, 2, 8, 12)
        state = state_like(args)
        o, s = fn(*args, initial_state=state, **kw)
        weights = torch.Generator().manual_seed(7)
        loss = (o * torch.randn(o.shape, generator=weights)).sum() + (s * torch.randn(s.shape, generator=weights)).sum()
        grads.append(torch.autograd.grad(loss, [*args, state]))
    for ours, ref in zip(*grads, strict=True):
        assert ours.abs().max() > 0 and (ours - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_is_causal(family):
    _, chunked, _ = OPS[family]
    args = op_inputs(family, 2, 40, 2, 8, 8)
    changed = [a.detach().clone() for a in op_inputs(family, 2, 40, 2, 8, 8, seed=1)]
    cut = 21  # inside the second chunk of 16: later tokens of the same chunk must not leak either
    changed = [torch.cat((a.detach()[:, :cut], c[:, cut:]), dim=1) for a, c in zip(args, changed, strict=True)]
    before, after = chunked(*args, chunk=16)[0], chunked(*changed, chunk=16)[0]
    torch.testing.assert_close(after[:, :cut], before[:, :cut], rtol=0, atol=1e-6)
    assert not torch.allclose(after[:, cut:], before[:, cut:])


@pytest.mark.parametrize("family", FAMILIES)
def test_final_state_carries_a_sequence_over(family):
    _, chunked, _ = OPS[family]
    args = [a.detach() for a in op_inputs(family, 1, 45, 2, 8, 8)]
    whole, whole_state = chunked(*args, chunk=16)
    first, state = chunked(*(a[:, :20] for a in args), chunk=16)
    second, last_state = chunked(*(a[:, 20:] for a in args), initial_state=state, chunk=16)
    torch.testing.assert_close(torch.cat((first, second), dim=1), whole, rtol=0, atol=1e-5)
    torch.testing.assert_close(last_state, whole_state, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_dispatch_on_cpu_runs_ours_in_float32_even_under_autocast(family):
    _, chunked, entry = OPS[family]
    args = [a.detach() for a in op_inputs(family, 1, 30, 2, 8, 8)]
    o, state = entry(*args)
    assert state is None and torch.equal(o, chunked(*args)[0])
    assert torch.equal(entry(*args, output_final_state=True)[1], chunked(*args)[1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o_autocast, _ = entry(*args)
    assert o_autocast.dtype == torch.float32 and torch.equal(o_autocast, o)


@pytest.mark.skipif(kernels.fla_ops() is not None, reason="flash-linear-attention is installed")
def test_asking_for_fla_without_it_fails_at_build():
    with pytest.raises(UserError, match="model.kernel=fla needs flash-linear-attention"):
        build(GLAConfig(n_layer=1, n_head=2, n_embd=32, kernel="fla"), 64, 8)


@pytest.mark.parametrize("cfg_cls, kw, message", [
    (GLAConfig, {"n_embd": 64, "n_head": 4, "expand_k": 0.1}, "expand_k=0.1 gives width 6"),
    (GLAConfig, {"gate_low_rank": 0}, "gate_low_rank=0"),
    (DeltaNetConfig, {"kernel": "triton"}, "unknown model.kernel 'triton'"),
    (DeltaNetConfig, {"conv_size": -1}, "conv_size=-1"),
    (GatedDeltaNetConfig, {"n_mixer_head": 0}, "n_mixer_head=0"),
    (GatedDeltaNetConfig, {"head_dim": 5, "expand_v": 0.5}, "expand_v=0.5 times head_dim=5"),
])
def test_config_errors_are_user_errors(cfg_cls, kw, message):
    with pytest.raises(UserError, match=message):
        cfg_cls(**kw)


def debug_model(family: str, vocab: int = 64, seq: int = 32, seed: int = 0):
    torch.manual_seed(seed)
    return build(compose([f"model={family}-debug"]).model, vocab, seq)


def test_gated_deltanet_parameters_follow_fla_names_and_its_heads_need_not_divide_the_width():
    cfg = GatedDeltaNetConfig(n_layer=1, n_head=4, n_embd=96, n_mixer_head=5, head_dim=8)
    mixer = build(cfg, 64, 8).layers[0].attn
    shapes = {name: tuple(p.shape) for name, p in mixer.named_parameters()}
    assert shapes == {"q_proj.weight": (40, 96), "k_proj.weight": (40, 96), "v_proj.weight": (80, 96),
                      "a_proj.weight": (5, 96), "b_proj.weight": (5, 96), "A_log": (5,), "dt_bias": (5,),
                      "q_conv1d.weight": (40, 1, 4), "k_conv1d.weight": (40, 1, 4), "v_conv1d.weight": (80, 1, 4),
                      "g_proj.weight": (80, 96), "o_norm.weight": (16,), "o_proj.weight": (96, 80)}
    step = F.softplus(mixer.dt_bias.detach())  # the initial step size, log-uniform in [1e-3, 0.1]
    assert torch.all((step > 0.99e-3) & (step < 0.101))
    assert torch.all((mixer.A_log.exp() > 0) & (mixer.A_log.exp() < 16))


# Stage 2 presets at flame's 32000-token vocabulary: the same totals (and parameter names and shapes) as
# flash-linear-attention 0.6.0's GLA/DeltaNet/GatedDeltaNetForCausalLM built from those configs.
STAGE2 = [("gla-340m", 374_475_776, 341_707_776), ("gla-1b", 1_365_514_240, 1_299_978_240),
          ("deltanet-340m", 374_362_112, 341_594_112), ("deltanet-1b", 1_365_677_056, 1_300_141_056),
          ("gated-deltanet-340m", 512_272_124, 479_504_124), ("gated-deltanet-1b", 1_387_348_732, 1_321_812_732)]


@pytest.mark.parametrize("preset, total, non_embedding", STAGE2)
def test_stage2_preset_parameter_counts(preset, total, non_embedding):
    with torch.device("meta"):
        model = build(compose([f"model={preset}"]).model, 32000, 4096)
    assert (model.num_params(), model.num_params(embeddings=False)) == (total, non_embedding)


def test_flops_per_token_counts_the_chunked_mixing_instead_of_attention():
    model = debug_model("deltanet", seq=4096)  # 2 layers, 2 heads of 32, tied head of 64 x 64
    mixing = 2 * (2 * 64 * (32 + 32) + 4 * 32 * 32 + 2 * 64 * 32 + 2 * 64 * (32 + 32) + 2 * 32 * 32)
    assert chunk_flops(2, 32, 32, 64, delta=True) == mixing
    expected = 6 * (model.num_params(embeddings=False) + 64 * 64) + 3 * 2 * mixing
    assert model.flops_per_token() == expected == model.flops_per_token(128)  # linear in T: constant per token
    assert model.flops_per_token(16) < expected  # a context shorter than a chunk has smaller chunks


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_trains_and_its_loss_falls(family):
    losses = fit_repeated_batch(debug_model(family), vocab=64, seq=32, lr=3e-3)
    # from ln 64 = 4.16 to about 0.3-0.4 on this memorisable batch; a quarter leaves a wide margin
    assert abs(losses[0] - 4.16) < 0.05 and losses[-1] < 0.25 * losses[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_train_end_to_end(family, tiny_overrides):
    summary = optbench.train([*tiny_overrides, f"model={family}-debug"])
    assert summary["status"] == "completed" and summary["steps"] == 30
    evals = {r["step"]: r["val_loss"] for r in read_metrics(summary["run_dir"]) if "val_loss" in r}
    assert list(evals) == [0, 10, 20, 30] and evals[30] == summary["final_val_loss"]
    assert evals[30] < evals[0] - 0.3  # about 4.17 -> 3.56 for GLA


needs_fla_gpu = pytest.mark.skipif(not (torch.cuda.is_available() and kernels.fla_ops() is not None),
                                   reason="needs CUDA and flash-linear-attention (pip install 'optbench[linear-attention]')")


@needs_fla_gpu
@pytest.mark.parametrize("family", FAMILIES)
def test_fla_kernels_match_our_chunked_form_on_gpu(family):
    _, _, entry = OPS[family]
    results = []
    for backend in ("fla", "torch"):
        args = op_inputs(family, 2, 200, 2, 64, 64, device="cuda")
        state = state_like(args)
        o, s = entry(*args, initial_state=state, output_final_state=True, backend=backend)
        results.append((o, s, torch.autograd.grad((o * o).sum() + s.sum(), [*args, state])))
    (o_fla, s_fla, g_fla), (o_ours, s_ours, g_ours) = results
    # fla's Triton dots may round float32 inputs through TF32 (10-bit mantissa): hence loose tolerances
    torch.testing.assert_close(o_fla, o_ours, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(s_fla, s_ours, rtol=1e-2, atol=1e-2)
    for a, b in zip(g_fla, g_ours, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


@needs_fla_gpu
@pytest.mark.parametrize("family", FAMILIES)
def test_model_with_fla_kernels_matches_ours_on_gpu(family):
    logits = []
    for kernel in ("fla", "torch"):
        cfg = compose([f"model={family}-debug", f"model.kernel={kernel}"]).model
        torch.manual_seed(0)
        model = build(cfg, 64, 128).cuda()
        idx = torch.randint(0, 64, (2, 128), generator=torch.Generator().manual_seed(0)).cuda()
        logits.append(model(idx))
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-2, atol=1e-2)
