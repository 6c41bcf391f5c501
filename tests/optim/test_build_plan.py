"""One build plan: the optimizer and the routing table come from the same routing decision, and a matrix
optimizer's backup decays by its own `optim.backup.weight_decay`, whatever the main optimizer's decay is."""

import dataclasses

import pytest
import torch

from optbench import optim
from optbench.models import LlamaConfig, build
from optbench.optim.registry import build_for, make_config, plan
from optbench.optim.routing import route
from tests.optim.harness import tiny_lm

MATRIX_ONLY = [n for n in optim.names() if optim.get(n).capabilities.matrix_only]


def untied_llama() -> torch.nn.Module:
    torch.manual_seed(0)
    return build(LlamaConfig(n_layer=1, n_head=2, n_embd=32, tie_embeddings=False), 64, 16)


def with_decays(name: str, main: float, backup: float, **backup_hparams):
    """`optim=NAME optim.weight_decay=MAIN optim.backup.weight_decay=BACKUP`."""
    cfg = make_config(name, weight_decay=main)
    return dataclasses.replace(cfg, backup=dataclasses.replace(cfg.backup, weight_decay=backup, **backup_hparams))


def table_decay(rows: list[dict]) -> dict[str, float]:
    """role -> the one weight decay the routing table gives its parameters."""
    by_role: dict[str, set[float]] = {}
    for row in rows:
        by_role.setdefault(row["role"], set()).add(row["weight_decay"])
    assert all(len(values) == 1 for values in by_role.values()), by_role
    return {role: values.pop() for role, values in by_role.items()}


def group_decay(opt: torch.optim.Optimizer) -> dict[str, float]:
    """role -> the one weight decay the built optimizer's param groups give it."""
    by_role: dict[str, set[float]] = {}
    for group in opt.param_groups:
        by_role.setdefault(group["role"], set()).add(group["weight_decay"])
    assert all(len(values) == 1 for values in by_role.values()), by_role
    return {role: values.pop() for role, values in by_role.items()}


def test_matrix_optimizers_are_the_expected_ones():
    """scion takes embeddings and head itself (its own norms per role): not matrix-only."""
    assert {"muon", "dmuon", "rmnp"} <= set(MATRIX_ONLY) and "scion" not in MATRIX_ONLY


@pytest.mark.parametrize("main, backup, expected", [
    (0.0, 0.1, {"embedding": 0.1, "head": 0.1, "vector": 0.0, "matrix": 0.0}),
    (0.1, 0.0, {"embedding": 0.0, "head": 0.0, "vector": 0.0, "matrix": 0.1}),
], ids=["main-0-backup-0.1", "main-0.1-backup-0"])
@pytest.mark.parametrize("name", MATRIX_ONLY)
def test_the_backup_decays_by_its_own_weight_decay(name, main, backup, expected):
    """Whatever the main optimizer's decay is (Muon's search space tunes it over {0, 0.01, 0.1})."""
    model = untied_llama()
    cfg = with_decays(name, main=main, backup=backup)
    assert table_decay(optim.routing_table(optim.plan(cfg, model))) == expected
    assert group_decay(optim.build(cfg, model)) == expected


@pytest.mark.parametrize("name", ["muon", "dmuon", "rmnp"])
def test_backup_parameters_follow_the_backups_decay_embeddings(name):
    """`decay_embeddings` is read from the optimizer that takes the embeddings: the backup's, not the main one's."""
    model = untied_llama()
    cfg = dataclasses.replace(with_decays(name, main=0.0, backup=0.1, decay_embeddings=False), decay_embeddings=True)
    rows = {row["role"]: row for row in optim.routing_table(optim.plan(cfg, model))}
    assert (rows["embedding"]["decays"], rows["embedding"]["weight_decay"]) == (False, 0.0)
    assert (rows["head"]["decays"], rows["head"]["weight_decay"]) == (True, 0.1)
    assert group_decay(optim.build(cfg, model))["embedding"] == 0.0


@pytest.mark.parametrize("name", ["adamw", "sgd", "scion", "muon", "dmuon", "rmnp"])
def test_the_table_is_what_was_built(name):
    """Each parameter's row names the optimizer part that holds it and the decay its group has."""
    model = untied_llama()
    cfg = with_decays(name, main=0.05, backup=0.02) if name in MATRIX_ONLY else make_config(name, weight_decay=0.05)
    routed = plan(cfg, model)
    opt = optim.build(cfg, model, routed)
    parts = getattr(opt, "parts", {"main": opt})
    held = {}
    for part_name, part in parts.items():
        for group in part.param_groups:
            for param_name in group["names"]:
                held[param_name] = (part_name, group["weight_decay"])
    for row in optim.routing_table(routed):
        part_name, decay = held[row["name"]]
        assert row["weight_decay"] == decay, row
        assert row["optimizer"] == (cfg.name if part_name in ("main", "matrix") else cfg.backup.name), row
        assert row["decays"] == (decay > 0), row


def test_the_plan_given_is_the_plan_built():
    """build(cfg, model, plan) does not route again: a plan whose entries say otherwise is built as it says."""
    model = tiny_lm()
    cfg = make_config("adamw", weight_decay=0.1)
    routed = [dataclasses.replace(r, weight_decay=0.3) if r.role == "embedding" else r for r in plan(cfg, model)]
    assert group_decay(optim.build(cfg, model, routed))["embedding"] == 0.3


def test_a_matrix_optimizer_refuses_a_plan_without_its_backup():
    model = tiny_lm()
    cfg = make_config("muon")
    with pytest.raises(ValueError, match="takes only matrices"):
        build_for(cfg, route(model, cfg))


def test_rows_say_whether_each_parameter_decays():
    routed = optim.plan(make_config("adamw", weight_decay=0.1), untied_llama())
    rows = {row["role"]: row for row in optim.routing_table(routed)}
    assert {role: row["decays"] for role, row in rows.items()} == {
        "embedding": True, "head": True, "vector": False, "matrix": True}
