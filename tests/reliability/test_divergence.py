"""A diverged run stops cleanly: status `diverged`, exit code 0 (a sweep goes on), no traceback, and a run
directory every tool can still read."""

import math

from optbench.cli import main
from optbench.config.compose import load_yaml
from optbench.training.rundir import read_json, read_metrics
from optbench.training.trainer import Trainer


def assert_readable_and_diverged(run_dir, steps: int) -> None:
    summary = read_json(run_dir / "summary.json")
    assert (summary["status"], summary["steps"]) == ("diverged", steps)
    assert load_yaml(run_dir / "config.yaml").optim.name == "adamw"
    last = read_metrics(run_dir)[-1]
    assert last["step"] == steps and not (math.isfinite(last["loss"]) and last["loss"] < 1.0)


def test_an_injected_nan_loss_stops_the_run_as_diverged(tmp_path, tiny_overrides, monkeypatch, capsys):
    real_step = Trainer.train_step

    def nan_at_step_12(self, step):
        loss, grad_norm = real_step(self, step)
        return (math.nan if step == 12 else loss), grad_norm

    monkeypatch.setattr(Trainer, "train_step", nan_at_step_12)
    assert main(["train", *tiny_overrides]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert_readable_and_diverged(tmp_path / "run", 12)


def test_a_loss_above_the_threshold_is_divergence(tmp_path, tiny_overrides, capsys):
    assert main(["train", *tiny_overrides, "train.diverge_loss=0.5"]) == 0  # the first loss is about 4
    assert "diverged" in capsys.readouterr().out
    assert_readable_and_diverged(tmp_path / "run", 0)
