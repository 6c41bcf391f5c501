"""The bench with real training on a micro suite: trials are run directories, reruns redo nothing, and
killed benches and workers are survived (their trials resume from checkpoints)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from optbench.bench import launch, layout
from optbench.bench.worker import work
from tests.bench.proctree import child_env, child_with_args, kill_child
from tests.required import missing

optuna.logging.set_verbosity(optuna.logging.WARNING)


def micro_suite(tmp_path: Path, corpus: Path, steps: int = 20, grid=(1e-3, 1e-2), seeds=(0, 1), name="micro",
                extend: int = 0, **execution) -> Path:
    """Two optimizers tuned over a grid of learning rates; no extension beyond the grid unless `extend` (the
    trial counts these tests check are those of the grid itself)."""
    suite = {
        "name": name,
        "base": [f"data.source={corpus}", f"data.root={tmp_path / 'prepared'}", "data.num_proc=1",
                 "model=gpt2", "model.n_layer=1", "model.n_head=2", "model.n_embd=32", f"train.steps={steps}",
                 "train.batch_size=4", "train.seq_len=32", "train.device=cpu", "schedule.warmup_steps=2",
                 f"eval.every={max(steps // 4, 1)}", "eval.batches=2", "eval.sample_tokens=0", "run.log_every=5"],
        "scenarios": [{"name": "s", "target_loss": 3.5}],
        "optimizers": [{"name": "adamw", "search": {"lr": {"log": [1e-4, 1e-1], "grid": list(grid)},
                                                    "beta2": None, "weight_decay": None}},
                       {"name": "lion", "search": {"lr": {"log": [1e-5, 1e-2], "grid": [1e-4, 1e-3]},
                                                   "beta2": None, "weight_decay": None}}],
        "tuning": {"method": "grid", "extend": extend},
        "final": {"seeds": list(seeds)},
        "execution": {"workers": 1, "threads_per_worker": 1, "ckpt_every": 10, "heartbeat_s": 1, "grace_s": 3,
                      **execution},
    }
    path = tmp_path / "micro.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def trials(out: Path, url: str | None = None, suite: str = "") -> list[optuna.trial.FrozenTrial]:
    """Every trial of the bench in `out` (of suite `suite` only, in a database shared with other runs)."""
    url = url or layout.sqlite_url(out)
    found = []
    for summary in optuna.get_all_study_summaries(url):
        if summary.study_name.startswith(suite):
            found += optuna.load_study(study_name=summary.study_name, storage=url).get_trials()
    return found


def run_dirs(out: Path) -> list[Path]:
    return sorted(p.parent for p in layout.runs_dir(out).glob("*/*/*/trial.json"))


def test_a_suite_runs_to_final_seeds_and_a_rerun_redoes_nothing(tmp_path, corpus):
    suite, out, url = launch.prepare(micro_suite(tmp_path, corpus), tmp_path / "out", None)
    assert work(suite, out, url, "w0", threads=1) == 2 * (2 + 2)  # per optimizer: 2 grid points, 2 seeds
    runs = run_dirs(out)
    assert len(runs) == 2 * 3  # the final run at the tuning seed is the tuning trial's own directory
    records = [json.loads((r / "trial.json").read_text()) for r in runs]
    assert sorted(tuple(r["phases"]) for r in records).count(("tune", "final")) == 2
    for name in ("adamw", "lion"):  # each tuning study numbers its trials in the order they were run
        assert sorted(r["trial"] for r in records if r["optimizer"] == name and "tune" in r["phases"]) == [0, 1]
    assert all(r["trial"] is None for r in records if r["phases"] == ["final"])
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["steps"] == 20
        assert summary["optim_state_bytes"] > 0
        env = json.loads((run / "env.json").read_text())
        assert env["versions"]["optuna"] == optuna.__version__
    done = trials(out)
    assert all(t.state == TrialState.COMPLETE for t in done) and len(done) == 8
    assert {t.user_attrs["git_commit"] for t in done} == {json.loads((runs[0] / "env.json").read_text())["git_commit"]}
    mtimes = {r: (r / "metrics.jsonl").stat().st_mtime_ns for r in runs}

    assert work(suite, out, url, "w1", threads=1) == 0
    assert {r: (r / "metrics.jsonl").stat().st_mtime_ns for r in run_dirs(out)} == mtimes
    assert len(trials(out)) == 8


def test_pruning_stops_a_trial_that_is_clearly_worse(tmp_path, corpus):
    path = micro_suite(tmp_path, corpus, steps=40, grid=(1e-2, 3e-2, 1e-1, 1e-5, 1e-6), seeds=(0,))
    spec = yaml.safe_load(path.read_text())
    spec["optimizers"] = spec["optimizers"][:1]
    spec["optimizers"][0]["search"]["lr"]["log"] = [1e-7, 1e-1]
    spec["tuning"].update(prune=True, prune_warmup_evals=1)
    path.write_text(yaml.safe_dump(spec))
    suite, out, url = launch.prepare(path, tmp_path / "out", None)
    work(suite, out, url, "w0", threads=1)
    tune = [t for t in trials(out) if t.user_attrs["hparams"]["lr"] in (1e-5, 1e-6)]
    assert {t.state for t in tune} == {TrialState.PRUNED}
    for t in tune:
        summary = json.loads((Path(t.user_attrs["run_dir"]) / "summary.json").read_text())
        assert summary["status"] == "pruned" and summary["steps"] < 40


def bench_process(suite_path: Path, out: Path, workers: int = 1) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "optbench", "bench", str(suite_path), "--out", str(out),
                             "--workers", str(workers)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, env=child_env())


def wait_for(condition, timeout: float = 180.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.05)


KILLED_STEPS = 60
"""Trials long enough (checkpointed every 10 steps) to be caught in the middle, short enough to redo quickly."""


def mid_trial(out: Path) -> Path | None:
    """A run that has checkpointed but not finished (a trial in the middle of training)."""
    for run in run_dirs(out):
        summary = run / "summary.json"
        if any((run / "checkpoints").glob("step-*.pt")) and summary.exists() \
                and json.loads(summary.read_text())["status"] == "running":
            return run
    return None


def finished(out: Path) -> dict[Path, int]:
    done = {}
    for run in run_dirs(out):
        summary = run / "summary.json"
        if summary.exists() and json.loads(summary.read_text())["status"] == "completed":
            done[run] = (run / "metrics.jsonl").stat().st_mtime_ns
    return done


def steps_logged(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


@pytest.mark.slow
@pytest.mark.xdist_group("processes")
def test_killing_the_bench_and_rerunning_finishes_without_redoing_trials(tmp_path, corpus):
    path = micro_suite(tmp_path, corpus, steps=KILLED_STEPS, seeds=(0,))
    out = tmp_path / "out"
    proc = bench_process(path, out)
    wait_for(lambda: finished(out) and mid_trial(out))
    done_before, killed = finished(out), mid_trial(out)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole bench: coordinator and worker, no chance to clean up
    proc.wait()

    rerun = bench_process(path, out)
    output, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, output
    assert "report written to" in output
    for run, mtime in done_before.items():
        assert (run / "metrics.jsonl").stat().st_mtime_ns == mtime  # finished trials were not run again
    steps = steps_logged(killed)
    assert steps == sorted(set(steps)) and steps[-1] == KILLED_STEPS  # resumed from its checkpoint: no step twice
    complete = [t for t in trials(out) if t.state == TrialState.COMPLETE]
    assert len(complete) == 2 * (2 + 1)  # per optimizer 2 grid points and 1 final seed, each once
    assert len({(t.user_attrs["run_dir"], t._trial_id) for t in complete}) == len(complete)
    assert len(run_dirs(out)) == 4  # the final seed is the tuning seed: its run is the best trial's own


@pytest.mark.slow
@pytest.mark.xdist_group("processes")
def test_a_worker_killed_mid_trial_is_survived(tmp_path, corpus):
    path = micro_suite(tmp_path, corpus, steps=KILLED_STEPS, seeds=(0,), workers=2)
    out = tmp_path / "out"
    proc = bench_process(path, out, workers=2)
    wait_for(lambda: mid_trial(out))
    killed = mid_trial(out)
    worker = json.loads(layout.trial_file(killed).read_text())
    victims = [t for t in trials(out) if t.state == TrialState.RUNNING and t.user_attrs.get("run_dir") == str(killed)]
    slot = victims[0].user_attrs["worker"]
    # The worker is found among this bench's own children, never by a machine-wide pattern match.
    pid = child_with_args(proc.pid, "--worker", slot)
    kill_child(proc.pid, pid, signal.SIGKILL)

    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    states = [(t.state, t.user_attrs["hparams"]) for t in trials(out) if t.user_attrs.get("run_dir") == str(killed)]
    assert (TrialState.FAIL, worker["hparams"]) in states  # the dead worker's trial, failed by its stale heartbeat
    assert (TrialState.COMPLETE, worker["hparams"]) in states  # and its requeued copy, finished by another worker
    steps = steps_logged(killed)
    assert steps == sorted(set(steps)) and steps[-1] == KILLED_STEPS


@pytest.mark.slow
@pytest.mark.xdist_group("processes")
def test_slurm_array_through_submitit(tmp_path, corpus, monkeypatch):
    """The Slurm path end to end, with submitit's local executor standing in for sbatch."""
    monkeypatch.setenv("PYTHONPATH", child_env()["PYTHONPATH"])  # the array tasks import this checkout
    suite, out, url = launch.prepare(micro_suite(tmp_path, corpus, seeds=(0,)), tmp_path / "out", None)
    jobs = launch.submit_slurm(suite, out, url, workers=2, cluster="local")
    ran = [job.result() for job in jobs]
    assert sum(ran) == 2 * (2 + 1) and len(jobs) == 2  # per optimizer: 2 grid points, 1 final seed
    assert all(t.state == TrialState.COMPLETE for t in trials(out))
    assert {t.user_attrs["worker"] for t in trials(out)} <= {"slurm-0", "slurm-1"}


POSTGRES = os.environ.get("OPTBENCH_TEST_POSTGRES")


@pytest.mark.slow
@pytest.mark.xdist_group("processes")
def test_two_workers_share_a_postgresql_study(tmp_path, corpus):
    if not POSTGRES:
        missing("set OPTBENCH_TEST_POSTGRES=postgresql://USER:PW@HOST/DB (.ci/run starts a local PostgreSQL and "
                "sets it) to test a shared PostgreSQL study")
    name = f"micro-{uuid.uuid4().hex[:8]}"  # studies of earlier runs stay in the database; this run's are its own
    suite, out, url = launch.prepare(micro_suite(tmp_path, corpus, seeds=(0, 1), name=name), tmp_path / "out",
                                     POSTGRES)
    launch.run_local(suite, out, url, workers=2)
    done = trials(out, url, suite=f"{name}/")
    assert len(done) == 2 * (2 + 2) and all(t.state == TrialState.COMPLETE for t in done)
    assert {t.user_attrs["worker"] for t in done} == {"0", "1"}  # both workers pulled from the shared study
    assert not (out / "study.db").exists()

