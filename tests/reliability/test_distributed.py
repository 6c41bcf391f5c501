"""torchrun with 2 CPU processes (gloo) computes what one process computes with the same global batch,
under DDP and under FSDP2.

`train.grad_accum` counts micro-batches per step over all ranks, so 2 ranks x 1 micro-batch and 1 process
x 2 micro-batches see the same global batch. The sharded optimizers (Muon's Newton–Schulz, SOAP's
eigenbases, Shampoo's inverse roots, each computed on one rank and broadcast) must agree too.
"""

import os
import subprocess
import sys

from pathlib import Path

import pytest
import torch

import optbench
from optbench.train.checkpoint import CheckpointStore
from optbench.train.rundir import read_json, read_metrics
from tests.conftest import tiny_run, write_corpus

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


def assert_ranks_match_one_process(folder, overrides: list[str], label: str) -> None:
    """Every logged loss of 2 ranks within rel 1e-5 of one process's, for the same global batch. The one process
    runs single-threaded like each rank: SOAP's and Shampoo's eigensolvers round differently with more threads."""
    single = optbench.train([*overrides, "train.threads=1", f"run.dir={folder / 'single'}"])
    done = torchrun([*overrides, f"run.dir={folder / 'ranks'}"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_json(folder / "ranks" / "summary.json")["status"] == "completed"
    one, two = losses(folder / "single"), losses(folder / "ranks")
    assert [s for s, _ in one] == [s for s, _ in two] and len(one) >= 20
    for (step, a), (_, b) in zip(one, two):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-5), f"{label}: step {step}: {a} vs {b}"
    assert two[-1][1] == pytest.approx(single["final_val_loss"], rel=1e-5)


def assert_ranks_resume_from_step_10(folder, overrides: list[str]) -> CheckpointStore:
    """2 ranks restarted from the step-10 checkpoint of the 2-rank run in folder/ranks log what it logged after
    step 10."""
    store = CheckpointStore(folder / "ranks" / "checkpoints")
    assert store.steps() == [10, 20]
    resumed = torchrun([*overrides, f"run.dir={folder / 'resumed'}", f"run.resume={store.path(10)}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = lambda d: [x for x in losses(d) if x[0] > 10]  # noqa: E731
    assert after(folder / "resumed") == after(folder / "ranks")
    return store


def checkpointed(tmp_path_factory, name: str, extra: list[str]) -> tuple[Path, list[str]]:
    """A folder with one process's run and a 2-rank run of the same config, checkpointed at steps 10 and 20:
    compared with each other, then the 2-rank run is resumed from step 10 (one launch serves two tests)."""
    folder = tmp_path_factory.mktemp(name)
    overrides = [*tiny_run(folder, write_corpus(folder)), *extra, "train.steps=20", "train.grad_accum=2",
                 "run.log_every=1", "run.ckpt_every=10"]
    assert_ranks_match_one_process(folder, overrides, name)
    return folder, overrides


@pytest.fixture(scope="module")
def ddp_muon(tmp_path_factory):
    return checkpointed(tmp_path_factory, "ddp-muon", ["optim=muon"])


@pytest.fixture(scope="module")
def fsdp_adamw(tmp_path_factory):
    return checkpointed(tmp_path_factory, "fsdp-adamw", ["optim=adamw", "train.parallel=fsdp"])


@pytest.mark.parametrize("name", [n for n in CASES if n != "muon"])
def test_two_ranks_equal_one_process(name, tmp_path, tiny_overrides):
    assert_ranks_match_one_process(tmp_path, [*tiny_overrides, f"optim={name}", *CASES[name], "train.steps=20",
                                              "train.grad_accum=2", "run.log_every=1", "eval.every=10"], name)


def test_two_ranks_of_muon_equal_one_process(ddp_muon):
    """Compared in the fixture, on the checkpointed run that the resume test reuses."""
    folder, _ = ddp_muon
    assert read_json(folder / "ranks" / "summary.json")["steps"] == 20


def test_ranks_write_one_run_directory_and_resume_together(ddp_muon):
    folder, overrides = ddp_muon
    store = assert_ranks_resume_from_step_10(folder, overrides)
    assert len(store.latest()[1]["rng"]) == 2  # each rank's random streams
    lines = read_metrics(folder / "ranks")
    assert len({(r["step"], "loss" in r) for r in lines}) == len(lines), "a rank other than 0 logged"


def test_fsdp_of_adamw_equals_one_process(fsdp_adamw):
    """Compared in the fixture, on the checkpointed run that the resume test reuses."""
    folder, _ = fsdp_adamw
    assert read_json(folder / "ranks" / "summary.json")["steps"] == 20


def test_fsdp_of_nadam_equals_one_process(tmp_path, tiny_overrides):
    assert_ranks_match_one_process(tmp_path, [*tiny_overrides, "optim=nadam", "train.parallel=fsdp",
                                              "train.steps=20", "train.grad_accum=2", "run.log_every=1"], "nadam")


def test_fsdp_checkpoints_gather_whole_state_and_resume_exactly(fsdp_adamw):
    store = assert_ranks_resume_from_step_10(*fsdp_adamw)
    wpe = store.latest()[1]["model"]["transformer.wpe.weight"]
    assert type(wpe) is torch.Tensor and wpe.shape == (32, 32)  # whole (seq_len x n_embd), not a rank's shard


def test_fsdp_refuses_optimizers_that_need_whole_matrices(tmp_path, tiny_overrides):
    done = torchrun([*tiny_overrides, "optim=muon", "train.parallel=fsdp", "train.grad_accum=2"])
    assert done.returncode != 0
    assert done.stderr.count("optbench: error: optim=muon needs whole tensors on one rank") == 2  # each rank
    assert not (tmp_path / "run").exists()
