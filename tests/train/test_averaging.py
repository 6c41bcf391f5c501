"""Weight averaging: EMA and uniform averages are evaluated beside the model and survive resume."""

import copy

import pytest
import torch

import optbench
from optbench.config.schema import TrainConfig
from optbench.training.averaging import WeightAverage
from optbench.training.rundir import read_json, read_metrics
from tests.optim.harness import tiny_lm


@pytest.mark.parametrize("kind", ["ema", "uniform"])
def test_average_matches_its_definition(kind):
    model = tiny_lm()
    avg = WeightAverage(model, TrainConfig(weight_avg=kind, weight_avg_decay=0.9, weight_avg_start=1))
    history = []
    for step in range(1, 5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * step)
        history.append(copy.deepcopy(model.state_dict()))
        avg.update(model, step)
    key = "transformer.h.0.attn.c_attn.weight"
    seen = [h[key] for h in history]
    if kind == "uniform":
        expected = sum(seen) / len(seen)
    else:  # the first update copies, later ones blend with decay 0.9
        expected = seen[0]
        for w in seen[1:]:
            expected = 0.9 * expected + 0.1 * w
    torch.testing.assert_close(avg.module.state_dict()[key], expected)


def test_trainer_logs_averaged_metrics_and_writes_routing(tmp_path, tiny_overrides):
    optbench.train([*tiny_overrides, "train.weight_avg=ema", "train.weight_avg_decay=0.9"])
    evals = [r for r in read_metrics(tmp_path / "run") if "val_loss" in r]
    assert all({"val_loss_avg", "val_ppl_avg", "val_acc_avg"} <= set(r) for r in evals)
    assert evals[-1]["val_loss_avg"] != evals[-1]["val_loss"]
    routing = read_json(tmp_path / "run" / "routing.json")
    assert {row["role"] for row in routing} == {"embedding", "vector", "matrix"}
