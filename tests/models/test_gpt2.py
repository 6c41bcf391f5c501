"""GPT-2 specifics: nanoGPT parameter names, tying, biases, init and dropout."""

from __future__ import annotations

import math

import torch

from optbench.models import GPT2, GPT2Config


def tiny(seed: int = 0, **kw) -> GPT2:
    torch.manual_seed(seed)
    return GPT2(GPT2Config(**{"n_layer": 2, "n_head": 2, "n_embd": 64, **kw}), vocab_size=128, seq_len=16)


def test_parameter_names_follow_nanogpt():
    names = {name for name, _ in tiny().named_parameters()}
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias",
            "transformer.h.0.ln_1.weight", "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.bias",
            "transformer.h.0.attn.c_proj.weight", "transformer.h.1.ln_2.bias", "transformer.h.1.mlp.c_fc.weight",
            "transformer.h.1.mlp.c_proj.weight"} <= names
    assert "lm_head.weight" in tiny().state_dict()  # tied: listed once by named_parameters, kept in the state dict


def test_head_is_tied_to_token_embeddings():
    model = tiny()
    assert model.lm_head.weight is model.transformer.wte.weight
    model(torch.randint(0, 128, (1, 8))).sum().backward()
    assert model.transformer.wte.weight.grad is not None  # one tensor collects both uses' gradients


def test_counts_match_the_formula():
    d, layers, vocab, seq = 64, 2, 128, 16
    # per block: c_attn 3d^2+3d, c_proj d^2+d, c_fc 4d^2+4d, mlp c_proj 4d^2+d, two LayerNorms 4d; ln_f 2d
    non_embedding = layers * (12 * d * d + 13 * d) + 2 * d
    model = tiny()
    assert model.num_params(embeddings=False) == non_embedding
    assert model.num_params() == non_embedding + vocab * d + seq * d


def test_no_bias_variant_has_no_biases():
    model = tiny(bias=False)
    assert not [name for name, _ in model.named_parameters() if name.endswith("bias")]
    assert model.num_params(embeddings=False) == 2 * (12 * 64 * 64 + 2 * 64) + 64


def test_init_scales_residual_projections():
    torch.manual_seed(0)
    layers = 4
    model = GPT2(GPT2Config(n_layer=layers, n_head=4, n_embd=256), vocab_size=512, seq_len=32)
    residual_std = 0.02 / math.sqrt(2 * layers)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            assert abs(p.std().item() / residual_std - 1) < 0.03, name
        elif name.endswith(("c_attn.weight", "c_fc.weight", "wte.weight", "wpe.weight")):
            assert abs(p.std().item() / 0.02 - 1) < 0.03, name
        elif name.endswith("bias"):
            assert torch.all(p == 0), name
        else:
            assert torch.all(p == 1), name  # LayerNorm gains


def test_dropout_only_in_training_mode():
    model = tiny(dropout=0.5)
    idx = torch.randint(0, 128, (2, 16))
    assert not torch.equal(model(idx), model(idx))
    model.eval()
    assert torch.equal(model(idx), model(idx))
