"""Shared check: a run interrupted at step 20 and resumed equals an uninterrupted one, line for line."""

import optbench
from optbench.train.rundir import read_metrics
from optbench.train.trainer import Trainer


def assert_interrupted_run_resumes_exactly(tmp_path, overrides, monkeypatch, stop_at: int = 20) -> None:
    straight = optbench.train([*overrides, f"run.dir={tmp_path / 'straight'}"])

    real_step = Trainer.train_step

    def ctrl_c(self, step):
        if step == stop_at:
            raise KeyboardInterrupt
        return real_step(self, step)

    monkeypatch.setattr(Trainer, "train_step", ctrl_c)
    stopped = optbench.train([*overrides, f"run.dir={tmp_path / 'run'}"])
    assert (stopped["status"], stopped["steps"]) == ("interrupted", stop_at)
    monkeypatch.setattr(Trainer, "train_step", real_step)

    resumed = optbench.train([*overrides, f"run.dir={tmp_path / 'run'}"])
    assert resumed["status"] == "completed" and resumed["final_val_loss"] == straight["final_val_loss"]
    timing = ("time_s", "tokens_per_s")
    strip = lambda d: [{k: v for k, v in r.items() if k not in timing} for r in read_metrics(d)]  # noqa: E731
    assert strip(tmp_path / "run") == strip(tmp_path / "straight")
