"""A trial that crashes is that trial's result: failed in its study with the error recorded, never retried
as if its worker had died, the bench goes on with the other configurations, and the report counts it as
failed, whether it crashed while training or while its trainer was being built."""

from __future__ import annotations

import json

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from optbench.bench import launch, layout
from optbench.bench.worker import work
from optbench.cli import main
from optbench.training.trainer import Trainer
from tests.bench.test_bench_run import micro_suite, run_dirs, trials

optuna.logging.set_verbosity(optuna.logging.WARNING)

BAD_LR = 1e-2


def one_optimizer_suite(tmp_path, corpus):
    path = micro_suite(tmp_path, corpus, steps=8, grid=(1e-3, BAD_LR), seeds=(0,))
    spec = yaml.safe_load(path.read_text())
    spec["optimizers"] = spec["optimizers"][:1]  # adamw: lr 1e-3 trains, lr 1e-2 crashes
    path.write_text(yaml.safe_dump(spec))
    return path


def crash_bad_lr(monkeypatch, where: str) -> None:
    """The honest stand-in for a configuration that crashes at run time (an out-of-memory at one batch size,
    an optimizer kernel failing for one setting): the trainer of the lr=1e-2 trial raises."""
    if where == "training":
        real = Trainer.train_step

        def train_step(self, step):
            if self.cfg.optim.lr == BAD_LR and step == 3:
                raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
            return real(self, step)
        monkeypatch.setattr(Trainer, "train_step", train_step)
    else:
        real_init = Trainer.__init__

        def init(self, cfg, *args, **kwargs):
            if cfg.optim.lr == BAD_LR:
                raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
            real_init(self, cfg, *args, **kwargs)
        monkeypatch.setattr(Trainer, "__init__", init)


@pytest.mark.parametrize("where", ["training", "construction"])
def test_a_crashing_trial_is_failed_the_bench_goes_on_and_the_report_counts_it(tmp_path, corpus, monkeypatch,
                                                                              capsys, where):
    crash_bad_lr(monkeypatch, where)
    suite, out, url = launch.prepare(one_optimizer_suite(tmp_path, corpus), tmp_path / "out", None)
    assert work(suite, out, url, "w0", threads=1, max_trials=6) == 3  # both grid points, then the final seed
    assert "Traceback" in capsys.readouterr().err  # the worker's log shows what happened

    by_lr = {}
    for t in trials(out):
        by_lr.setdefault(t.user_attrs["hparams"]["lr"], []).append(t)
    (crashed,) = by_lr[BAD_LR]
    assert crashed.state == TrialState.FAIL
    assert crashed.user_attrs["error"].startswith("RuntimeError: CUDA")
    assert sorted(t.state.name for t in by_lr[1e-3]) == ["COMPLETE", "COMPLETE"]  # tuned, then its final seed
    assert launch.progress(suite, url)[0]["tune"] == {"complete": 1, "fail": 1}

    run = layout.run_dir(out, "s", "adamw", crashed.user_attrs["run_dir"].rsplit("/", 1)[1])
    assert str(run) == crashed.user_attrs["run_dir"] and run in run_dirs(out)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary.get("steps", 0) == (3 if where == "training" else 0)

    assert work(suite, out, url, "w1", threads=1, max_trials=3) == 0  # a crash is a result: not retried

    assert main(["report", str(out)]) == 0
    board = pd.read_csv(layout.report_dir(out) / "leaderboard.csv")
    (adamw,) = board.to_dict("records")
    assert (adamw["tune_trials"], adamw["failed"], adamw["n_final"]) == (2, 1, 1)
    assert json.loads(adamw["hparams"]) == {"lr": 1e-3}
    runs = pd.read_csv(layout.report_dir(out) / "runs.csv")
    assert runs["status"].value_counts().to_dict() == {"completed": 1, "failed": 1}
