"""Parallel blocks (`model.parallel_block=true`, as in GPT-J and PaLM): x + mixer(norm(x)) + mlp(norm(x)) over one
norm, in gpt2 (with either mixer) and llama."""

from __future__ import annotations

import math

import pytest
import torch

from optbench.models import GPT2, GPT2Config, Llama, LlamaConfig
from optbench.models.layers import CausalLM
from tests.models.fitting import fit_repeated_batch

VOCAB, SEQ, WIDTH, LAYERS = 128, 16, 64, 2
CASES = {"gpt2": ("gpt2", {}), "gpt2-pom": ("gpt2", {"mixer": "pom"}), "llama": ("llama", {})}


def tiny(case: str, parallel: bool, seed: int = 0) -> CausalLM:
    family, extra = CASES[case]
    torch.manual_seed(seed)
    if family == "llama":
        cfg = LlamaConfig(n_layer=LAYERS, n_head=4, n_embd=WIDTH, parallel_block=parallel, **extra)
        return Llama(cfg, vocab_size=VOCAB, seq_len=SEQ)
    cfg = GPT2Config(n_layer=LAYERS, n_head=2, n_embd=WIDTH, parallel_block=parallel, **extra)
    return GPT2(cfg, vocab_size=VOCAB, seq_len=SEQ)


def block_and_parts(model: CausalLM):
    """Block 0 as (call, norm, mixer, mlp) with each family's calling convention (llama passes the rotary table)."""
    if isinstance(model, Llama):
        block = model.layers[0]
        return (lambda x: block(x, model.rope)), block.attn_norm, (lambda h: block.attn(h, model.rope)), block.mlp
    block = model.transformer.h[0]
    return block, block.ln_1, block.attn, block.mlp


@pytest.mark.parametrize("case", CASES)
def test_block_computes_x_plus_mixer_plus_mlp_of_one_norm(case):
    model = tiny(case, parallel=True)
    for p in model.blocks()[0].parameters():  # O(1) weights, so that parallel and sequential visibly differ
        torch.nn.init.normal_(p, std=0.3)
    call, norm, mixer, mlp = block_and_parts(model)
    x = torch.randn(2, SEQ, WIDTH, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = call(x)
        torch.testing.assert_close(out, x + mixer(norm(x)) + mlp(norm(x)))
        after_mixer = x + mixer(norm(x))
        sequential = after_mixer + mlp(norm(after_mixer))  # what a block would compute without the option
    assert (out - sequential).abs().max() > 0.1


@pytest.mark.parametrize("case", CASES)
def test_no_second_norm(case):
    parallel, sequential = tiny(case, parallel=True), tiny(case, parallel=False)
    second_norm = "mlp_norm" if case == "llama" else "ln_2"
    assert all(getattr(block, second_norm) is None for block in parallel.blocks())
    assert not any(second_norm in name for name, _ in parallel.named_parameters())
    assert any(second_norm in name for name, _ in sequential.named_parameters())
    norm_params = WIDTH if case == "llama" else 2 * WIDTH  # RMSNorm gain; LayerNorm gain and bias
    assert sequential.num_params() - parallel.num_params() == LAYERS * norm_params


@pytest.mark.parametrize("case", CASES)
def test_parallel_model_fits_a_repeated_batch(case):
    losses = fit_repeated_batch(tiny(case, parallel=True), VOCAB, SEQ)
    assert abs(losses[0] - math.log(VOCAB)) < 0.3  # small init: near-uniform logits
    assert losses[-1] < 0.1 * losses[0]
