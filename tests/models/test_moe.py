"""Mixture of experts: routing invariants, router losses, shared experts, training, optimizer routing of experts,
upcycling from a dense llama, and a run through the trainer."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import optbench
from optbench import optim
from optbench.errors import UserError
from optbench.models import Llama, LlamaConfig, MoE, MoEConfig
from optbench.models.moe_routing import (expert_capacity, expert_choice, load_balance_loss, router_entropy,
                                         token_choice, z_loss)
from optbench.optim.routing import route
from optbench.training.checkpoint import CheckpointStore
from optbench.training.rundir import read_metrics
from tests.models.fitting import fit_repeated_batch

VOCAB, SEQ = 64, 16
SHAPE = {"n_layer": 2, "n_head": 2, "n_embd": 32}


def tiny_moe(seed: int = 0, **kw) -> MoE:
    torch.manual_seed(seed)
    return MoE(MoEConfig(**{**SHAPE, "n_experts": 4, "top_k": 2, **kw}), vocab_size=VOCAB, seq_len=SEQ)


def experts_of(routing, n_experts: int) -> torch.Tensor:
    """The expert of each assignment (assignments are grouped by expert)."""
    return torch.repeat_interleave(torch.arange(n_experts), torch.tensor(routing.sizes))


# ---- token choice

def test_token_choice_sends_every_token_to_its_top_k_distinct_experts():
    logits = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    routing = token_choice(logits, top_k=3, gate_order="topk_softmax")
    experts = experts_of(routing, 6)
    assert routing.tokens.bincount(minlength=40).tolist() == [3] * 40
    for token in range(40):
        chosen = set(experts[routing.tokens == token].tolist())
        assert chosen == set(logits[token].topk(3).indices.tolist())  # 3 distinct experts, the top-3
    assert routing.load.tolist() == routing.sizes and sum(routing.sizes) == 120
    assert routing.dropped.item() == 0.0


def test_combine_weights_of_both_gate_orders():
    logits = torch.randn(40, 6, generator=torch.Generator().manual_seed(1))
    probs = logits.softmax(-1)
    renormalized = token_choice(logits, 3, "topk_softmax")
    per_token = torch.zeros(40).index_add(0, renormalized.tokens, renormalized.weights)
    torch.testing.assert_close(per_token, torch.ones(40))
    full = token_choice(logits, 3, "softmax_topk")
    experts = experts_of(full, 6)
    torch.testing.assert_close(full.weights, probs[full.tokens, experts])
    # topk_softmax is a softmax over the chosen experts' logits
    top = logits.topk(3, dim=-1)
    expected = torch.zeros(40, 6).scatter(1, top.indices, top.values.softmax(-1))
    torch.testing.assert_close(renormalized.weights, expected[renormalized.tokens, experts_of(renormalized, 6)])


# ---- expert choice

def test_expert_choice_respects_capacity():
    assert expert_capacity(n_tokens=64, n_experts=8, top_k=2, capacity_factor=1.5) == 24  # 1.5 * 64 * 2 / 8
    assert expert_capacity(n_tokens=3, n_experts=8, top_k=1, capacity_factor=1.0) == 1  # never 0
    assert expert_capacity(n_tokens=4, n_experts=2, top_k=2, capacity_factor=4.0) == 4  # never above N
    logits = torch.randn(64, 8, generator=torch.Generator().manual_seed(2))
    routing = expert_choice(logits, capacity=24, gate_order="softmax_topk")
    experts = experts_of(routing, 8)
    assert routing.sizes == [24] * 8
    for e in range(8):  # each expert takes its 24 most probable tokens, each once
        mine = routing.tokens[experts == e]
        assert set(mine.tolist()) == set(logits.softmax(-1)[:, e].topk(24).indices.tolist())


def test_expert_choice_dropped_fraction_matches_a_hand_count():
    probs = torch.tensor([[0.80, 0.10, 0.10],
                          [0.70, 0.20, 0.10],
                          [0.60, 0.30, 0.10],
                          [0.10, 0.80, 0.10],
                          [0.20, 0.10, 0.70],
                          [0.34, 0.33, 0.33]])
    # capacity 2: expert 0 takes tokens 0, 1; expert 1 tokens 3, 5; expert 2 tokens 4, 5. Token 2 is dropped.
    routing = expert_choice(probs.log(), capacity=2, gate_order="topk_softmax")
    assert routing.dropped.item() == pytest.approx(1 / 6)
    assert sorted(routing.tokens.tolist()) == [0, 1, 3, 4, 5, 5]
    # topk_softmax: token 5's two weights are its two probabilities renormalised
    weights_of_5 = routing.weights[routing.tokens == 5]
    torch.testing.assert_close(weights_of_5, torch.tensor([0.5, 0.5]))


def test_expert_choice_model_statistics():
    model = tiny_moe(routing="expert_choice", capacity_factor=0.5)
    model(torch.randint(0, VOCAB, (2, SEQ)))
    stats = model.forward_stats()
    assert stats["moe_load_max"] == stats["moe_load_min"] == 1.0  # equal by construction
    assert 0.0 < stats["moe_dropped_frac"] < 1.0  # 4 experts x 8 (0.5 * 32 * 2 / 4) slots for 32 tokens
    assert "router_load_balance" not in model.auxiliary_losses()


# ---- shared experts and router losses

def test_shared_experts_add_to_every_token():
    layer = tiny_moe(n_shared_experts=1).layers[0].mlp
    x = torch.randn(2, SEQ, 32)
    shared = layer.shared[0](x)
    assert shared.abs().sum(-1).min() > 0
    with_shared = layer(x)
    torch.nn.init.zeros_(layer.shared[0].down_proj.weight)
    torch.testing.assert_close(with_shared - layer(x), shared)


def test_load_balance_formula_on_hand_built_routers():
    uniform = torch.full((10, 4), 0.25)
    assert load_balance_loss(uniform, torch.tensor([7, 1, 2, 10])).item() == pytest.approx(1.0)
    probs = torch.tensor([[0.8, 0.2], [0.6, 0.4]])
    # both tokens to expert 0: f = (1, 0), P = (0.7, 0.3): 2 * 0.7
    assert load_balance_loss(probs, torch.tensor([2, 0])).item() == pytest.approx(1.4)
    assert z_loss(torch.zeros(5, 4)).item() == pytest.approx(math.log(4) ** 2)
    assert router_entropy(torch.zeros(5, 4)).item() == pytest.approx(math.log(4))


def test_auxiliary_losses_are_weighted_layer_means_finite_and_positive():
    model = tiny_moe(load_balance_weight=0.1, z_loss_weight=0.01, entropy_weight=0.001)
    model(torch.randint(0, VOCAB, (2, SEQ)))
    aux = model.auxiliary_losses()
    assert set(aux) == {"router_load_balance", "router_z_loss", "router_entropy"}
    assert all(torch.isfinite(v) and v > 0 for v in aux.values())
    layers = model.moe_layers()
    mean = sum(m.losses["load_balance"] for m in layers) / 2
    torch.testing.assert_close(aux["router_load_balance"], 0.1 * mean)
    assert aux["router_load_balance"] >= 0.1 - 1e-6  # the balance loss is at least 1
    stats = model.forward_stats()
    assert stats["moe_load_max"] >= 1.0 >= stats["moe_load_min"] and stats["moe_dropped_frac"] == 0.0
    assert tiny_moe(entropy_weight=0.0, z_loss_weight=0.0).auxiliary_losses() == {}  # before any forward


def test_config_checks():
    with pytest.raises(UserError, match=r"model.top_k=5 must be between 1 and model.n_experts=4"):
        MoEConfig(n_experts=4, top_k=5)
    with pytest.raises(UserError, match=r"unknown model.routing 'expert'; valid: expert_choice"):
        MoEConfig(routing="expert")
    with pytest.raises(UserError, match=r"model.moe_every=5"):
        MoEConfig(n_layer=4, moe_every=5)
    with pytest.raises(UserError, match=r"model.z_loss_weight=-1"):
        MoEConfig(z_loss_weight=-1)


def test_moe_every_and_active_flops():
    model = tiny_moe(n_layer=4, moe_every=2)
    assert [type(block.mlp).__name__ for block in model.layers] == ["MLP", "MoEFeedForward"] * 2
    expert = 3 * 32 * model.cfg.ffn_dim
    dense_count = 6 * (model.num_params(False) + VOCAB * 32) + 12 * 4 * 32 * SEQ
    assert model.flops_per_token() == dense_count - 6 * 2 * expert * 2  # 2 idle experts in 2 MoE layers


# ---- training

@pytest.mark.parametrize("routing", ["token_choice", "expert_choice"])
def test_loss_falls_on_a_fixed_batch(routing):
    losses = fit_repeated_batch(tiny_moe(routing=routing, n_shared_experts=1), VOCAB, SEQ)
    assert abs(losses[0] - math.log(VOCAB)) < 0.3
    assert losses[-1] < 0.3 * losses[0]


def test_every_expert_matrix_is_its_own_matrix_for_muon():
    model = tiny_moe()
    roles = {r.name: r.role for r in route(model, optim.make_config("muon"))}
    expert_weights = [name for name in roles if ".experts." in name or ".router." in name]
    assert len(expert_weights) == 2 * (4 * 3 + 1)
    assert all(roles[name] == "matrix" for name in expert_weights)

    def step(expert1_grad_scale: float) -> torch.Tensor:
        m = copy.deepcopy(model)
        torch.manual_seed(1)
        for p in m.parameters():
            p.grad = torch.randn_like(p)
        m.layers[0].mlp.experts[1].up_proj.weight.grad *= expert1_grad_scale
        optim.create("muon", m, lr=0.02).step()
        return m.layers[0].mlp.experts[0].up_proj.weight.detach().clone()

    before = model.layers[0].mlp.experts[0].up_proj.weight
    assert not torch.equal(step(1.0), before)
    assert torch.equal(step(1.0), step(-7.0))


# ---- upcycling

def dense_llama(seed: int = 3, **kw) -> Llama:
    torch.manual_seed(seed)
    return Llama(LlamaConfig(**{**SHAPE, **kw}), vocab_size=VOCAB, seq_len=SEQ)


def save_dense(model: Llama, folder) -> None:
    CheckpointStore(folder / "checkpoints").save(7, {"model": model.state_dict(), "step": 7})


def test_upcycled_moe_computes_the_dense_model(tmp_path):
    dense = dense_llama()
    save_dense(dense, tmp_path / "dense")
    moe = tiny_moe(upcycle_from=str(tmp_path / "dense"), gate_order="topk_softmax")
    router = moe.layers[1].mlp.router.weight.detach().clone()
    moe.load_initial_weights()
    torch.testing.assert_close(moe.layers[1].mlp.router.weight, router)  # left at its fresh init
    for expert in moe.layers[1].mlp.experts:
        assert torch.equal(expert.down_proj.weight, dense.layers[1].mlp.down_proj.weight)
    idx = torch.randint(0, VOCAB, (2, SEQ))
    torch.testing.assert_close(moe(idx), dense(idx), atol=1e-5, rtol=0)
    from_file = tiny_moe(upcycle_from=str(tmp_path / "dense" / "checkpoints" / "step-00000007.pt"))
    from_file.load_initial_weights()
    torch.testing.assert_close(from_file(idx), dense(idx), atol=1e-5, rtol=0)


@pytest.mark.parametrize("dense_kw, moe_kw, message", [
    ({"n_embd": 64}, {}, r"has n_embd=64, this model.n_embd=32"),
    ({"n_layer": 3}, {}, r"has 3 layers, this model.n_layer=2"),
    ({"qk_norm": True}, {}, r"has layers.0.attn.k_norm.weight, which this model lacks"),
    ({}, {"expert_hidden": 64}, r"layers.0.mlp.gate_proj.weight is \(256, 32\) there, \(64, 32\) here"),
    ({"tie_embeddings": False}, {}, r"untied head"),
])
def test_upcycling_from_a_mismatched_dense_model_is_a_user_error(tmp_path, dense_kw, moe_kw, message):
    save_dense(dense_llama(**dense_kw), tmp_path)
    with pytest.raises(UserError, match=message):
        tiny_moe(upcycle_from=str(tmp_path), **moe_kw).load_initial_weights()


def test_upcycling_from_a_missing_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"neither a run directory nor a checkpoint file"):
        tiny_moe(upcycle_from=str(tmp_path / "nowhere")).load_initial_weights()
    with pytest.raises(UserError, match=r"holds no usable checkpoint"):
        tiny_moe(upcycle_from=str(tmp_path)).load_initial_weights()


# ---- end to end

def test_training_run_logs_router_losses_and_load(tmp_path, tiny_overrides):
    summary = optbench.train(["model=moe-debug", *tiny_overrides, "train.steps=5"])
    assert summary["status"] == "completed"
    train = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert train and all({"router_load_balance", "router_z_loss", "moe_load_max", "moe_load_min",
                          "moe_dropped_frac"} <= set(r) for r in train)
    assert train[-1]["moe_load_max"] >= 1.0 and train[-1]["moe_dropped_frac"] == 0.0
