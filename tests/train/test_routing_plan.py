"""A real run of a matrix optimizer: the saved optimizer and routing.json agree, and the backup's weight decay is
`optim.backup.weight_decay` whatever `optim.weight_decay` is (a Muon sweep over the latter must not switch it)."""

import pytest

import optbench
from optbench.training.checkpoint import CheckpointStore
from optbench.training.rundir import read_json

UNTIED_LLAMA = ["model=llama", "model.tie_embeddings=false", "train.steps=4", "eval.every=0", "run.log_every=2"]


def saved_decays(run) -> dict[str, float]:
    """parameter name -> weight decay of its group in the last checkpoint's optimizer state (both hybrid parts)."""
    state = CheckpointStore(run / "checkpoints").latest()[1]["optimizer"]
    parts = state["parts"].values() if "parts" in state else [state]
    return {name: group["weight_decay"] for part in parts for group in part["param_groups"] for name in group["names"]}


def role_decays(rows: list[dict], decays: dict[str, float]) -> dict[str, set[float]]:
    """role -> the weight decays its parameters got, checking each row against the saved optimizer on the way."""
    by_role: dict[str, set[float]] = {}
    for row in rows:
        assert decays[row["name"]] == row["weight_decay"], row
        by_role.setdefault(row["role"], set()).add(row["weight_decay"])
    return by_role


@pytest.mark.parametrize("name", ["muon", "dmuon", "rmnp"])
@pytest.mark.parametrize("main, backup", [(0.0, 0.1), (0.1, 0.0)])
def test_backup_decay_reaches_the_saved_optimizer_and_routing_json(tmp_path, tiny_overrides, name, main, backup):
    summary = optbench.train([*tiny_overrides, *UNTIED_LLAMA, f"optim={name}", f"optim.weight_decay={main}",
                              f"optim.backup.weight_decay={backup}"])
    assert summary["status"] == "completed"
    run = tmp_path / "run"
    rows = read_json(run / "routing.json")
    assert {row["optimizer"] for row in rows if row["role"] != "matrix"} == {"adamw"}
    assert role_decays(rows, saved_decays(run)) == {"embedding": {backup}, "head": {backup}, "vector": {0.0},
                                                    "matrix": {main}}
