"""Mixed precision on CPU: train.dtype=bfloat16 and float16 autocast the forward pass (fp16 through the
GradScaler), keep float32 weights, learn, and log a first loss close to a float32 run's."""

from __future__ import annotations

import math

import pytest
import torch

from optbench.config.compose import compose
from optbench.training.checkpoint import CheckpointStore
from optbench.training.rundir import read_metrics
from optbench.training.trainer import Trainer

FAST = ["model.n_layer=1", "train.steps=8", "schedule.warmup_steps=2", "eval.every=0", "eval.batches=1",
        "eval.sample_tokens=0", "run.log_every=1"]


def run(tmp_path, tiny_overrides, dtype: str) -> dict:
    """Train with train.dtype=`dtype`, recording the dtype of the logits and what the GradScaler multiplied."""
    trainer = Trainer(compose([*tiny_overrides, *FAST, f"train.dtype={dtype}", f"run.dir={tmp_path / dtype}"]))
    logits_dtypes, scale_factors = set(), []
    forward, scale = trainer.forward, trainer.scaler.scale

    def recording_forward(x):
        logits = forward(x)
        logits_dtypes.add(logits.dtype)
        return logits

    def recording_scale(loss):
        scaled = scale(loss)
        scale_factors.append((scaled / loss).item())
        return scaled

    trainer.forward, trainer.scaler.scale = recording_forward, recording_scale
    summary = trainer.train()
    train = [r for r in read_metrics(tmp_path / dtype) if "loss" in r]
    weights = CheckpointStore(tmp_path / dtype / "checkpoints").latest()[1]["model"]
    return {"summary": summary, "train": train, "logits": logits_dtypes, "scales": scale_factors,
            "scaler": trainer.scaler, "params": {p.dtype for p in trainer.model.parameters()},
            "saved": {t.dtype for t in weights.values() if t.is_floating_point()}}


@pytest.fixture
def fp32(tmp_path, tiny_overrides):
    return run(tmp_path, tiny_overrides, "float32")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_autocast_on_cpu_trains_close_to_float32(tmp_path, tiny_overrides, fp32, dtype):
    low = run(tmp_path, tiny_overrides, dtype)
    assert low["summary"]["status"] == "completed" and low["summary"]["steps"] == 8
    assert low["logits"] == {getattr(torch, dtype)} and fp32["logits"] == {torch.float32}  # autocast was on
    assert low["params"] == low["saved"] == {torch.float32}  # master weights and checkpoints stay float32

    losses = [r["loss"] for r in low["train"]]
    assert [r["step"] for r in low["train"]] == list(range(1, 9))
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0] - 0.05, losses
    assert math.isfinite(low["summary"]["final_val_loss"])
    first, reference = low["train"][0], fp32["train"][0]
    assert first["loss"] == pytest.approx(reference["loss"], rel=1e-2)
    assert first["loss"] != reference["loss"]  # really computed in lower precision
    # The logged gradient norm is of unscaled gradients (fp16's GradScaler unscales before clipping).
    assert first["grad_norm"] == pytest.approx(reference["grad_norm"], rel=5e-2)

    if dtype == "float16":
        assert low["scaler"].is_enabled() and low["scaler"].get_scale() >= 1.0
        assert len(low["scales"]) == 8 and all(f >= 1024 for f in low["scales"])  # the loss was scaled up
    else:
        assert not low["scaler"].is_enabled() and set(low["scales"]) == {1.0}
    assert not fp32["scaler"].is_enabled()
