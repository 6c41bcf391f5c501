"""The rules behind train.parallel=fsdp that need no processes: how each optimizer runs (shards, owner ranks, or a
one-line refusal), who owns each whole tensor, and which rows each rank holds. The runs themselves are in
tests/reliability/test_fsdp_owners.py."""

from dataclasses import dataclass

import pytest
import torch

from optbench import optim
from optbench.config.compose import compose
from optbench.config.schema import OptimConfig
from optbench.errors import UserError
from optbench.optim import registry
from optbench.optim.registry import FSDP_MODES
from optbench.training import fsdp_optimizer
from optbench.training.owners import assign_owners, update_cost
from optbench.training.shard_exchange import shard_rows


@pytest.mark.parametrize("name", optim.names())
def test_every_optimizer_runs_under_fsdp_or_says_in_one_line_why_not(name):
    caps = optim.get(name).capabilities
    assert caps.fsdp in FSDP_MODES
    if caps.fsdp == "refused":
        assert caps.fsdp_refusal and "\n" not in caps.fsdp_refusal


@dataclass
class ElementwiseConfig(OptimConfig):
    name: str = "test-elementwise"


def test_an_undeclared_mode_is_refused_at_registration(monkeypatch):
    monkeypatch.setattr(registry, "OPTIMIZERS", dict(registry.OPTIMIZERS))  # registrations go to a copy
    spec = optim.OptimizerSpec(name="test-elementwise", config_cls=ElementwiseConfig, source="test", reference="test",
                               build=lambda groups, cfg: torch.optim.SGD(groups, lr=cfg.lr),
                               capabilities=optim.Capabilities(fsdp="elementwise"))
    with pytest.raises(ValueError, match="fsdp='elementwise'"):
        registry.register(spec)


def test_a_cautious_mask_needs_whole_tensors():
    assert optim.fsdp_mode(optim.make_config("adamw")) == "shards"
    assert optim.fsdp_mode(optim.make_config("adamw", cautious=True)) == "owner"
    assert optim.fsdp_mode(optim.make_config("c-lion")) == "owner"


def test_a_refused_optimizer_is_one_user_error_naming_the_valid_ones():
    with pytest.raises(UserError) as refused:
        fsdp_optimizer.check(compose(["optim=velo"]))
    message = str(refused.value)
    assert message.startswith("optim=velo cannot run under train.parallel=fsdp: its LSTM reads summaries")
    assert "valid with fsdp: " in message and "muon" in message and "velo," not in message and "\n" not in message


def test_float16_is_refused_where_owners_gather_gradients_the_scaler_does_not_see():
    with pytest.raises(UserError, match="train.dtype=float16"):
        fsdp_optimizer.check(compose(["optim=muon", "train.dtype=float16"]))
    fsdp_optimizer.check(compose(["optim=adamw", "train.dtype=float16"]))  # elementwise: the scaler sees it all


def test_rows_per_rank_are_torch_chunks():
    for rows, world in [(5, 2), (2, 4), (13, 4), (64, 4), (1, 2)]:
        chunks = [len(c) for c in torch.arange(rows).chunk(world)]
        assert shard_rows(rows, world) == tuple(chunks + [0] * (world - len(chunks)))


def test_update_cost_is_matmul_flops_per_matrix():
    assert update_cost((7,)) == 7
    assert update_cost((64, 256)) == 64 * 256 * 64
    assert update_cost((4, 256, 64)) == 4 * 256 * 64 * 64


def test_owners_balance_cost_over_ranks():
    # A Llama's matrices: per layer four 64x64 attention maps and three 64x172 MLP maps, plus an embedding.
    shapes = [(64, 64)] * 4 * 4 + [(172, 64), (172, 64), (64, 172)] * 4 + [(1000, 64)]
    for world in (1, 2, 3, 4):
        owners = assign_owners(shapes, world)
        loads = [sum(update_cost(s) for s, o in zip(shapes, owners) if o == rank) for rank in range(world)]
        best = max(sum(loads) / world, max(update_cost(s) for s in shapes))  # no split does better
        assert sorted(set(owners)) == list(range(world)) and max(loads) <= 4 / 3 * best
        assert assign_owners(shapes, world) == owners  # every rank computes the same owners
