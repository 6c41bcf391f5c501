"""End to end on CPU: the run directory contract, learning, determinism and resume."""

import json
import math

import pytest
import torch

import optbench
from optbench.training.rundir import read_metrics
from optbench.training.checkpoint import CheckpointStore
from tests.train.resume import assert_interrupted_run_resumes_exactly

TRAIN_KEYS = {"step", "tokens", "time_s", "loss", "lr", "grad_norm", "grad_max", "grad_zero_frac",
              "param_norm", "update_rms", "tokens_per_s", "grad_spike"}
EVAL_KEYS = {"step", "tokens", "time_s", "val_loss", "val_ppl", "val_acc", "sample"}
SUMMARY_KEYS = {"status", "final_val_loss", "best_val_loss", "steps", "tokens", "wall_s", "tokens_per_s",
                "peak_mem_bytes", "n_params", "n_params_non_embedding", "run_dir"}


def test_run_directory_contract(tmp_path, tiny_overrides):
    summary = optbench.train(tiny_overrides)
    run = tmp_path / "run"
    assert summary == json.loads((run / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["status"] == "completed" and summary["steps"] == 30
    assert summary["tokens"] == 30 * 4 * 32
    assert (run / "config.yaml").read_text().startswith("model:")
    assert CheckpointStore(run / "checkpoints").steps() == [30]
    assert {"git_commit", "versions", "argv"} <= set(json.loads((run / "env.json").read_text()))

    lines = read_metrics(run)
    train = [r for r in lines if "loss" in r]
    evals = [r for r in lines if "val_loss" in r]
    assert [r["step"] for r in train] == [5, 10, 15, 20, 25, 30]
    assert [r["step"] for r in evals] == [0, 10, 20, 30]
    assert all(TRAIN_KEYS <= set(r) for r in train)
    assert all(EVAL_KEYS <= set(r) for r in evals)
    assert all(r["tokens"] == r["step"] * 128 for r in lines)
    assert all(a["time_s"] <= b["time_s"] for a, b in zip(lines, lines[1:]))
    for r in evals:
        assert r["val_ppl"] == pytest.approx(math.exp(r["val_loss"]))
        assert 0.0 <= r["val_acc"] <= 1.0 and len(r["sample"]) > 0
    assert summary["final_val_loss"] == evals[-1]["val_loss"]
    assert summary["best_val_loss"] == min(r["val_loss"] for r in evals[1:])
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5, "the model should learn the corpus"
    assert train[0]["lr"] == pytest.approx(1e-3 * 5 / 6)  # the 5th step is warmup step 5 of 5 (+1)


def test_same_seeds_give_identical_runs(tmp_path, tiny_overrides):
    first = optbench.train(tiny_overrides)
    second = optbench.train([*tiny_overrides, f"run.dir={tmp_path / 'again'}"])
    losses = lambda d: [r.get("loss", r.get("val_loss")) for r in read_metrics(d)]  # noqa: E731
    assert losses(tmp_path / "run") == losses(tmp_path / "again")
    assert first["final_val_loss"] == second["final_val_loss"]


@pytest.mark.parametrize("extra", [[], ["train.weight_avg=ema"]], ids=["plain", "with-ema"])
def test_interrupt_then_resume_matches_an_uninterrupted_run(tmp_path, tiny_overrides, monkeypatch, extra):
    assert_interrupted_run_resumes_exactly(tmp_path, [*tiny_overrides, *extra], monkeypatch)


def test_bad_prompt_fails_before_the_run_directory_exists(tmp_path, tiny_overrides):
    with pytest.raises(optbench.errors.UserError, match="eval.prompt"):
        optbench.train([*tiny_overrides, "eval.prompt=§"])
    assert not (tmp_path / "run").exists()


def test_train_threads_applies_to_the_run_and_is_put_back(tmp_path, tiny_overrides, monkeypatch):
    """A run in a longer-lived process (a sweep worker, a test session) leaves torch's thread count as it was,
    whether it completes or its config is refused."""
    from optbench.training.trainer import Trainer

    seen = []
    real_step = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", lambda self, step: (seen.append(torch.get_num_threads()),
                                                                    real_step(self, step))[1])
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    optbench.train([*tiny_overrides, f"train.threads={wanted}", "train.steps=3"])
    assert set(seen) == {wanted} and torch.get_num_threads() == before
    with pytest.raises(optbench.errors.UserError):
        optbench.train([*tiny_overrides, f"train.threads={wanted}", "eval.prompt=§", f"run.dir={tmp_path / 'x'}"])
    assert torch.get_num_threads() == before


def test_a_run_leaves_the_callers_random_streams_as_they_were(tmp_path, tiny_overrides):
    """The run seeds and draws from its own streams (model init, dropout); the caller's continue untouched."""
    import random

    import numpy as np

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    expected = (random.random(), np.random.rand(), torch.rand(2))
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    optbench.train([*tiny_overrides, "train.steps=3", "model.dropout=0.1"])
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(2), expected[2])
