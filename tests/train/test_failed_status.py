"""A run that raises mid-training ends with status "failed" in summary.json, its sinks closed and its
records so far kept, and the exception itself reaches the caller (a bug stays a traceback)."""

from __future__ import annotations

import json

import pytest

import optbench
from optbench.cli import main
from optbench.training.rundir import read_metrics
from optbench.training.trainer import Trainer


class Boom(RuntimeError):
    pass


FAST = ["train.steps=12", "eval.every=4", "eval.sample_tokens=0", "run.log_every=2"]


def raise_in_train_step(monkeypatch, at: int = 7) -> None:
    real = Trainer.train_step

    def step(self, step):
        if step == at:
            raise Boom(f"injected at step {step}")
        return real(self, step)
    monkeypatch.setattr(Trainer, "train_step", step)


def raise_in_evaluate(monkeypatch, at: int = 8) -> None:
    real = Trainer.evaluate

    def evaluate(self, model=None):
        if self.step == at:
            raise Boom(f"injected in the evaluation at step {self.step}")
        return real(self, model)
    monkeypatch.setattr(Trainer, "evaluate", evaluate)


class FailingObserver:
    """An observer (a sweep's pruner, say) with a bug of its own at step 6."""

    def __init__(self):
        self.closed = False

    def log(self, record):
        if record["step"] == 6:
            raise Boom("injected in an observer at step 6")

    def close(self):
        self.closed = True


@pytest.mark.parametrize("where, steps", [("train_step", 7), ("evaluate", 8), ("observer", 6)])
def test_an_exception_mid_training_leaves_status_failed_and_is_raised(tmp_path, tiny_overrides, monkeypatch,
                                                                      where, steps):
    cfg = optbench.config.compose.compose([*tiny_overrides, *FAST])
    observer = FailingObserver()
    if where == "train_step":
        raise_in_train_step(monkeypatch)
    elif where == "evaluate":
        raise_in_evaluate(monkeypatch)
    trainer = Trainer(cfg, observers=(observer,) if where == "observer" else ())
    with pytest.raises(Boom, match="injected"):
        trainer.train()

    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["steps"] == steps
    assert summary["wall_s"] > 0 and summary["run_dir"] == str(run)
    lines = read_metrics(run)
    assert lines and max(r["step"] for r in lines) <= steps  # what was logged before the failure stays
    evals = [r for r in lines if "val_loss" in r]
    assert summary["final_val_loss"] == evals[-1]["val_loss"] and evals[-1]["step"] == 4  # the last evaluation
    assert (run / "metrics.jsonl").read_text().endswith("\n")  # its sink was closed after a whole line
    if where == "observer":
        assert observer.closed


def test_the_command_line_lets_the_bug_through_after_recording_it(tmp_path, tiny_overrides, monkeypatch):
    raise_in_train_step(monkeypatch, at=3)
    with pytest.raises(Boom):  # not a UserError: no "exit 2, one line" mask over a bug
        main(["train", *tiny_overrides, *FAST])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["status"], summary["steps"]) == ("failed", 3)


def test_rerunning_a_failed_run_resumes_from_its_last_checkpoint(tmp_path, tiny_overrides, monkeypatch):
    with monkeypatch.context() as patch:
        raise_in_train_step(patch, at=9)
        with pytest.raises(Boom):
            optbench.train([*tiny_overrides, *FAST, "run.ckpt_every=4"])
    resumed = optbench.train([*tiny_overrides, *FAST, "run.ckpt_every=4"])
    assert resumed["status"] == "completed" and resumed["steps"] == 12
    steps = [r["step"] for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert steps == [2, 4, 6, 8, 10, 12]  # resumed at the step-8 checkpoint: no step logged twice
