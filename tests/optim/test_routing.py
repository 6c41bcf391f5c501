"""Parameter routing: roles, weight decay by role, matrix optimizers with a backup, tied weights."""

import pytest
import torch

from optbench import optim
from optbench.models import LlamaConfig, build
from optbench.optim.hybrid import HybridOptimizer
from optbench.optim.registry import make_config
from optbench.optim.routing import groups_by_role, route
from tests.optim.harness import lm_batches, through_disk, tiny_lm, train


def roles(model, **hparams):
    return {r.name: (r.role, r.weight_decay) for r in route(model, make_config("adamw", **hparams))}


BLOCK_ROLES = {  # one GPT-2 block: norms and biases are vectors, the four Linear weights matrices
    "ln_1.weight": "vector", "ln_1.bias": "vector", "attn.c_attn.weight": "matrix", "attn.c_attn.bias": "vector",
    "attn.c_proj.weight": "matrix", "attn.c_proj.bias": "vector", "ln_2.weight": "vector", "ln_2.bias": "vector",
    "mlp.c_fc.weight": "matrix", "mlp.c_fc.bias": "vector", "mlp.c_proj.weight": "matrix", "mlp.c_proj.bias": "vector",
}


def gpt2_table(wd: float, embedding_wd: float) -> dict[str, tuple[str, float]]:
    """tiny_lm's every parameter, in order, with its role and weight decay: lm_head is tied to wte, so listed once
    (as the embedding); matrices decay, vectors never."""
    table = {f"transformer.{name}.weight": ("embedding", embedding_wd) for name in ("wte", "wpe")}
    for i in range(2):
        table.update({f"transformer.h.{i}.{name}": (role, wd if role == "matrix" else 0.0)
                      for name, role in BLOCK_ROLES.items()})
    table.update({"transformer.ln_f.weight": ("vector", 0.0), "transformer.ln_f.bias": ("vector", 0.0)})
    return table


def test_gpt2_roles_and_weight_decay():
    table = roles(tiny_lm(), weight_decay=0.1)
    assert list(table.items()) == list(gpt2_table(0.1, 0.1).items())


def test_embeddings_decay_is_configurable():
    assert roles(tiny_lm(), weight_decay=0.1, decay_embeddings=False) == gpt2_table(0.1, 0.0)


def test_groups_come_one_per_role_in_a_fixed_order():
    """tests/optim/harness.py's reference_groups relies on this order (Prodigy's d sums over groups in it)."""
    groups = groups_by_role(route(tiny_lm(), make_config("adamw", weight_decay=0.1)))
    table = gpt2_table(0.1, 0.1)
    assert [(g["role"], g["weight_decay"]) for g in groups] == [("embedding", 0.1), ("vector", 0.0), ("matrix", 0.1)]
    for g in groups:
        assert g["names"] == [name for name, (role, _) in table.items() if role == g["role"]]


def test_untied_llama_head_is_its_own_role():
    torch.manual_seed(0)
    model = build(LlamaConfig(n_layer=1, n_head=2, n_embd=32, tie_embeddings=False), 64, 16)
    expected = {"tok_embeddings.weight": ("embedding", 0.1), "layers.0.attn_norm.weight": ("vector", 0.0),
                **{f"layers.0.attn.{x}_proj.weight": ("matrix", 0.1) for x in "qkvo"},
                "layers.0.mlp_norm.weight": ("vector", 0.0),
                **{f"layers.0.mlp.{x}_proj.weight": ("matrix", 0.1) for x in ("gate", "up", "down")},
                "norm.weight": ("vector", 0.0), "output.weight": ("head", 0.1)}
    assert roles(model, weight_decay=0.1) == expected


def test_every_parameter_is_routed_exactly_once():
    model = tiny_lm()
    routed = route(model, make_config("adamw"))
    assert sorted(id(r.param) for r in routed) == sorted(id(p) for p in model.parameters())


def test_routing_table_rows_name_the_optimizer_of_each_parameter():
    rows = optim.routing_table(optim.plan(make_config("sgd"), tiny_lm()))
    assert {row["optimizer"] for row in rows} == {"sgd"}
    assert all(set(row) == {"name", "shape", "role", "optimizer", "decays", "weight_decay", "lr_mult"} for row in rows)
    assert {row["lr_mult"] for row in rows} == {1.0}  # a standard-parametrised model declares no multipliers


class TestHybrid:
    def make(self, model):
        matrices = [p for n, p in model.named_parameters() if p.dim() == 2 and "wte" not in n and "wpe" not in n]
        rest = [p for n, p in model.named_parameters() if not any(p is m for m in matrices)]
        return HybridOptimizer({"matrix": torch.optim.SGD(matrices, lr=0.1, momentum=0.9),
                                "backup": torch.optim.AdamW(rest, lr=1e-3)})

    def test_steps_both_parts_and_shares_their_groups(self):
        model = tiny_lm()
        opt = self.make(model)
        assert opt.param_groups[0] is opt.parts["matrix"].param_groups[0]
        before = [p.detach().clone() for p in model.parameters()]
        train(model, opt, lm_batches(2))
        assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))

    def test_state_dict_round_trip_restores_both_parts(self):
        batches = lm_batches(6)
        model = tiny_lm()
        opt = self.make(model)
        train(model, opt, batches[:3])
        saved_model, saved_opt = through_disk(model.state_dict()), through_disk(opt.state_dict())
        train(model, opt, batches[3:])
        again = tiny_lm(seed=3)
        again.load_state_dict(saved_model)
        again_opt = self.make(again)
        again_opt.load_state_dict(saved_opt)
        assert again_opt.param_groups[0] is again_opt.parts["matrix"].param_groups[0]
        train(again, again_opt, batches[3:])
        assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))

    def test_schedule_changes_reach_the_inner_optimizers(self):
        opt = self.make(tiny_lm())
        for group in opt.param_groups:
            group["lr"] = 0.5
        assert opt.parts["backup"].param_groups[0]["lr"] == 0.5


@pytest.mark.parametrize("name", [n for n in optim.names() if optim.get(n).capabilities.matrix_only])
def test_matrix_optimizers_send_everything_but_hidden_matrices_to_the_backup(name):
    rows = optim.routing_table(optim.plan(make_config(name), tiny_lm()))
    for row in rows:
        assert (row["optimizer"] == name) == (row["role"] == "matrix"), row


def test_depthwise_convolution_filters_are_vectors_not_matrices():
    """A (channels, 1, width) short-conv kernel is per-channel filters: Muon must not orthogonalise it."""
    model = torch.nn.Sequential(torch.nn.Conv1d(8, 8, 4, groups=8, bias=False), torch.nn.Conv1d(8, 8, 3, bias=False),
                                torch.nn.Linear(8, 8, bias=False))
    roles = {r.name: r.role for r in route(model, make_config("muon"))}
    assert roles == {"0.weight": "vector", "1.weight": "matrix", "2.weight": "matrix"}
