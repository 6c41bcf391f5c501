"""Training runs under torchrun for the sharded-checkpoint tests, in order, in one process group:

    python -m torch.distributed.run --standalone --nproc_per_node=N -m tests.reliability.sharded_runs PLAN.json

PLAN.json is a list of runs, each {"overrides": [...], "outputs": PATH or null, "resume_copy_of": RUN_DIR or null}:
- overrides: what `optbench train` would be given;
- outputs: where rank 0 saves what the trained (live, FSDP2-sharded) model computes: its logits on the first
  validation batch ("x", "logits") and the text `optbench sample max_new_tokens=32` draws from it ("sample"), to
  compare with what is read back from its checkpoint;
- resume_copy_of: the run directory is first made a copy of RUN_DIR holding only its oldest checkpoint, as a run
  stopped after it leaves its folder, so the run resumes from it with run.resume=auto.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

from optbench.config.compose import compose
from optbench.training import distributed
from optbench.training.checkpoint import CheckpointStore
from optbench.training.sample import SampleRequest, continuation
from optbench.training.trainer import Trainer

SAMPLE_TOKENS = 32


def copy_stopped_run(source: Path, run_dir: Path) -> None:
    """run_dir as `source` was when its first checkpoint had just been written (metrics past it are truncated on
    resume)."""
    shutil.copytree(source, run_dir, ignore=shutil.ignore_patterns("checkpoints"))
    store = CheckpointStore(source / "checkpoints")
    first = store.sharded_path(store.steps()[0])
    shutil.copytree(first, run_dir / "checkpoints" / first.name)


def live_outputs(trainer: Trainer) -> dict:
    """What the live model computes, every rank taking part in its forwards."""
    x = trainer.val_batches[0][0].to(trainer.device)
    trainer.model.eval()
    with torch.no_grad():
        logits = trainer.model(x)
    trainer.model.train()
    request = SampleRequest(max_new_tokens=SAMPLE_TOKENS)
    text = continuation(trainer.model, trainer.tokenizer, trainer.tokenizer.encode(request.prompt),
                        request.max_new_tokens, request.temperature, request.top_k, request.seed,
                        trainer.data.vocab_size)
    return {"x": x, "logits": logits, "sample": text}


def main(plan_file: str) -> int:
    world = distributed.from_environment()
    with distributed.process_group(world):
        distributed.init(world, "cpu")  # joined here, so each run below leaves the group open for the next
        for run in json.loads(Path(plan_file).read_text()):
            cfg = compose(run["overrides"])
            if run.get("resume_copy_of") and world.is_main:
                copy_stopped_run(Path(run["resume_copy_of"]), Path(cfg.run.dir))
            distributed.barrier(world)
            trainer = Trainer(cfg)
            summary = trainer.train()
            if summary["status"] != "completed":
                print(f"rank {world.rank}: {run['overrides']} ended {summary['status']}", file=sys.stderr)
                return 1
            outputs = live_outputs(trainer) if run.get("outputs") else None
            if outputs is not None and world.is_main:
                torch.save(outputs, run["outputs"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
