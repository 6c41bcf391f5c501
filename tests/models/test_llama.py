"""Llama specifics: names, rotary embeddings, SwiGLU width, GQA, qk-norm, tied and untied heads, init."""

from __future__ import annotations

import math

import pytest
import torch

from optbench.errors import UserError
from optbench.models import Llama, LlamaConfig
from optbench.models.layers import RotaryEmbedding

VOCAB, SEQ = 128, 16


def tiny(seed: int = 0, **kw) -> Llama:
    torch.manual_seed(seed)
    return Llama(LlamaConfig(**{"n_layer": 2, "n_head": 4, "n_embd": 64, **kw}), vocab_size=VOCAB, seq_len=SEQ)


def test_parameter_names_and_no_biases():
    names = {name for name, _ in tiny(qk_norm=True).named_parameters()}
    per_layer = ["attn_norm", "attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "attn.q_norm",
                 "attn.k_norm", "mlp_norm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    layers = {f"layers.{i}.{part}.weight" for i in range(2) for part in per_layer}
    assert names == {"tok_embeddings.weight", "norm.weight"} | layers  # output.weight is tok_embeddings.weight
    assert not any(name.endswith("bias") for name in names)


def test_rotary_tables_are_sized_to_seq_len_and_not_saved():
    model = tiny()
    assert model.rope.cos.shape == (SEQ, 8)
    assert not any("rope" in key for key in model.state_dict())


def test_rotary_embedding_encodes_relative_position():
    rope = RotaryEmbedding(head_dim=8, max_len=12)
    q, k = torch.randn(8), torch.randn(8)
    rq, rk = rope(q.expand(1, 1, 12, 8)), rope(k.expand(1, 1, 12, 8))
    scores = rq[0, 0] @ rk[0, 0].T  # scores[m, n] = <R_m q, R_n k> depends on m - n only
    for shift in (1, 5):
        torch.testing.assert_close(scores[shift:, shift:], scores[:-shift, :-shift])
    torch.testing.assert_close(rq.norm(dim=-1), q.norm().expand(1, 1, 12))  # a rotation
    torch.testing.assert_close(rq[0, 0, 0], q)  # position 0 is not rotated


@pytest.mark.parametrize("n_embd, ffn_hidden, expected", [
    (768, None, 2048),   # int(8/3 * 768) = 2048, already a multiple of 256
    (512, None, 1536),   # 1365 rounded up
    (2048, None, 5632),  # 5461 rounded up: EPFL's 720M
    (512, 1376, 1376),   # explicit width (GaLore 60M) is kept as is
])
def test_swiglu_width(n_embd, ffn_hidden, expected):
    cfg = LlamaConfig(n_head=8, n_embd=n_embd, ffn_hidden=ffn_hidden)
    assert cfg.ffn_dim == expected


def test_tied_and_untied_heads():
    tied, untied = tiny(), tiny(tie_embeddings=False)
    assert tied.output.weight is tied.tok_embeddings.weight
    assert untied.output.weight is not untied.tok_embeddings.weight
    head = VOCAB * 64
    assert untied.num_params() - tied.num_params() == head
    # the untied head is a matrix like any other, so it is a non-embedding parameter ...
    assert untied.num_params(embeddings=False) - tied.num_params(embeddings=False) == head
    # ... and both heads cost the same FLOPs
    assert untied.flops_per_token() == tied.flops_per_token()
    per_block = 4 * 64 * 64 + 3 * 64 * 256 + 2 * 64
    assert tied.num_params(embeddings=False) == 2 * per_block + 64


def test_grouped_query_attention_equals_attention_with_repeated_kv_heads():
    gqa = tiny(n_kv_head=2)
    assert gqa.layers[0].attn.k_proj.weight.shape == (2 * 16, 64)
    mha = tiny()
    state = gqa.state_dict()
    for key, value in state.items():
        if key.endswith(("k_proj.weight", "v_proj.weight")):  # each kv head serves 2 consecutive q heads
            state[key] = value.view(2, 16, 64).repeat_interleave(2, dim=0).reshape(64, 64)
    mha.load_state_dict(state)
    idx = torch.randint(0, VOCAB, (2, SEQ))
    torch.testing.assert_close(gqa(idx), mha(idx))
    assert gqa.num_params() == mha.num_params() - 2 * 2 * (64 * 64 - 32 * 64)


def test_qk_norm_makes_logits_invariant_to_query_key_scale():
    idx = torch.randint(0, VOCAB, (2, SEQ))
    for qk_norm, invariant in ((True, True), (False, False)):
        model = tiny(qk_norm=qk_norm)
        before = model(idx)
        with torch.no_grad():
            for layer in model.layers:
                layer.attn.q_proj.weight.mul_(10)
                layer.attn.k_proj.weight.mul_(10)
        assert torch.allclose(before, model(idx), atol=1e-4) == invariant


def test_init_scales_residual_projections():
    torch.manual_seed(0)
    layers = 4
    model = Llama(LlamaConfig(n_layer=layers, n_head=4, n_embd=256, tie_embeddings=False), vocab_size=512, seq_len=8)
    residual_std = 0.02 / math.sqrt(2 * layers)
    for name, p in model.named_parameters():
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            assert abs(p.std().item() / residual_std - 1) < 0.03, name
        elif name.endswith("norm.weight"):
            assert torch.all(p == 1), name
        else:
            assert abs(p.std().item() / 0.02 - 1) < 0.03, name


@pytest.mark.parametrize("kw, message", [
    ({"n_head": 4, "n_kv_head": 3}, "must be positive and divide model.n_head=4"),
    ({"n_head": 4, "n_kv_head": 0}, "n_kv_head=0"),
    ({"n_head": 4, "n_embd": 12}, "must be even"),
    ({"ffn_hidden": 0}, "ffn_hidden=0"),
    ({"n_embd": 30, "n_head": 4}, "divisible"),
])
def test_config_errors_are_user_errors(kw, message):
    with pytest.raises(UserError, match=message):
        LlamaConfig(**kw)
