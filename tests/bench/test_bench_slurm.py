"""`optbench bench SUITE --slurm`: the array submitit hands to sbatch carries the suite's execution.slurm
settings, mistakes are one line before anything is submitted, and Slurm's time-limit warning stops a trial
the way SIGTERM does (checkpoint, back to the queue) instead of failing its hyperparameters.

No Slurm is needed: a fake `sbatch` records the script it is given, and submitit's local executor runs an
array task as a real process for the signal."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from optbench.bench import launch, layout
from optbench.cli import main
from optbench.training.checkpoint import CheckpointStore
from tests.bench.proctree import REPO, child_with_args, kill_child
from tests.bench.test_bench_run import micro_suite, trials

submitit = pytest.importorskip("submitit")
from submitit.core.utils import DelayedSubmission  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)

SLURM = {"partition": "gpu-short", "account": "proj42", "qos": "high", "time_min": 90, "gpus_per_task": 2,
         "cpus_per_task": 4, "mem_gb": 16, "array_parallelism": 2, "extra": {"constraint": "a100"}}


def fake_slurm(tmp_path: Path, monkeypatch, srun: bool = True, refuse: str | None = None) -> Path:
    """`sbatch` (and `srun`, whose presence submitit takes for a Slurm cluster) first on PATH; sbatch copies
    each script into the returned folder and answers as Slurm does, or fails with `refuse` on stderr."""
    bin_dir, scripts = tmp_path / "fake-bin", tmp_path / "sbatch-scripts"
    bin_dir.mkdir()
    scripts.mkdir()
    answer = f'echo "{refuse}" >&2; exit 1' if refuse else 'echo "Submitted batch job 4242"'
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" "{scripts}/$(ls {scripts} | wc -l).sh"\n{answer}\n')
    (bin_dir / "sbatch").chmod(0o755)
    if srun:
        (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return scripts


def sbatch_options(script: Path) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", script.read_text(), re.MULTILINE))


def test_the_array_carries_the_suites_slurm_settings(tmp_path, corpus, monkeypatch, capsys):
    scripts = fake_slurm(tmp_path, monkeypatch)
    path, out = micro_suite(tmp_path, corpus, seeds=(0,), slurm=SLURM), tmp_path / "out"
    assert main(["bench", str(path), "--out", str(out), "--slurm", "--workers", "3"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"submitted Slurm array 4242 with 3 workers; run `optbench report {out}` when they finish")
    (script,) = scripts.iterdir()
    options = sbatch_options(script)
    assert {k: options[k] for k in ("array", "partition", "account", "qos", "time", "gpus-per-node",
                                    "cpus-per-task", "mem", "job-name", "constraint")} == {
        "array": "0-2%2", "partition": "gpu-short", "account": "proj42", "qos": "high", "time": "90",
        "gpus-per-node": "2", "cpus-per-task": "4", "mem": "16GB", "job-name": "optbench-micro",
        "constraint": "a100"}
    assert options["output"].startswith(str(out / "slurm"))
    # Each array task runs one worker on the results folder, with its own id and cpus_per_task threads.
    pickles = sorted(out.glob("slurm/4242_*/*submitted.pkl"), key=lambda p: p.parent.name)
    calls = [DelayedSubmission.load(p) for p in pickles]
    assert all(call.function is launch.run_slurm_worker for call in calls)
    assert [call.args for call in calls] == [(out, layout.sqlite_url(out), f"slurm-{i}", 4) for i in range(3)]


def test_unset_settings_are_left_to_slurm_and_workers_default_to_the_suites(tmp_path, corpus, monkeypatch):
    scripts = fake_slurm(tmp_path, monkeypatch)
    path, out = micro_suite(tmp_path, corpus, seeds=(0,), workers=2), tmp_path / "out"
    assert main(["bench", str(path), "--out", str(out), "--slurm"]) == 0
    (script,) = scripts.iterdir()
    options = sbatch_options(script)
    assert (options["array"], options["time"], options["cpus-per-task"], options["mem"]) == \
        ("0-1%2", "240", "8", "64GB")  # two workers at once; submitit caps the parallelism at the array size
    assert not {"partition", "account", "qos", "constraint"} & set(options)


def test_an_array_task_asks_for_the_gpus_of_its_trials_ranks(tmp_path, corpus, monkeypatch):
    scripts = fake_slurm(tmp_path, monkeypatch)
    path = micro_suite(tmp_path, corpus, seeds=(0,), nproc_per_trial=2, slurm={"gpus_per_task": 1})
    spec = yaml.safe_load(path.read_text())
    spec["base"].append("train.grad_accum=2")
    path.write_text(yaml.safe_dump(spec))
    assert main(["bench", str(path), "--out", str(tmp_path / "out"), "--slurm"]) == 0
    (script,) = scripts.iterdir()
    options = sbatch_options(script)
    # one task per worker, whose torchrun forks the 2 ranks of each trial, a GPU each
    assert (options["gpus-per-node"], options.get("ntasks-per-node", "1")) == ("2", "1")


def one_line_exit_2(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("optbench: error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_an_unknown_extra_parameter_fails_before_anything_is_written(tmp_path, corpus, monkeypatch, capsys):
    scripts = fake_slurm(tmp_path, monkeypatch)
    path = micro_suite(tmp_path, corpus, slurm={"extra": {"constrant": "a100"}})
    err = one_line_exit_2(capsys, ["bench", str(path), "--out", str(tmp_path / "out"), "--slurm"])
    assert "execution.slurm.extra.constrant is not a Slurm parameter of submitit; valid: constraint" in err
    assert not (tmp_path / "out").exists() and not any(scripts.iterdir())


def test_without_slurm_here_it_says_so_in_one_line(tmp_path, corpus, monkeypatch, capsys):
    fake_slurm(tmp_path, monkeypatch, srun=False)
    path = micro_suite(tmp_path, corpus, seeds=(0,))
    err = one_line_exit_2(capsys, ["bench", str(path), "--out", str(tmp_path / "out"), "--slurm"])
    assert "there is no srun here" in err and "without --slurm" in err
    assert not (tmp_path / "out").exists()  # checked before the results folder is made


def test_a_refused_submission_is_sbatchs_reason_in_one_line(tmp_path, corpus, monkeypatch, capsys):
    fake_slurm(tmp_path, monkeypatch, refuse="sbatch: error: invalid partition specified: gpu-short")
    path = micro_suite(tmp_path, corpus, seeds=(0,), slurm=SLURM)
    err = one_line_exit_2(capsys, ["bench", str(path), "--out", str(tmp_path / "out"), "--slurm",
                                   "--workers", "3"])
    assert "sbatch refused the array of 3 workers: sbatch: error: invalid partition specified: gpu-short" in err


def running_trial(out: Path) -> Path | None:
    """The run a worker is training: its first train line is written (the stop handlers are installed)."""
    for run in out.glob("runs/*/*/*"):
        metrics = run / "metrics.jsonl"
        if metrics.exists() and any('"loss"' in line for line in metrics.read_text().splitlines()[:-1]):
            return run
    return None


@pytest.mark.slow
@pytest.mark.xdist_group("processes")
def test_the_time_limit_signal_checkpoints_and_requeues_the_trial(tmp_path, corpus, monkeypatch):
    """submitit's USR2 (sent before the time limit) stops the trial at a step boundary with a checkpoint;
    the study gets a waiting copy of it, and its hyperparameters are not marked as failed."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the array task imports this checkout's optbench
    path = micro_suite(tmp_path, corpus, steps=400, grid=(1e-3,), seeds=(0,), slurm={"time_min": 5})
    spec = yaml.safe_load(path.read_text())
    spec["optimizers"] = spec["optimizers"][:1]
    path.write_text(yaml.safe_dump(spec))
    suite, out, url = launch.prepare(path, tmp_path / "out", None)
    (job,) = launch.submit_slurm(suite, out, url, workers=1, cluster="local")
    controller = job._process.pid
    try:
        deadline = time.monotonic() + 120
        while running_trial(out) is None:
            assert time.monotonic() < deadline and job._process.poll() is None, "the array task never trained"
            time.sleep(0.1)
        run = running_trial(out)
        task = child_with_args(controller, "-m", "submitit.core._submit")
        kill_child(controller, task, submitit.JobEnvironment._usr_sig())
        with pytest.raises(Exception, match="went back to the queue"):
            job.result()
    finally:
        if job._process.poll() is None:  # a failed assertion above: stop the array task, not just wait for it
            job.cancel(check=False)
            job._process.wait(timeout=60)

    summary = json.loads((run / "summary.json").read_text())
    assert (summary["status"], summary["signal"]) == ("interrupted", "SIGTERM") and 0 < summary["steps"] < 400
    assert CheckpointStore(run / "checkpoints").steps()[-1] == summary["steps"]
    (stopped,) = [t for t in trials(out) if t.state == TrialState.FAIL]
    assert "error" not in stopped.user_attrs  # not a crash of these hyperparameters
    waiting = [t for t in trials(out) if t.state == TrialState.WAITING]
    assert [t.user_attrs["hparams"] for t in waiting] == [stopped.user_attrs["hparams"]]

