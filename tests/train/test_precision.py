"""Mixed precision on CPU: train.dtype=bfloat16 and float16 autocast the forward pass (fp16 through the
GradScaler), keep float32 weights, learn, and log a first loss close to a float32 run's. train.dtype=float64, the
verification precision, keeps everything in float64."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from optbench.config.compose import compose
from optbench.errors import UserError
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


def float32_representable(x: float) -> bool:
    return torch.tensor(x, dtype=torch.float32).item() == x


def test_float64_is_float64_end_to_end(tmp_path, tiny_overrides):
    """Parameters, gradients, optimizer state, checkpoints and the logged losses in float64, and the model's
    forward computed in float64 throughout: a central difference of the loss in one weight (the first RMSNorm gain)
    meets the backward pass's derivative to ~1e-9, which one float32 rounding anywhere in the forward (1e-7 of the
    loss, divided by the step 1e-5) would miss by orders of magnitude."""
    overrides = [*tiny_overrides, *FAST, "model=llama-debug", "optim=adamw", "train.steps=2"]
    trainer = Trainer(compose([*overrides, "train.dtype=float64", f"run.dir={tmp_path / 'run'}"]))
    summary = trainer.train()
    assert summary["status"] == "completed"
    model = trainer.model
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    state = [t for s in trainer.optimizer.state.values() for t in s.values() if t.is_floating_point() and t.dim()]
    assert state and {t.dtype for t in state} == {torch.float64}
    path, saved = CheckpointStore(tmp_path / "run" / "checkpoints").latest()
    assert {t.dtype for t in saved["model"].values()} == {torch.float64}
    with pytest.raises(UserError, match=r"^train.dtype=float32 trains float32 weights, but .* holds float64 weights; "
                                        r"valid to resume it: train.dtype=float64$"):
        Trainer(compose([*overrides, "train.dtype=float32", f"run.resume={path}", f"run.dir={tmp_path / 'other'}"]))
    assert not (tmp_path / "other").exists()
    logged = [r["loss"] for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert len(logged) == 2 and not any(map(float32_representable, [*logged, summary["final_val_loss"]]))

    loss, _ = trainer.train_step(2)  # leaves the step's gradients in place
    assert not float32_representable(loss)
    assert {p.grad.dtype for p in model.parameters()} == {torch.float64}

    x, y = trainer.batches.batch(0, 0)
    gain = model.get_parameter("layers.0.attn_norm.weight")

    def loss_at(value: float) -> torch.Tensor:
        gain.data[0] = value
        logits = model(x)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))

    w, h = gain.data[0].item(), 1e-5
    gain.grad = None
    loss_at(w).backward()
    with torch.no_grad():
        difference = (loss_at(w + h) - loss_at(w - h)).item() / (2 * h)
    gain.data[0] = w
    assert difference == pytest.approx(gain.grad[0].item(), rel=1e-7, abs=1e-10)


def test_float64_refuses_flash_linear_attention_kernels_in_one_line(tmp_path, tiny_overrides):
    with pytest.raises(UserError, match=r"^model.kernel=fla: flash-linear-attention's kernels have no float64 "
                                        r"\(train.dtype=float64\); valid with float64: model.kernel=auto, torch$"):
        Trainer(compose([*tiny_overrides, "model=gla-debug", "model.kernel=fla", "train.dtype=float64"]))
    assert not (tmp_path / "run").exists()
