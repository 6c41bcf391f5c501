"""The Polynomial Mixer (`model.mixer=pom`): the paper's formula, causality, counts, training, errors, a full run."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import yaml

import optbench
from optbench.config.compose import compose
from optbench.errors import UserError
from optbench.models import GPT2, GPT2Config
from optbench.models.gpt2 import CausalSelfAttention
from optbench.models.pom import PolynomialMixer
from optbench.training.rundir import read_metrics
from tests.models.fitting import fit_repeated_batch

VOCAB, SEQ = 128, 16


def pom_model(seed: int = 0, **kw) -> GPT2:
    torch.manual_seed(seed)
    cfg = GPT2Config(**{"n_layer": 2, "n_head": 2, "n_embd": 64, "mixer": "pom", **kw})
    return GPT2(cfg, vocab_size=VOCAB, seq_len=SEQ)


def pom_by_hand(mixer: PolynomialMixer, x: torch.Tensor, degree: int) -> torch.Tensor:
    """PoM(X)_t = W_o [sigmoid(W_s x_t) * 1/(t+1) sum_{s<=t} H(x_s)], H(x) = [h_1; h_1 h_2; ...; h_1...h_k] with
    h_m = gelu(W_m x): one position and one monomial at a time, straight from the paper."""
    w, b = mixer.po_proj.weight.chunk(degree), mixer.po_proj.bias.chunk(degree)  # W_1..W_k and their biases
    out = torch.empty_like(x)
    for i in range(x.size(0)):
        for t in range(x.size(1)):
            lifts = []
            for s in range(t + 1):
                h = [F.gelu(w[m] @ x[i, s] + b[m]) for m in range(degree)]
                lifts.append(torch.cat([math.prod(h[:j + 1]) for j in range(degree)]))
            state = sum(lifts) / (t + 1)
            gate = torch.sigmoid(mixer.se_proj.weight @ x[i, t] + mixer.se_proj.bias)
            out[i, t] = mixer.c_proj.weight @ (gate * state) + mixer.c_proj.bias
    return out


@pytest.mark.parametrize("degree, expand", [(1, 3), (2, 2), (3, 2)])
def test_equals_the_papers_formula_written_out(degree, expand):
    torch.manual_seed(0)
    mixer = PolynomialMixer(dim=8, degree=degree, expand=expand)  # torch's default init: O(1) activations
    x = torch.randn(2, 7, 8)
    assert mixer.po_proj.out_features == mixer.se_proj.out_features == degree * expand * 8
    torch.testing.assert_close(mixer(x), pom_by_hand(mixer, x, degree), rtol=1e-5, atol=1e-5)


def test_mixer_is_causal():
    torch.manual_seed(0)
    mixer = PolynomialMixer(dim=8, degree=2, expand=2)
    x = torch.randn(2, 10, 8)
    changed = x.clone()
    changed[:, 6:] = torch.randn(2, 4, 8)
    a, b = mixer(x), mixer(changed)
    assert torch.equal(a[:, :6], b[:, :6])  # bit for bit: the cumulative sum up to t never reads t+1..
    assert (a[:, 6:] - b[:, 6:]).abs().min() > 0


def test_model_is_causal():
    model = pom_model().eval()
    idx = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0))
    changed = idx.clone()
    changed[:, 10] = (idx[:, 10] + 1) % VOCAB
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_parameters_counts_and_init():
    d, state = 64, 2 * 2 * 64
    model = pom_model()
    names = {name for name, _ in model.named_parameters()}
    mixer = {f"transformer.h.1.attn.{p}.{w}" for p in ("po_proj", "se_proj", "c_proj") for w in ("weight", "bias")}
    assert mixer <= names
    assert not any("c_attn" in name for name in names)
    # per block: po_proj and se_proj d x 4d + 4d each, c_proj 4d x d + d, MLP 8 d^2 + 5 d, two LayerNorms 4 d
    per_block = 2 * (d * state + state) + state * d + d + 8 * d * d + 5 * d + 4 * d
    assert model.num_params(embeddings=False) == 2 * per_block + 2 * d
    c_proj = model.transformer.h[0].attn.c_proj.weight
    assert abs(c_proj.std().item() / (0.02 / math.sqrt(2 * 2)) - 1) < 0.05  # scaled as a residual branch


def test_flops_have_no_context_term_for_pom_blocks():
    model = pom_model()
    head = VOCAB * 64  # the tied head multiplies every token
    assert model.flops_per_token() == 6 * (model.num_params(embeddings=False) + head)
    assert model.flops_per_token(4) == model.flops_per_token(4096)


def test_flops_are_counted_per_block():
    class Hybrid(GPT2):
        """Attention in layer 0, PoM after it."""

        def make_mixer(self, cfg, layer):
            return CausalSelfAttention(cfg) if layer == 0 else super().make_mixer(cfg, layer)

    torch.manual_seed(0)
    model = Hybrid(GPT2Config(n_layer=3, n_head=2, n_embd=64, mixer="pom"), vocab_size=VOCAB, seq_len=SEQ)
    head = VOCAB * 64
    assert model.flops_per_token() == 6 * (model.num_params(embeddings=False) + head) + 12 * 1 * 64 * SEQ


def test_trains_on_a_fixed_batch():
    losses = fit_repeated_batch(pom_model(), VOCAB, SEQ)
    assert abs(losses[0] - math.log(VOCAB)) < 0.3  # small init: near-uniform logits
    assert losses[-1] < 0.1 * losses[0]  # 4.86 -> 0.01 here


def test_unknown_mixer_is_a_one_line_user_error():
    with pytest.raises(UserError) as err:
        compose(["model=gpt2", "model.mixer=mamba"])
    assert str(err.value) == "unknown model.mixer 'mamba'; valid: attention, pom"
    with pytest.raises(UserError, match="model.pom_degree=0"):
        GPT2Config(mixer="pom", pom_degree=0)


def test_train_end_to_end(tmp_path, tiny_overrides):
    summary = optbench.train(["model=gpt2-pom-debug", *tiny_overrides])
    assert summary["status"] == "completed" and summary["steps"] == 30
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"]["mixer"] == "pom"
    val = [r["val_loss"] for r in read_metrics(tmp_path / "run") if "val_loss" in r]
    assert summary["final_val_loss"] == val[-1] < val[0] - 0.3  # 4.18 -> 3.59 here
