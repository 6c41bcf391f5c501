"""Preemption and crashes, with real signals to a real `optbench train` process.

SIGTERM (Slurm's preemption notice) finishes the step, checkpoints, records `interrupted` and exits
143; SIGKILL (no notice at all) at a random step loses at most the steps since the last checkpoint.
Either way, running the same command again ends bit-identical to a run that was never stopped.
"""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

import optbench
from optbench.training.checkpoint import CheckpointStore
from optbench.training.rundir import read_json, read_metrics
from tests.train.resume import strip_timing

# Real processes (killed runs): one at a time on one xdist worker, and not in the quick loop.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("processes")]

KILLED = {  # optimizer -> extra overrides: plain moments, a preconditioner refreshed every 4 steps, and
    # Schedule-Free's averaged point. Every optimizer's crash-and-rerun is checked in-process by
    # tests/reliability/test_resume_every_optimizer.py; these check the real process kill.
    "adamw": [],
    "soap": ["optim.precondition_frequency=4"],
    "sf-adamw": ["schedule=constant", "optim.lr=0.01"],
}


def start(overrides: list[str]) -> subprocess.Popen:
    """The same command in a process of its own; the overrides' train.threads=1 keeps its sums in the order of
    the in-process runs it is compared with."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "optbench", "train", *overrides], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_step(proc: subprocess.Popen, run_dir, step: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = read_metrics(run_dir) if (run_dir / "metrics.jsonl").exists() else []
        if any(r["step"] >= step for r in lines[:-1]):  # the last line may still be being written
            return
        assert proc.poll() is None, f"training ended before step {step}: {proc.stderr.read()[-2000:]}"
        time.sleep(0.01)
    raise TimeoutError(f"no step {step} within {timeout} s")


def final_parameters(run_dir) -> dict[str, torch.Tensor]:
    return CheckpointStore(run_dir / "checkpoints").latest()[1]["model"]


def test_sigterm_checkpoints_and_the_requeued_run_continues_exactly(tmp_path, tiny_overrides):
    overrides = [*tiny_overrides, "train.threads=1", "train.steps=150", "run.log_every=1", "eval.every=50"]
    straight = optbench.train([*overrides, f"run.dir={tmp_path / 'straight'}"])
    run = tmp_path / "run"
    proc = start([*overrides, f"run.dir={run}"])
    wait_for_step(proc, run, 20)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM, proc.stderr.read()[-2000:]
    summary = read_json(run / "summary.json")
    assert (summary["status"], summary["signal"]) == ("interrupted", "SIGTERM")
    assert 20 <= summary["steps"] < 150
    assert CheckpointStore(run / "checkpoints").steps() == [summary["steps"]]

    resumed = optbench.train([*overrides, f"run.dir={run}"])
    assert resumed["status"] == "completed" and resumed["final_val_loss"] == straight["final_val_loss"]
    assert strip_timing(run) == strip_timing(tmp_path / "straight")


@pytest.mark.parametrize("name", KILLED)
def test_sigkill_at_a_random_step_then_resume_is_bit_identical(name, tmp_path, tiny_overrides):
    overrides = [*tiny_overrides, "train.threads=1", f"optim={name}", *KILLED[name], "train.steps=40", "run.log_every=1",
                 "run.ckpt_every=1", "eval.every=20"]
    kill_at = random.Random(name).randint(5, 30)
    optbench.train([*overrides, f"run.dir={tmp_path / 'straight'}"])
    run = tmp_path / "run"
    proc = start([*overrides, f"run.dir={run}"])
    wait_for_step(proc, run, kill_at)
    proc.kill()
    proc.wait(timeout=60)
    assert read_json(run / "summary.json")["status"] == "running"  # nothing recorded the kill

    resumed = optbench.train([*overrides, f"run.dir={run}"])
    assert resumed["status"] == "completed"
    assert strip_timing(run) == strip_timing(tmp_path / "straight")
    ours, reference = final_parameters(run), final_parameters(tmp_path / "straight")
    assert all(torch.equal(ours[k], reference[k]) for k in reference), f"{name}: parameters differ"
