"""torchrun with 2 CPU processes (gloo) computes what one process computes with the same global batch,
under DDP and under FSDP2.

`train.grad_accum` counts micro-batches per step over all ranks, so 2 ranks x 1 micro-batch and 1 process
x 2 micro-batches see the same global batch. The sharded optimizers (Muon's Newton–Schulz, SOAP's
eigenbases, Shampoo's inverse roots, each computed on one rank and broadcast) must agree too.
"""

import os
import subprocess
import sys

import pytest
import torch

import optbench
from optbench.train.checkpoint import CheckpointStore
from optbench.train.rundir import read_json, read_metrics

# Real processes (torchrun ranks, killed runs): one at a time on one xdist worker, and not in the quick loop.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("processes")]

CASES = {
    "adamw": [],
    "muon": [],
    "soap": ["optim.precondition_frequency=5"],
    "shampoo": ["optim.start_preconditioning_step=4", "optim.precondition_frequency=3"],
}


def torchrun(overrides: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "optbench", "train", *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def losses(run_dir) -> list[tuple[int, float]]:
    return [(r["step"], r.get("loss", r.get("val_loss"))) for r in read_metrics(run_dir)]


def assert_ranks_match_one_process(tmp_path, overrides: list[str], label: str) -> None:
    """Every logged loss of 2 ranks within rel 1e-5 of one process's, for the same global batch. The one process
    runs single-threaded like each rank: SOAP's and Shampoo's eigensolvers round differently with more threads."""
    single = optbench.train([*overrides, "train.threads=1", f"run.dir={tmp_path / 'single'}"])
    done = torchrun([*overrides, f"run.dir={tmp_path / 'ranks'}"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_json(tmp_path / "ranks" / "summary.json")["status"] == "completed"
    one, two = losses(tmp_path / "single"), losses(tmp_path / "ranks")
    assert [s for s, _ in one] == [s for s, _ in two] and len(one) >= 20
    for (step, a), (_, b) in zip(one, two):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-5), f"{label}: step {step}: {a} vs {b}"
    assert two[-1][1] == pytest.approx(single["final_val_loss"], rel=1e-5)


def assert_ranks_resume_from_step_10(tmp_path, overrides: list[str]) -> CheckpointStore:
    """2 ranks restarted from a run's step-10 checkpoint log what the run logged after step 10."""
    first = torchrun([*overrides, "run.ckpt_every=10", f"run.dir={tmp_path / 'first'}"])
    assert first.returncode == 0, first.stderr[-3000:]
    store = CheckpointStore(tmp_path / "first" / "checkpoints")
    assert store.steps() == [10, 20]
    resumed = torchrun([*overrides, "run.ckpt_every=10", f"run.dir={tmp_path / 'resumed'}",
                        f"run.resume={store.path(10)}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = lambda d: [x for x in losses(d) if x[0] > 10]  # noqa: E731
    assert after(tmp_path / "resumed") == after(tmp_path / "first")
    return store


@pytest.mark.parametrize("name", CASES)
def test_two_ranks_equal_one_process(name, tmp_path, tiny_overrides):
    assert_ranks_match_one_process(tmp_path, [*tiny_overrides, f"optim={name}", *CASES[name], "train.steps=20",
                                              "train.grad_accum=2", "run.log_every=1", "eval.every=10"], name)


def test_ranks_write_one_run_directory_and_resume_together(tmp_path, tiny_overrides):
    store = assert_ranks_resume_from_step_10(tmp_path, [*tiny_overrides, "optim=muon", "train.steps=20",
                                                        "train.grad_accum=2", "run.log_every=1"])
    assert len(store.latest()[1]["rng"]) == 2  # each rank's random streams
    lines = read_metrics(tmp_path / "first")
    assert len({(r["step"], "loss" in r) for r in lines}) == len(lines), "a rank other than 0 logged"


@pytest.mark.parametrize("name", ["adamw", "nadam"])
def test_fsdp_equals_one_process(name, tmp_path, tiny_overrides):
    assert_ranks_match_one_process(tmp_path, [*tiny_overrides, f"optim={name}", "train.parallel=fsdp",
                                              "train.steps=20", "train.grad_accum=2", "run.log_every=1"], name)


def test_fsdp_checkpoints_gather_whole_state_and_resume_exactly(tmp_path, tiny_overrides):
    store = assert_ranks_resume_from_step_10(tmp_path, [*tiny_overrides, "train.parallel=fsdp", "train.steps=20",
                                                        "train.grad_accum=2", "run.log_every=1"])
    wpe = store.latest()[1]["model"]["transformer.wpe.weight"]
    assert type(wpe) is torch.Tensor and wpe.shape == (32, 32)  # whole (seq_len x n_embd), not a rank's shard


def test_fsdp_refuses_optimizers_that_need_whole_matrices(tmp_path, tiny_overrides):
    done = torchrun([*tiny_overrides, "optim=muon", "train.parallel=fsdp", "train.grad_accum=2"])
    assert done.returncode != 0
    assert done.stderr.count("optbench: error: optim=muon needs whole tensors on one rank") == 2  # each rank
    assert not (tmp_path / "run").exists()
