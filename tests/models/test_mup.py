"""muP (optbench/models/mup.py): equal to SP at the base width, the coordinate check across widths, per-group lr
through routing, muLO on a muP model, and a run end to end."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import optbench
from optbench import optim
from optbench.errors import UserError
from optbench.models import GPT2, MODELS, GPT2Config, Llama, LlamaConfig, build
from optbench.models.mup import attention_scale
from optbench.optim.algorithms.mulo import write_random_weights
from optbench.optim.routing import route

FAMILIES = {"gpt2": (GPT2Config, GPT2, {}),
            "llama": (LlamaConfig, Llama, {"multiple_of": 16})}  # SwiGLU width 8/3 d, not rounded to 256
VOCAB, SEQ = 256, 16


def make(family: str, width: int, seed: int = 0, **kw):
    cfg_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(seed)
    return model_cls(cfg_cls(**{"n_layer": 2, "n_head": 2, "n_embd": width, **extra, **kw}), VOCAB, SEQ)


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (8, SEQ), generator=g), torch.randint(0, VOCAB, (8, SEQ), generator=g)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_at_the_base_width_mup_is_sp_exactly(name):
    """Every family (those built on gpt2 and llama inherit the rules): same weights for one seed, same logits."""
    x, _ = batch()
    models = []
    for mup in (False, True):
        torch.manual_seed(0)
        models.append(build(MODELS[name].config_cls(n_layer=2, n_head=2, n_embd=64, mup=mup, mup_base_width=64),
                            VOCAB, SEQ))
    sp, mu = models
    assert sp.state_dict().keys() == mu.state_dict().keys()
    assert all(torch.equal(sp.state_dict()[k], mu.state_dict()[k]) for k in sp.state_dict())
    assert torch.equal(sp(x), mu(x))
    assert set(mu.lr_multipliers().values()) == {1.0} and sp.lr_multipliers() == {}


def test_the_rules_scale_with_the_width_multiplier():
    sp, mu = make("llama", 256, tie_embeddings=False), make("llama", 256, tie_embeddings=False, mup=True,
                                                            mup_base_width=64)  # m = 4, same draws
    weights = dict(mu.named_parameters())
    for name, p in sp.named_parameters():
        hidden = p.dim() == 2 and name not in ("tok_embeddings.weight", "output.weight")
        assert torch.allclose(weights[name], p / 2 if hidden else p), name  # init std / sqrt(m)
    assert mu.lr_multipliers() == {n: 0.25 for n, p in sp.named_parameters()
                                   if p.dim() == 2 and n not in ("tok_embeddings.weight", "output.weight")}
    x, _ = batch()
    hidden = {}
    mu.norm.register_forward_hook(lambda m, i, out: hidden.setdefault("final", out))
    assert torch.allclose(mu(x), F.linear(hidden["final"] / 4, mu.output.weight), atol=1e-6)  # logits / m
    cfg = LlamaConfig(n_head=2, n_embd=256, mup=True, mup_base_width=64)  # head dim 128, base head dim 32
    assert attention_scale(cfg, 128) == pytest.approx(32 ** 0.5 / 128)
    assert attention_scale(LlamaConfig(n_embd=256, mup_base_head_dim=128), 128) == 1 / 128 ** 0.5


WIDTHS = (64, 128, 256, 512)
HEAD_DIM = 16


def coordinates(family: str, width: int, mup: bool, steps: int = 3, lr: float = 1e-2) -> list[dict[str, float]]:
    """Mean |activation| of each block's output, the final norm's output (the readout's input) and the logits on
    a fixed batch, at init and after `steps` AdamW steps on it (lr the same at every width; muP's per-group lr
    comes from routing). Depth 2; heads grow with width so the head dim stays 16."""
    model = make(family, width, n_head=width // HEAD_DIM, mup=mup, mup_base_width=WIDTHS[0],
                 mup_base_head_dim=HEAD_DIM)
    x, y = batch()
    seen: dict[str, float] = {}
    for i, block in enumerate(model.blocks()):
        block.register_forward_hook(lambda m, i_, out, key=f"block{i}": seen.__setitem__(key, out.abs().mean().item()))
    final_norm = model.transformer.ln_f if family == "gpt2" else model.norm
    final_norm.register_forward_hook(lambda m, i_, out: seen.__setitem__("final", out.abs().mean().item()))

    def measure() -> dict[str, float]:
        with torch.no_grad():
            seen["logits"] = model(x).abs().mean().item()
        return dict(seen)

    at_init = measure()
    opt = optim.create("adamw", model, lr=lr, weight_decay=0.0)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
        opt.step()
    return [at_init, measure()]


@pytest.mark.parametrize("family", FAMILIES)
def test_coordinate_check(family):
    """The standard muP test (Yang et al. 2022's coordinate check; mup/coord_check.py): from width 64 to 512, no
    activation grows under muP at init or after 3 Adam steps, while SP's logits grow more than 3x (measured:
    gpt2 19x, llama 6.4x; muP at most 1.01x), so the test fails if muP is off."""
    growth = {}
    for mup in (True, False):
        runs = {w: coordinates(family, w, mup) for w in (WIDTHS[0], WIDTHS[-1])}
        growth[mup] = [{k: big[k] / small[k] for k in small} for small, big in zip(runs[WIDTHS[0]], runs[WIDTHS[-1]])]
    mu_init, mu_steps = growth[True]
    assert set(mu_steps) == {"block0", "block1", "final", "logits"}
    assert all(g < 2.0 for g in mu_init.values()), mu_init
    assert all(g < 2.0 for g in mu_steps.values()), mu_steps
    assert mu_steps["logits"] > 0.5, "muP's logits should still move at width 512 (maximal update, not vanishing)"
    sp_steps = growth[False][1]
    assert sp_steps["logits"] > 3.0 and sp_steps["block1"] > 3.0, sp_steps


def test_widths_in_between_stay_flat_too():
    logits = [coordinates("gpt2", w, mup=True)[1]["logits"] for w in WIDTHS]
    assert max(logits) / min(logits) < 1.5, logits


def test_routing_gives_hidden_matrices_lr_over_m_and_embeddings_lr():
    model = make("gpt2", 128, mup=True, mup_base_width=32)  # m = 4
    routed = {r.name: r for r in route(model, optim.make_config("adamw", lr=1e-3, weight_decay=0.1))}
    assert routed["transformer.h.0.attn.c_attn.weight"].lr_mult == 0.25
    assert routed["transformer.h.0.attn.c_attn.weight"].weight_decay == pytest.approx(0.4)  # lr * wd unchanged
    assert routed["transformer.wte.weight"].lr_mult is None  # the tied table: embedding lr
    assert routed["transformer.h.0.ln_1.weight"].lr_mult is None
    opt = optim.create("adamw", model, lr=1e-3, weight_decay=0.1)
    lrs = {name: group["lr"] for group in opt.param_groups for name in group["names"]}
    assert lrs["transformer.h.1.mlp.c_proj.weight"] == pytest.approx(2.5e-4)
    assert lrs["transformer.wte.weight"] == lrs["transformer.wpe.weight"] == lrs["transformer.h.0.attn.c_attn.bias"] \
        == 1e-3
    matrix = [g for g in opt.param_groups if g["role"] == "matrix"]
    assert len(matrix) == 1 and matrix[0]["lr_mult"] == 0.25 and matrix[0]["weight_decay"] == pytest.approx(0.4)
    untied = make("llama", 128, tie_embeddings=False, mup=True, mup_base_width=32)
    head = next(g for g in optim.create("adamw", untied, lr=1e-3).param_groups if g["role"] == "head")
    assert head["lr"] == 1e-3 and "lr_mult" not in head  # the readout's 1/m is a forward multiplier, not an lr


def test_sp_models_keep_one_group_per_role():
    opt = optim.create("adamw", make("gpt2", 64), lr=1e-3)
    assert [g["role"] for g in opt.param_groups] == ["embedding", "vector", "matrix"]
    assert all(g["lr"] == 1e-3 and "lr_mult" not in g for g in opt.param_groups)


def test_mulo_uses_the_models_width_multiplier_instead_of_fan_in(tmp_path):
    """At m = 1 a muP model is the SP model, so one muLO step from the same state differs only in the width rule:
    SP divides a hidden matrix's step by fan_in / optim.base_width, muP by the model's m = 1."""
    weights = str(write_random_weights(tmp_path / "mulo"))
    x, y = batch()
    deltas = []
    for mup in (False, True):
        model = make("gpt2", 32, mup=mup, mup_base_width=32)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt = optim.create("mulo", model, lr=1.0, weights=weights)
        F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
        opt.step()
        deltas.append({n: p.detach() - before[n] for n, p in model.named_parameters()})
    sp, mu = deltas
    hidden = make("gpt2", 32, mup=True, mup_base_width=32).lr_multipliers()
    for name, p in make("gpt2", 32).named_parameters():
        fan_in = p.shape[1] if name in hidden else 1
        assert sp[name].abs().sum() > 0, name
        # up to float32 rounding of p + step - p, which fan_in magnifies for SP's small steps
        torch.testing.assert_close(mu[name], sp[name] * fan_in, rtol=0, atol=1e-3 * mu[name].abs().max().item())


def test_config_errors_are_user_errors():
    with pytest.raises(UserError, match="mup_base_width=0"):
        GPT2Config(mup_base_width=0)
    with pytest.raises(UserError, match="mup_base_head_dim=-1"):
        LlamaConfig(mup_base_head_dim=-1)


def test_train_end_to_end(tmp_path, tiny_overrides):
    summary = optbench.train([*tiny_overrides, "model=gpt2", "model.mup=true", "model.mup_base_width=16",
                              "optim.lr=3e-3"])
    assert summary["status"] == "completed"
    run = tmp_path / "run"
    rows = {row["name"]: row for row in json.loads((run / "routing.json").read_text())}
    assert rows["transformer.h.0.mlp.c_fc.weight"]["weight_decay"] == pytest.approx(0.2)  # AdamW's 0.1 times m = 2
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in evals if "val_loss" in r]
    assert val[-1] < val[0] - 0.4, val  # measured: 4.16 -> 3.57
