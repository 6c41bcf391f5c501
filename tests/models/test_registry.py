"""The registry, the YAML presets, and a conformance suite every registered model family must pass."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from optbench.config.schema import ModelConfig
from optbench.errors import UserError
from optbench.models import MODELS, GPT2Config, LlamaConfig, build, config_classes, model_vocab_size
from optbench.models.registry import register
from tests.models.fitting import fit_repeated_batch

PRESETS = Path(__file__).parents[2] / "optbench" / "configs" / "model"


def load_preset(name: str) -> ModelConfig:
    """A preset as the Hydra composer will give it: the family's schema merged with the YAML."""
    raw = OmegaConf.load(PRESETS / f"{name}.yaml")
    family = raw.pop("defaults")[0]
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(config_classes()[family]), raw))


# (preset, dataset vocabulary, seq_len, total parameters, non-embedding parameters)
PUBLISHED = [
    # GPT-2 with the unpadded 50257 vocabulary and 1024 positions: HF gpt2, gpt2-medium, gpt2-large
    # (nanoGPT's from_pretrained checks these). Non-embedding = Kaplan's N, e.g. 85M for GPT-2 small.
    ("gpt2-124m", 50257, 1024, 124_439_808, 85_056_000),
    ("gpt2-355m", 50257, 1024, 354_823_168, 302_311_424),
    ("gpt2-774m", 50257, 1024, 774_030_080, 708_390_400),
    # GaLore's HF LlamaForCausalLM configs at vocab 32000, untied head: sum of the HF module shapes,
    # 2 V d + L (4 d^2 + 3 d f + 2 d) + d; the well-known 58M / 134M / 368M / 1.34B of that paper.
    ("llama-60m", 32000, 1024, 58_073_600, 41_689_600),
    ("llama-130m", 32000, 1024, 134_105_856, 109_529_856),
    ("llama-350m", 32000, 1024, 367_969_280, 335_201_280),
    ("llama-1b", 32000, 1024, 1_339_082_752, 1_273_546_752),
    # flame's Transformer++ (Scaling-for-Scaling Stage 2), the same sum with f = 2816 / 5632; equal to HF
    # LlamaForCausalLM(hidden 1024 / 2048, intermediate 2816 / 5632, 24 layers, vocab 32000, untied) counted on meta.
    ("transformer-340m", 32000, 4096, 373_867_520, 341_099_520),
    ("transformer-1b", 32000, 4096, 1_364_297_728, 1_298_761_728),
    # EPFL llm-baselines Llama, GPT-2 tokenizer padded 50257 -> 50304, tied: V d + L (4 d^2 + 3 d f + 2 d) + d
    # with f = 2048 (d = 768) or 5632 (d = 2048). 124M matches "123.59M" in epfml/llm-optimizer-benchmark's README.
    ("llama-124m", 50257, 512, 123_587_328, 84_953_856),
    ("llama-210m", 50257, 512, 208_540_416, 169_906_944),
    ("llama-720m", 50257, 512, 719_636_480, 616_613_888),
]


@pytest.mark.parametrize("preset, vocab, seq_len, total, non_embedding", PUBLISHED)
def test_preset_parameter_counts(preset, vocab, seq_len, total, non_embedding):
    cfg = load_preset(preset)
    if preset.startswith("gpt2"):
        cfg.vocab_size = vocab  # the published GPT-2 checkpoints do not pad their vocabulary
    with torch.device("meta"):
        model = build(cfg, vocab, seq_len)
    assert (model.num_params(), model.num_params(embeddings=False)) == (total, non_embedding)


def test_every_family_has_a_debug_preset_and_all_presets_load():
    names = {p.stem for p in PRESETS.glob("*.yaml")}
    assert {f"{family}-debug" for family in MODELS} <= names
    for name in names:
        assert isinstance(load_preset(name), tuple(config_classes().values()))


def test_registry_contents_and_config_classes():
    assert {"gpt2", "llama", "moe", "gla", "deltanet", "gated-deltanet"} <= set(MODELS)
    assert config_classes()["gpt2"] is GPT2Config and config_classes()["llama"] is LlamaConfig
    assert config_classes() == {name: spec.config_cls for name, spec in MODELS.items()}
    assert all(spec.description and spec.config_cls.name == name for name, spec in MODELS.items())


def test_register_rejects_duplicates_and_mismatched_config_names():
    with pytest.raises(ValueError, match="already registered"):
        register("gpt2", GPT2Config, "again")(torch.nn.Module)
    with pytest.raises(ValueError, match="expected 'llama'"):
        register("llama", GPT2Config, "wrong config")


def test_unknown_model_names_close_choices():
    with pytest.raises(UserError, match=r"unknown model 'lama'; valid: llama"):
        build(ModelConfig(name="lama"), 100, 16)


def test_config_of_another_family_is_a_bug_not_a_user_error():
    with pytest.raises(TypeError, match="LlamaConfig"):
        build(GPT2Config(name="llama"), 100, 16)


def test_vocab_padding_rule():
    assert model_vocab_size(GPT2Config(), 50257) == 50304  # nanoGPT's padding to a multiple of 64
    assert model_vocab_size(GPT2Config(), 50304) == 50304
    assert model_vocab_size(GPT2Config(pad_vocab_multiple=1), 50257) == 50257
    assert model_vocab_size(LlamaConfig(pad_vocab_multiple=128), 32001) == 32128
    assert model_vocab_size(GPT2Config(vocab_size=50257), 50257) == 50257  # explicit: no padding
    assert model_vocab_size(GPT2Config(vocab_size=60000), 50257) == 60000
    with pytest.raises(UserError, match="smaller than the dataset's vocabulary"):
        model_vocab_size(GPT2Config(vocab_size=50000), 50257)
    with pytest.raises(UserError, match="pad_vocab_multiple"):
        model_vocab_size(GPT2Config(pad_vocab_multiple=0), 50257)
    assert build(load_preset("gpt2-debug"), 50257, 8).lm_head.weight.shape == (50304, 64)


# ---- conformance: every registered family, in its debug flavor ----

VOCAB, SEQ = 96, 16  # a dataset vocabulary of 96 is padded to 128


def debug_model(family: str, seed: int = 0, **overrides):
    cfg = load_preset(f"{family}-debug")
    for key, value in overrides.items():
        setattr(cfg, key, value)
    torch.manual_seed(seed)
    return build(cfg, VOCAB, SEQ)


@pytest.fixture(params=sorted(MODELS))
def family(request):
    return request.param


def test_forward_shape(family):
    logits = debug_model(family)(torch.randint(0, VOCAB, (3, SEQ)))
    assert logits.shape == (3, SEQ, 128) and logits.dtype == torch.float32


def test_longer_than_built_context_is_rejected(family):
    with pytest.raises(ValueError, match="seq_len=16"):
        debug_model(family)(torch.zeros(1, SEQ + 1, dtype=torch.long))


def test_causal(family):
    model = debug_model(family).eval()
    idx = torch.randint(0, VOCAB, (2, SEQ))
    changed = idx.clone()
    changed[:, 10] = (idx[:, 10] + 1) % VOCAB
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_same_seed_same_init(family):
    a, b, c = debug_model(family, seed=1), debug_model(family, seed=1), debug_model(family, seed=2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


@pytest.mark.parametrize("dense", ["gpt2", "llama"])
def test_flops_per_token_is_6n_plus_attention(dense):
    """Dense softmax-attention families; MoE (active experts only) and the attention-free mixers check their
    own counts in their test files."""
    model = debug_model(dense)
    cfg, d = model.cfg, model.cfg.n_embd
    head = 128 * d  # the tied head multiplies every token although it is not a non-embedding parameter
    assert model.flops_per_token() == 6 * (model.num_params(False) + head) + 12 * cfg.n_layer * d * SEQ
    assert model.flops_per_token(4) < model.flops_per_token()


def test_generate_is_deterministic_given_the_generator(family):
    model = debug_model(family, dropout=0.1).train()
    prompt = torch.randint(0, VOCAB, (2, 5))

    def sample(seed, **kw):
        return model.generate(prompt, 30, generator=torch.Generator().manual_seed(seed), **kw)

    out = sample(0)
    assert out.shape == (2, 35) and torch.equal(out[:, :5], prompt)
    assert torch.equal(out, sample(0)) and not torch.equal(out, sample(1))
    assert torch.equal(sample(3, temperature=0.7, top_k=5), sample(3, temperature=0.7, top_k=5))
    assert model.training  # generate evaluates without dropout and restores the mode


def test_generate_crops_the_context_to_seq_len(family):
    model = debug_model(family)
    prompt = torch.randint(0, VOCAB, (1, SEQ + 7))
    full = model.generate(prompt, 4, generator=torch.Generator().manual_seed(0))
    cropped = model.generate(prompt[:, -SEQ:], 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(full[:, -4:], cropped[:, -4:])


def test_top_k_one_is_greedy(family):
    model = debug_model(family).eval()
    prompt = torch.randint(0, VOCAB, (2, 4))
    out = model.generate(prompt, 1, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, -1], model(prompt)[:, -1].argmax(-1))


def test_adamw_fits_a_repeated_batch(family):
    losses = fit_repeated_batch(debug_model(family), VOCAB, SEQ, steps=25)
    assert abs(losses[0] - torch.log(torch.tensor(128.0)).item()) < 0.3  # small init: near-uniform logits
    assert losses[-1] < 0.5 * losses[0]
