"""Runs of the optimizers that step whole tensors, under torchrun and in one process with the same global batch, and
how far their losses lie apart: shared by test_fsdp_owners.py (2 ranks), test_fsdp_four_ranks.py (4 ranks, float64)
and the figures of the 4-rank note in the README, which this module prints:

    python -m tests.reliability.rank_agreement

For each optimizer and model, the largest |loss difference| over 20 logged steps between one process and 4 ranks:
under FSDP2 in float64 and in float32, and under DDP in float32 (clipping off everywhere). In float32 both parallel
forms drift alike, so the drift comes from the order in which 4 micro-batch gradients are summed, not the sharding.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import optbench
from optbench.training.rundir import read_metrics
from tests.conftest import tiny_run, write_corpus

MODELS = ("llama-debug", "moe-debug")
CASES = {
    "adamw": [],
    "muon": [],
    "soap": ["optim.precondition_frequency=5"],
    "shampoo": ["optim.start_preconditioning_step=4", "optim.precondition_frequency=3"],
    "psgd-kron": [],
    "galore": ["optim.rank=8", "optim.update_proj_gap=5"],
}
STEPS = 20


def losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir) if "loss" in r]


def runs(folder: Path, ranks: int, dtype: str, parallel: str) -> dict[str, list[str]]:
    """name -> overrides of every optimizer on every model, `ranks` x 1 micro-batch a step (one process with the
    same overrides takes the `ranks` micro-batches itself), gradients unclipped (see test_fsdp_owners.py)."""
    common = [*tiny_run(folder, write_corpus(folder)), f"train.steps={STEPS}", f"train.grad_accum={ranks}",
              "train.grad_clip=0", f"train.dtype={dtype}", f"train.parallel={parallel}", "run.log_every=1",
              "run.ckpt_every=0", "eval.every=0", "eval.sample_tokens=0"]
    return {f"{model}-{name}": [*common, f"model={model}", f"optim={name}", *extra]
            for model in MODELS for name, extra in CASES.items()}


def one_process(folder: Path, name: str, overrides: list[str]) -> Path:
    """The run `name` in this process, single-threaded like each rank (eigensolvers round differently with more
    threads), in folder/name-single; train.parallel is a no-op in one process."""
    run_dir = folder / f"{name}-single"
    summary = optbench.train([*overrides, "train.threads=1", f"run.dir={run_dir}"])
    assert summary["status"] == "completed", summary
    return run_dir


def max_difference(single: Path, ranks: Path) -> float:
    """The largest |loss difference| over the logged steps, which must be the same steps on both sides."""
    a, b = losses(single), losses(ranks)
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, STEPS + 1)), (single, ranks)
    return max(abs(x - y) for (_, x), (_, y) in zip(a, b))


def main() -> int:
    from tests.reliability.test_distributed import launch_all

    columns = {"fsdp float64": ("float64", "fsdp"), "fsdp float32": ("float32", "fsdp"),
               "ddp float32": ("float32", "ddp")}
    table: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        singles: dict[tuple[str, str], Path] = {}
        for column, (dtype, parallel) in columns.items():
            folder = Path(tmp) / column.replace(" ", "-")
            folder.mkdir()
            listed = runs(folder, 4, dtype, parallel)
            launch_all(folder, listed, nproc=4)
            for name, overrides in listed.items():
                if (name, dtype) not in singles:
                    singles[name, dtype] = one_process(folder, name, overrides)
                table.setdefault(name, {})[column] = max_difference(singles[name, dtype], folder / name)
    print("| model | optimizer | " + " | ".join(f"{c}: max abs diff" for c in columns) + " |")
    print("|---|---|" + "---:|" * len(columns))
    for name, row in table.items():
        model, optimizer = next((m, name.removeprefix(f"{m}-")) for m in MODELS if name.startswith(m))
        print(f"| {model} | {optimizer} | " + " | ".join(f"{row[c]:.1e}" for c in columns) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
