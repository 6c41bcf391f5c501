"""Shared check: a run stopped by SIGINT during step 20 and resumed equals an uninterrupted one, line for line."""

import os
import signal

import optbench
from optbench.training.rundir import read_metrics
from optbench.training.trainer import Trainer


def strip_timing(run_dir) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("time_s", "tokens_per_s")} for r in read_metrics(run_dir)]


def assert_interrupted_run_resumes_exactly(tmp_path, overrides, monkeypatch, stop_at: int = 20) -> None:
    straight = optbench.train([*overrides, f"run.dir={tmp_path / 'straight'}"])

    real_step = Trainer.train_step

    def ctrl_c(self, step):
        if step == stop_at:
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-step: the step finishes, then the run saves and stops
        return real_step(self, step)

    monkeypatch.setattr(Trainer, "train_step", ctrl_c)
    stopped = optbench.train([*overrides, f"run.dir={tmp_path / 'run'}"])
    assert (stopped["status"], stopped["steps"], stopped["signal"]) == ("interrupted", stop_at + 1, "SIGINT")
    monkeypatch.setattr(Trainer, "train_step", real_step)

    resumed = optbench.train([*overrides, f"run.dir={tmp_path / 'run'}"])
    assert resumed["status"] == "completed" and resumed["final_val_loss"] == straight["final_val_loss"]
    assert strip_timing(tmp_path / "run") == strip_timing(tmp_path / "straight")
