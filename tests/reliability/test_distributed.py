"""torchrun with 2 CPU processes (gloo) computes what one process computes with the same global batch under DDP.

`train.grad_accum` counts micro-batches per step over all ranks, so 2 ranks x 1 micro-batch and 1 process
x 2 micro-batches see the same global batch. The sharded optimizers (Muon's Newton–Schulz, SOAP's
eigenbases, Shampoo's inverse roots, each computed on one rank and broadcast) must agree too. FSDP2 is tested in
test_sharded_resume.py (elementwise optimizers, sharded checkpoints) and test_fsdp_owners.py (optimizers that step
whole tensors on owner ranks).

All DDP runs share one torchrun launch (tests/reliability/ranks.py runs them in order in one process group); the
refusal test launches `optbench train` itself, the entry point users run.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import optbench
from optbench.training.checkpoint import CheckpointStore
from optbench.training.rundir import read_json, read_metrics
from tests.conftest import tiny_run, write_corpus

# torchrun launches: one at a time on one xdist worker (the other process-starting tests share another), and not
# in the quick loop.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("torchrun")]

ROOT = Path(__file__).resolve().parents[2]
COMMON = ["train.steps=20", "train.grad_accum=2", "run.log_every=1", "run.ckpt_every=10"]
CASES = {
    "adamw": [],
    "muon": [],
    "soap": ["optim.precondition_frequency=5"],
    "shampoo": ["optim.start_preconditioning_step=4", "optim.precondition_frequency=3"],
}


def torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --standalone ARGS`, from the repository (so `-m tests...` resolves)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)


def launch_all(folder: Path, runs: dict[str, list[str]], nproc: int = 2) -> None:
    """Every run of `runs` (name -> overrides; run.dir is folder/name) in one torchrun launch of `nproc` ranks, in
    order."""
    listing = folder / "runs.json"
    listing.write_text(json.dumps([[*overrides, f"run.dir={folder / name}"] for name, overrides in runs.items()]))
    done = torchrun(["-m", "tests.reliability.ranks", str(listing)], nproc)
    assert done.returncode == 0, done.stderr[-3000:]


def losses(run_dir) -> list[tuple[int, float]]:
    return [(r["step"], r.get("loss", r.get("val_loss"))) for r in read_metrics(run_dir)]


def assert_ranks_match_one_process(folder: Path, overrides: list[str], label: str) -> None:
    """Every logged loss of the 2-rank run in `folder` within rel 1e-5 of one process's, for the same global
    batch. The one process runs single-threaded like each rank: SOAP's and Shampoo's eigensolvers round
    differently with more threads."""
    single = optbench.train([*overrides, "train.threads=1", f"run.dir={folder}-single"])
    assert read_json(folder / "summary.json")["status"] == "completed"
    one, two = losses(Path(f"{folder}-single")), losses(folder)
    assert [s for s, _ in one] == [s for s, _ in two] and len(one) >= 20
    for (step, a), (_, b) in zip(one, two):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-5), f"{label}: step {step}: {a} vs {b}"
    assert two[-1][1] == pytest.approx(single["final_val_loss"], rel=1e-5)


def assert_resumed_from_step_10(first: Path, resumed: Path) -> CheckpointStore:
    """The 2-rank run restarted from `first`'s step-10 checkpoint logged what `first` logged after step 10."""
    store = CheckpointStore(first / "checkpoints")
    assert store.steps() == [10, 20]
    after = lambda d: [x for x in losses(d) if x[0] > 10]  # noqa: E731
    assert after(resumed) == after(first) and after(first)
    return store


def runs_of(folder: Path, cases: dict[str, list[str]], resumed: str) -> dict[str, list[str]]:
    """name -> overrides for each case, on one prepared corpus, then `resumed` again from its step 10."""
    base = [*tiny_run(folder, write_corpus(folder)), *COMMON]
    runs = {name: [*base, *extra] for name, extra in cases.items()}
    step_10 = CheckpointStore(folder / resumed / "checkpoints").path(10)
    runs[f"{resumed}-resumed"] = [*runs[resumed], f"run.resume={step_10}"]
    return runs


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    folder = tmp_path_factory.mktemp("ddp")
    runs = runs_of(folder, {name: [f"optim={name}", *extra] for name, extra in CASES.items()}, "muon")
    launch_all(folder, runs)
    return folder, runs


@pytest.mark.parametrize("name", CASES)
def test_two_ranks_equal_one_process(name, ddp):
    folder, runs = ddp
    assert_ranks_match_one_process(folder / name, runs[name], name)


def test_ranks_write_one_run_directory_and_resume_together(ddp):
    folder, _ = ddp
    store = assert_resumed_from_step_10(folder / "muon", folder / "muon-resumed")
    assert len(store.latest()[1]["rng"]) == 2  # each rank's random streams
    lines = read_metrics(folder / "muon")
    assert len({(r["step"], "loss" in r) for r in lines}) == len(lines), "a rank other than 0 logged"


def test_fsdp_refuses_optimizers_it_cannot_run_in_one_line(tmp_path, tiny_overrides):
    done = torchrun(["-m", "optbench", "train", *tiny_overrides, "optim=prodigy", "train.parallel=fsdp",
                     "train.grad_accum=2"])
    assert done.returncode != 0
    assert done.stderr.count("optbench: error: optim=prodigy cannot run under train.parallel=fsdp: its step size d "
                             "comes from sums over every parameter") == 2  # each rank
    assert not (tmp_path / "run").exists()
