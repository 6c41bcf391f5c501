"""What a process pays to start: the trainer, a bench worker and the CLI do not import FSDP2, DTensor or
torch.distributed.checkpoint (with the torch compiler they pull in, ~1 s of CPU per process) unless a run shards its
model or reads a sharded checkpoint. Every bench worker, torchrun rank of a DDP run and `optbench train` starts
without them; the torchrun tests check that FSDP2 runs still find them where they are needed."""

import subprocess
import sys

HEAVY = ("torch.distributed.tensor", "torch.distributed.checkpoint", "torch.distributed.fsdp")


def test_the_trainer_and_a_bench_worker_start_without_fsdp_dtensor_or_dcp():
    code = ("import sys; import optbench.training.trainer, optbench.bench.worker, optbench.cli; "
            f"print(sorted({{m.split('.')[2] for m in sys.modules if m.startswith({HEAVY!r})}}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"imported at start: {done.stdout.strip()}"
