"""A worker keeps each prepared dataset (with its tokenizer) across its trials, shared only by trials of the very
same data config; a trial trained in a warm worker, after trials of other optimizers on another dataset, logs
exactly the losses it logs trained alone."""

from __future__ import annotations

import dataclasses
import json

import optuna
import yaml

from optbench import data as datalib
from optbench.bench import launch
from optbench.bench.warm import Warm
from optbench.bench.worker import work
from optbench.config.compose import load_yaml
from optbench.training.trainer import Trainer
from tests.bench.test_bench_run import micro_suite, run_dirs

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_a_prepared_dataset_is_shared_only_by_equal_data_configs(data_cfg, corpus):
    warm = Warm()
    first = warm.data(data_cfg(source=str(corpus)))
    assert warm.data(data_cfg(source=str(corpus))) is first
    assert first.tokenizer() is first.tokenizer()  # rebuilt once per dataset, not per trial
    held_out = warm.data(data_cfg(source=str(corpus), val_fraction=0.2))
    assert held_out is not first and held_out.dir != first.dir


def losses(run) -> list[tuple]:
    """Every loss the run logged, with its step: train losses and validation losses."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r.get("loss"), r.get("val_loss")) for r in records if "loss" in r or "val_loss" in r]


def test_a_trial_in_a_warm_worker_logs_the_losses_it_logs_alone(tmp_path, corpus, monkeypatch):
    path = micro_suite(tmp_path, corpus, steps=12, grid=(1e-3,), seeds=(0,))
    spec = yaml.safe_load(path.read_text())
    spec["scenarios"].append({"name": "held-out", "overrides": {"data.val_fraction": 0.2}})  # another dataset
    path.write_text(yaml.safe_dump(spec))
    suite, out, url = launch.prepare(path, tmp_path / "out", None)
    opened = []
    real_load = datalib.load
    monkeypatch.setattr(datalib, "load", lambda cfg, **kw: opened.append(cfg) or real_load(cfg, **kw))
    assert work(suite, out, url, "w0", threads=1) == 2 * (3 + 2)  # per scenario: 3 grid points, 2 final seeds
    assert len(opened) == 2  # once per dataset, for 6 trained runs

    runs = run_dirs(out)
    assert len(runs) == 6
    for run in runs:  # the second scenario's ran after the first's, on a worker warm with the other dataset
        alone = tmp_path / "alone" / run.relative_to(out)
        cfg = load_yaml(run / "config.yaml")
        Trainer(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, dir=str(alone)))).train()
        assert losses(alone) == losses(run), run
