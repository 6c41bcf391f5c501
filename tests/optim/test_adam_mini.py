"""Adam-mini against the authors' package (adam-mini==1.1.1) on both model families, and its partition."""

import warnings

import pytest
import torch
from torch import nn

from optbench import optim
from optbench.models import LlamaConfig, build
from optbench.optim.memory import state_bytes
from tests.optim.harness import SEQ, VOCAB, compare_with_reference, lm_batches, tiny_lm, train

HP = dict(lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
N_EMBD = 32


def _reference(named, n_head, n_kv_head=None):
    from adam_mini import Adam_mini

    return Adam_mini(named, lr=HP["lr"], betas=(HP["beta1"], HP["beta2"]), eps=HP["eps"],
                     weight_decay=HP["weight_decay"], dim=N_EMBD, n_heads=n_head, n_kv_heads=n_kv_head, verbose=False)


class GPT2Reference:
    """adam_mini.Adam_mini on a GPT-2 under the names it knows: the fused c_attn as q_proj / k_proj / v_proj
    (parameters sharing c_attn's storage, fed its gradient's slices), attn.c_proj as o_proj and wpe as an
    embedding. Everything else (wte, mlp, ln_*, biases) it recognises by its own rules."""

    def __init__(self, model: nn.Module, n_head: int) -> None:
        named, self.slices = [], []
        for name, p in model.named_parameters():
            if name.endswith("attn.c_attn.weight"):
                d = p.shape[1]
                for i, part in enumerate(("q_proj", "k_proj", "v_proj")):
                    view = nn.Parameter(p.data[i * d:(i + 1) * d])  # shares c_attn's storage
                    self.slices.append((view, p, i * d, (i + 1) * d))
                    named.append((name.replace("c_attn", part), view))
                continue
            named.append((name.replace("attn.c_proj", "attn.o_proj").replace("wpe", "wpe_embd"), p))
        self.opt = _reference(named, n_head)

    def step(self) -> None:
        for view, fused, a, b in self.slices:
            view.grad = fused.grad[a:b]
        self.opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for view, fused, _, _ in self.slices:
            view.grad = fused.grad = None
        self.opt.zero_grad(set_to_none=set_to_none)


def test_matches_adam_mini_package_on_gpt2():
    result = compare_with_reference(lambda m: optim.create("adam-mini", m, n_head=2, **HP),
                                    lambda m: GPT2Reference(m, n_head=2))
    assert result.steps == 20 and len(result.moved) == 28  # c_attn compared as one tensor, fed from three views


def tiny_llama(seed: int = 0, qk_norm: bool = False) -> nn.Module:
    """2 layers, 4 query heads sharing 2 key/value heads (GQA), an untied output head."""
    torch.manual_seed(seed)
    return build(LlamaConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=N_EMBD, ffn_hidden=64, tie_embeddings=False,
                             qk_norm=qk_norm), VOCAB, SEQ)


def test_matches_adam_mini_package_on_llama_with_gqa():
    # Llama's names (tok_embeddings, q/k/v/o_proj, mlp.*, *norm, output) are the package's own, but for
    # `mlp_norm`, whose "mlp" would send a norm gain down its per-neuron path (an IndexError): call it ffn_norm.
    def reference(model):
        return _reference([(n.replace("mlp_norm", "ffn_norm"), p) for n, p in model.named_parameters()], 4, 2)

    result = compare_with_reference(lambda m: optim.create("adam-mini", m, n_head=4, **HP), reference,
                                    model_fn=tiny_llama)
    assert result.steps == 20 and len(result.moved) == len(list(tiny_llama().parameters()))


def test_head_width_is_read_off_qk_norm_gains():
    model = tiny_llama(qk_norm=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = optim.create("adam-mini", model)  # n_head None: qk-norm gains are 8 = 32 / 4 wide
    train(model, opt, lm_batches(1))
    blocks = {n: opt.state[p]["v_mean"].numel() for n, p in model.named_parameters()}
    assert blocks["layers.0.attn.q_proj.weight"] == 4 and blocks["layers.0.attn.k_proj.weight"] == 2


def test_partition_of_gpt2():
    model = tiny_lm()
    opt = optim.create("adam-mini", model, n_head=2)
    train(model, opt, lm_batches(1))
    blocks = {n: opt.state[p]["v_mean"].numel() for n, p in model.named_parameters()}
    assert blocks["transformer.wte.weight"] == VOCAB  # per token (the tied head too)
    assert blocks["transformer.wpe.weight"] == SEQ
    assert blocks["transformer.h.0.attn.c_attn.weight"] == 2 + 2 + 32  # q, k per head; v per neuron
    assert blocks["transformer.h.0.attn.c_proj.weight"] == 32
    assert blocks["transformer.h.0.mlp.c_fc.weight"] == 128 and blocks["transformer.h.0.mlp.c_proj.weight"] == 32
    assert blocks["transformer.h.0.ln_1.weight"] == 1  # one per norm gain
    assert blocks["transformer.h.0.ln_1.bias"] == 32 and blocks["transformer.h.0.attn.c_attn.bias"] == 96  # AdamW
    # State: m (4 bytes per parameter) plus a few scalars; AdamW would hold 8 bytes per parameter.
    per_param = state_bytes(opt) / sum(p.numel() for p in model.parameters())
    assert 4.0 < per_param < 4.2


def test_head_count_defaults_to_the_models_own():
    model, explicit = tiny_lm(), tiny_lm()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = optim.create("adam-mini", model)
    opt_explicit = optim.create("adam-mini", explicit, n_head=explicit.cfg.n_head)
    train(model, opt, lm_batches(1))
    train(explicit, opt_explicit, lm_batches(1))
    blocks = lambda m, o: o.state[m.transformer.h[0].attn.c_attn.weight]["v_mean"].numel()  # noqa: E731
    assert blocks(model, opt) == blocks(explicit, opt_explicit) == 2 + 2 + 32  # q, k per head; v per neuron


def test_without_head_count_q_and_k_fall_back_to_neurons_with_a_warning():
    model = tiny_lm()
    model.cfg = None  # a model optbench did not build: no config to read the head count from
    with pytest.warns(UserWarning, match="optim.n_head"):
        opt = optim.create("adam-mini", model)
    train(model, opt, lm_batches(1))
    assert opt.state[model.transformer.h[0].attn.c_attn.weight]["v_mean"].numel() == 96


def test_head_count_must_divide_the_width():
    from optbench.errors import UserError

    with pytest.raises(UserError, match="optim.n_head=3"):
        optim.create("adam-mini", tiny_lm(), n_head=3)
