"""A live worker whose trial was failed as stale (its heartbeats lapsed) drops the result instead of crashing on the
tell, stops training without writing more into the run directory, and goes on; the requeued copy gives the one
result. The heartbeat thread outlives storage errors."""

from __future__ import annotations

import json
import re
import threading
import time
import warnings
from datetime import datetime
from types import SimpleNamespace

import optuna
import pytest
import sqlalchemy as sa
import yaml
from optuna.trial import TrialState

from benchmarks.scale.audit import audit
from optbench.bench import launch, plan, worker
from optbench.bench.claim_transaction import claim_transaction
from optbench.bench.heartbeat import Heartbeat
from optbench.bench.storage import open_storage
from optbench.training.trainer import StopTraining, Trainer
from tests.bench.test_bench_run import micro_suite

optuna.logging.set_verbosity(optuna.logging.WARNING)

LOST_LINE = re.compile(r"trial 0 \(s/adamw/tune\): its claim was lost \(failed as stale by another worker at "
                       r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\); result dropped, its requeued copy reruns it\n")


def one_point_suite(tmp_path, corpus, **execution):
    """adamw at one learning rate, then its final seed 0: the tuning run itself, reused."""
    path = micro_suite(tmp_path, corpus, steps=8, grid=(1e-3,), seeds=(0,), **execution)
    spec = yaml.safe_load(path.read_text())
    spec["optimizers"] = spec["optimizers"][:1]
    path.write_text(yaml.safe_dump(spec))
    return launch.prepare(path, tmp_path / "out", None)


def fail_as_stale(suite, url: str, trial_id: int) -> None:
    """What another worker's claim does to a trial whose heartbeat lapsed: its heartbeat is dated long ago and the
    stale check fails it and requeues a copy, in one claim transaction (the owner's beats wait for it). Only tuning
    trials are failed here."""
    storage = open_storage(url, suite.execution)
    with claim_transaction(storage, suite.name) as (view, connection):
        connection.execute(sa.text("UPDATE trial_heartbeats SET heartbeat = :long_ago WHERE trial_id = :trial"),
                           {"long_ago": datetime(2000, 1, 1), "trial": trial_id})
        study = optuna.load_study(study_name=plan.study_name(suite, "s", "adamw", "tune"), storage=view)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    assert storage.get_trial(trial_id).state == TrialState.FAIL
    storage.engine.dispose()


def first_trial_id(url: str) -> int:
    (trial,) = [t for t in trials_of(url) if t.state == TrialState.RUNNING]
    return trial._trial_id


def trials_of(url: str) -> list[optuna.trial.FrozenTrial]:
    return [t for s in optuna.get_all_study_summaries(url)
            for t in optuna.load_study(study_name=s.study_name, storage=url).get_trials()]


def copy_starts(monkeypatch) -> list[dict]:
    """What each trial finds in its run directory as it starts: the summary's status and the checkpoints."""
    found = []
    real = worker.discard_dead_attempt

    def look(run):
        summary = run / "summary.json"
        found.append({"status": json.loads(summary.read_text())["status"] if summary.exists() else None,
                      "checkpoints": sorted(p.name for p in (run / "checkpoints").glob("step-*.pt"))
                      if run.exists() else []})
        real(run)
    monkeypatch.setattr(worker, "discard_dead_attempt", look)
    return found


def assert_one_result(suite, url: str) -> None:
    """The bench's own audit: every planned configuration ran to an end exactly once (the tuning point by the copy of
    its lost attempt), nothing is left running or waiting."""
    found = audit(suite, url, [])
    assert (found.duplicates, found.lost, found.requeued, found.ended) == ([], [], 1, 2)
    assert sorted(t.state.name for t in trials_of(url)) == ["COMPLETE", "COMPLETE", "FAIL"]


def test_a_trial_failed_as_stale_mid_run_stops_drops_its_result_and_its_copy_resumes(tmp_path, corpus,
                                                                                   monkeypatch, capsys):
    suite, out, url = one_point_suite(tmp_path, corpus, ckpt_every=2)
    beats: list[Heartbeat] = []
    real_enter, real_step = Heartbeat.__enter__, Trainer.train_step

    def enter(self):
        beats.append(self)
        return real_enter(self)

    def train_step(self, step):
        if step == 3 and len(beats) == 1:  # the first attempt, past its checkpoint at step 2
            fail_as_stale(suite, url, first_trial_id(url))
            deadline = time.monotonic() + 30
            while beats[0].lost is None and time.monotonic() < deadline:  # its next beat (every second) looks
                time.sleep(0.02)
        return real_step(self, step)
    monkeypatch.setattr(Heartbeat, "__enter__", enter)
    monkeypatch.setattr(Trainer, "train_step", train_step)
    starts = copy_starts(monkeypatch)

    assert worker.work(suite, out, url, "w0", threads=1, max_trials=5) == 3  # the lost attempt, its copy, the final
    printed = capsys.readouterr().out
    assert len(LOST_LINE.findall(printed)) == 1, printed
    assert "claim lost" in printed  # the trial's timing line says so too
    # the copy found what the lost attempt left when it learnt: its first summary and the checkpoint before, no more
    assert starts[1] == {"status": "running", "checkpoints": ["step-00000002.pt"]}
    assert_one_result(suite, url)


def test_a_trial_failed_between_its_last_beat_and_its_tell_is_not_told(tmp_path, corpus, monkeypatch, capsys):
    """No beat comes in time (every 30 s): the tell's own check finds the trial failed."""
    suite, out, url = one_point_suite(tmp_path, corpus, heartbeat_s=30, grace_s=60)
    real = worker.train_here
    failed = []

    def train_here(*args, **kwargs):
        summary = real(*args, **kwargs)
        if not failed:
            failed.append(first_trial_id(url))
            fail_as_stale(suite, url, failed[0])
        return summary
    monkeypatch.setattr(worker, "train_here", train_here)

    assert worker.work(suite, out, url, "w0", threads=1, max_trials=5) == 3
    assert len(LOST_LINE.findall(capsys.readouterr().out)) == 1
    (lost,) = [t for t in trials_of(url) if t._trial_id == failed[0]]
    assert lost.state == TrialState.FAIL and lost.values is None and "status" not in lost.user_attrs
    assert_one_result(suite, url)


class FlakyStorage:
    """record_heartbeat raises on the beats numbered in `failing` (from 1); the trial stays RUNNING until beat
    `lost_at`, then it is FAIL. `beats` counts the calls, and `enough` is set after `stop_after` of them."""

    def __init__(self, failing: set[int], stop_after: int, lost_at: int | None = None):
        self.failing, self.stop_after, self.lost_at = failing, stop_after, lost_at
        self.beats = 0
        self.enough = threading.Event()

    def record_heartbeat(self, trial_id: int) -> None:
        self.beats += 1
        if self.beats >= self.stop_after:
            self.enough.set()
        if self.beats in self.failing:
            raise sa.exc.OperationalError("UPDATE trial_heartbeats", {}, Exception("database is locked"))

    def get_trial(self, trial_id: int):
        lost = self.lost_at is not None and self.beats >= self.lost_at
        return SimpleNamespace(state=TrialState.FAIL if lost else TrialState.RUNNING,
                               datetime_complete=datetime(2030, 1, 2, 3, 4, 5) if lost else None)


CLAIM = SimpleNamespace(trial=SimpleNamespace(_trial_id=7, number=3))


def test_the_heartbeat_outlives_storage_errors_and_reports_each_streak_once(capsys):
    storage = FlakyStorage(failing={1, 2, 3, 5}, stop_after=9)
    with Heartbeat(storage, CLAIM, interval_s=0.01) as beat:
        assert storage.enough.wait(30), f"the heartbeat stopped after {storage.beats} beats"
    assert beat.lost is None
    failed = ("trial 3: heartbeat failed (OperationalError: (builtins.Exception) database is locked); "
              "retrying every 0.01 s")
    assert capsys.readouterr().err.splitlines() == [
        failed, "trial 3: heartbeat recovered after 3 failed beats",
        failed, "trial 3: heartbeat recovered after 1 failed beats"]


def test_the_heartbeat_finds_its_claim_lost_and_stops_beating():
    storage = FlakyStorage(failing=set(), stop_after=10**9, lost_at=3)
    with Heartbeat(storage, CLAIM, interval_s=0.01) as beat:
        deadline = time.monotonic() + 30
        while beat.lost is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)  # beats that would follow
    assert beat.lost is not None and beat.lost.when == datetime(2030, 1, 2, 3, 4, 5)
    assert storage.beats == 3


def test_a_report_to_a_trial_failed_since_the_last_beat_stops_the_run_as_lost():
    """The pruner's report is the first write to a lost trial when no beat has looked yet: the run stops, as lost."""
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    trial = study.ask()
    study.tell(trial, state=TrialState.FAIL)  # as another worker's claim fails a stale trial
    claim = SimpleNamespace(trial=trial, study=study)
    cfg = SimpleNamespace(train=SimpleNamespace(steps=10), eval=SimpleNamespace(every=2))
    observer = worker.PruningObserver(claim, SimpleNamespace(tuning=SimpleNamespace(prune_warmup_evals=0)), cfg)
    with pytest.raises(StopTraining) as stop:
        observer.log({"step": 2, "val_loss": 3.0})
    assert (stop.value.status, stop.value.write) == ("lost", False)
