"""train.parallel=fsdp with real ranks: FSDP2 computes what one process computes, and its sharded checkpoints
(optbench/training/sharded_checkpoint.py, sharded_state.py) resume a run on the same number of ranks bit for bit and on
another as closely as the sums allow.

Three torchrun launches of CPU ranks (gloo), each running several runs in order (tests/reliability/sharded_runs.py):
1. 2 ranks: AdamW and NAdam on tiny_run's GPT-2 (2 micro-batches) against one process; AdamW and Muon on a Llama
   for 20 steps of 4 micro-batches, checkpointed every 5 steps (10 and 20 kept for good, retention drops 5), each
   resumed from its step-10 checkpoint (run.resume=PATH; Muon also as a stopped run continued with run.resume=auto),
   and what each trained model computes;
2. 4 ranks: both Llama runs resumed from their 2-rank step-10 checkpoints (2 -> 4), checkpointing at 15 and 20;
3. 2 ranks: both resumed from the 4-rank step-15 checkpoints (4 -> 2), and from their single-file conversions.

On another number of ranks a step's global batch is the same (train.grad_accum counts micro-batches over all ranks;
data/loader.py), but the gradient of the 4 micro-batches is summed in another order: on 2 ranks each adds its 2, then
FSDP2 reduces over the ranks; on 4 it reduces 4 at once. The resumed losses then differ from the 2-rank run's in the
last bits (about 1e-7), asserted at 1e-5 as the issue asks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint import FileSystemReader

import optbench
from optbench import data as datalib
from optbench import models
from optbench.config.compose import load_yaml
from optbench.export.run import read_weights
from optbench.training.checkpoint import CheckpointStore
from optbench.training.convert import convert
from optbench.training.rundir import read_metrics
from optbench.training.sample import sample_from_run
from tests.conftest import tiny_run, write_corpus
from tests.reliability.sharded_runs import SAMPLE_TOKENS
from tests.reliability.test_distributed import assert_ranks_match_one_process, torchrun

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("torchrun")]

OPTIMIZERS = ("adamw", "muon")
ONE_PROCESS = ("adamw", "nadam")
GPT2 = ["train.steps=20", "train.grad_accum=2", "run.log_every=1", "run.ckpt_every=10", "train.parallel=fsdp"]
LLAMA = ["model=llama-debug", "train.steps=20", "train.grad_accum=4", "run.log_every=1", "run.ckpt_every=5",
         "run.keep_every=10", "eval.every=0", "eval.sample_tokens=0", "train.parallel=fsdp"]
TOLERANCE = 1e-5
"""Another world size sums the gradients in another order (module docstring): the issue's bound, ~100x the diffs."""


def launch(folder: Path, plan: list[dict], nproc: int) -> None:
    listing = folder / f"plan-{nproc}-{len(list(folder.glob('plan-*')))}.json"
    listing.write_text(json.dumps(plan))
    done = torchrun(["-m", "tests.reliability.sharded_runs", str(listing)], nproc=nproc)
    assert done.returncode == 0, done.stderr[-3000:]


def run(folder: Path, name: str, base: list[str], *extra: str, **options) -> dict:
    return {"overrides": [*base, *extra, f"run.dir={folder / name}"], **options}


def step_dir(folder: Path, name: str, step: int) -> Path:
    return CheckpointStore(folder / name / "checkpoints").sharded_path(step)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    """The folder of every run of the three launches, and each run's config overrides."""
    folder = tmp_path_factory.mktemp("sharded")
    base = tiny_run(folder, write_corpus(folder))
    llama = {name: [*base, *LLAMA, f"optim={name}"] for name in OPTIMIZERS}
    gpt2 = {name: [*base, *GPT2, f"optim={name}"] for name in ONE_PROCESS}
    two = [run(folder, f"gpt2-{name}", overrides) for name, overrides in gpt2.items()]
    for name, overrides in llama.items():
        two += [run(folder, name, overrides, outputs=str(folder / f"{name}.outputs.pt")),
                run(folder, f"{name}-resumed", overrides, f"run.resume={step_dir(folder, name, 10)}")]
    two.append(run(folder, "muon-auto", llama["muon"], resume_copy_of=str(folder / "muon")))
    launch(folder, two, nproc=2)

    launch(folder, [run(folder, f"{name}-4", overrides, f"run.resume={step_dir(folder, name, 10)}")
                    for name, overrides in llama.items()], nproc=4)

    back = []
    for name, overrides in llama.items():
        converted = convert(step_dir(folder, f"{name}-4", 15), folder / f"{name}-4-step-15.pt").out
        back += [run(folder, f"{name}-4-2", overrides, f"run.resume={step_dir(folder, f'{name}-4', 15)}"),
                 run(folder, f"{name}-4-2-file", overrides, f"run.resume={converted}")]
    launch(folder, back, nproc=2)
    return folder, {**{f"gpt2-{n}": o for n, o in gpt2.items()}, **llama}


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def max_diff_after(folder: Path, run_name: str, reference: str, step: int) -> float:
    """The largest |loss difference| of `run_name` against `reference` over the steps after `step`."""
    ours, theirs = train_losses(folder / run_name), train_losses(folder / reference)
    resumed = [s for s in ours if s > step]
    assert resumed == list(range(step + 1, 21)), f"{run_name} logged steps {resumed}"
    return max(abs(ours[s] - theirs[s]) for s in resumed)


@pytest.mark.parametrize("name", ONE_PROCESS)
def test_fsdp_equals_one_process(name, runs):
    folder, overrides = runs
    assert_ranks_match_one_process(folder / f"gpt2-{name}", overrides[f"gpt2-{name}"], name)


def test_a_checkpoint_read_whole_loads_into_one_process_model(runs):
    """GPT-2 ties its head to the embedding: the state dict read whole has both names, as one process's has."""
    folder, _ = runs
    cfg = load_yaml(folder / "gpt2-adamw" / "config.yaml")
    model = models.build(cfg.model, datalib.load(cfg.data, progress=False).vocab_size, cfg.train.seq_len)
    path, whole = CheckpointStore(folder / "gpt2-adamw" / "checkpoints").latest()
    assert path.is_dir() and whole["model"].keys() == model.state_dict().keys()
    model.load_state_dict(whole["model"])
    assert model.lm_head.weight is model.transformer.wte.weight


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_rank_writes_its_shards_of_a_checkpoint_folder(name, runs):
    folder, _ = runs
    store = CheckpointStore(folder / name / "checkpoints")
    assert store.steps() == [10, 15, 20]  # run.keep_last=2 and every 10th: step 5 went
    path = store.sharded_path(10)
    assert sorted(p.name for p in path.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "manifest.json",
                                                      "run.pt"]
    manifest = json.loads((path / "manifest.json").read_text())
    assert (manifest["step"], manifest["world_size"], sorted(manifest["files"])) == (
        10, 2, [".metadata", "__0_0.distcp", "__1_0.distcp", "run.pt"])
    assert len(torch.load(path / "run.pt", weights_only=True)["rng"]) == 2  # each rank's random streams
    metadata = FileSystemReader(path).read_metadata()
    rows = [chunk.offsets[0] for chunk in metadata.state_dict_metadata["model.tok_embeddings.weight"].chunks]
    assert len(rows) == 2 and rows[0] == 0 < rows[1], "the embedding is not in two row blocks, one per rank"
    writers = {metadata.storage_data[index].relative_path for index in metadata.storage_data
               if index.fqn.startswith("optimizer.")}
    assert writers == {"__0_0.distcp", "__1_0.distcp"}, "one rank wrote the optimizer state"


@pytest.mark.parametrize("resumed", ["adamw-resumed", "muon-resumed", "muon-auto"])
def test_resume_on_the_same_number_of_ranks_is_bit_identical(resumed, runs):
    folder, _ = runs
    assert max_diff_after(folder, resumed, resumed.split("-")[0], 10) == 0.0


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_resume_from_two_ranks_on_four(name, runs):
    folder, _ = runs
    assert max_diff_after(folder, f"{name}-4", name, 10) <= TOLERANCE
    manifest = json.loads((step_dir(folder, f"{name}-4", 15) / "manifest.json").read_text())
    assert manifest["world_size"] == 4 and sum(f.endswith(".distcp") for f in manifest["files"]) == 4


@pytest.mark.parametrize("source", ["sharded", "file"])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_resume_from_four_ranks_on_two(name, source, runs):
    folder, _ = runs
    assert max_diff_after(folder, f"{name}-4-2" + ("-file" if source == "file" else ""), name, 15) <= TOLERANCE


def test_resume_in_one_process_from_a_sharded_checkpoint(runs):
    folder, overrides = runs
    resumed = folder / "adamw-1"
    optbench.train([*overrides["adamw"], f"run.resume={step_dir(folder, 'adamw', 10)}", "train.threads=1",
                    f"run.dir={resumed}"])
    assert max_diff_after(folder, "adamw-1", "adamw", 10) <= TOLERANCE


def test_the_converted_checkpoint_computes_what_the_live_model_did(runs, cli):
    """`optbench checkpoint convert`, then sampling and export read the single file: the live model's logits and
    sample, bit for bit."""
    folder, _ = runs
    copy = folder / "muon-converted"
    (copy / "checkpoints").mkdir(parents=True)
    shutil.copy(folder / "muon" / "config.yaml", copy)
    done = cli("checkpoint", "convert", str(folder / "muon"), "--out", str(copy / "checkpoints" / "step-00000020.pt"))
    assert done.returncode == 0, done.stderr
    live = torch.load(folder / "muon.outputs.pt", weights_only=True)
    cfg = load_yaml(copy / "config.yaml")
    model = models.build(cfg.model, datalib.load(cfg.data, progress=False).vocab_size, cfg.train.seq_len)
    step, weights = read_weights(copy, "model")  # what `optbench export` writes
    model.load_state_dict(weights)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank ran: CPU matmuls split their sums by thread
    try:
        with torch.no_grad():
            logits = model.eval()(live["x"])
        sampled = sample_from_run([f"run.dir={copy}", "device=cpu", f"max_new_tokens={SAMPLE_TOKENS}"])
    finally:
        torch.set_num_threads(threads)
    assert step == 20 and torch.equal(logits, live["logits"])
    assert sampled == "\n" + live["sample"]
