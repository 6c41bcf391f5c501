"""`optim_step.py --world-size N`: each optimizer's step time and bytes sent per step under DDP and FSDP2, on N ranks.

    python benchmarks/optim_step.py --world-size 4 --preset llama-60m --vocab 8192 --only adamw,muon,soap

optim_step.py starts itself again under torchrun (gloo on CPU, nccl on GPU). For each parallel mode the model is
wrapped as the trainer wraps it (training/distributed.py) and each optimizer built as the trainer builds it
(training/fsdp_optimizer.py: under FSDP2, whole-tensor updates on owner ranks). Gradients are fixed random tensors,
the same on every rank (as DDP's all-reduce leaves them) or their shards (FSDP2), so only the update is timed:

- ms/step: optimizer.step() from a barrier to the slowest rank's end, the median of --steps steps after a warm-up;
- MiB/step: a rank's share (mean over ranks) of the bytes one training step moves, counted by CollectiveBytes
  (optbench/training/collective_bytes.py: the least traffic each collective needs): the gradient synchronisation of a
  forward and backward, the same for every optimizer (DDP's all-reduce; FSDP2's all-gathers and reduce-scatters),
  plus the optimizer's own collectives (Muon's, SOAP's and Shampoo's broadcasts of the work split over DDP ranks;
  the owner ranks' all-to-alls under FSDP2), shown apart in brackets, averaged over --comm-steps further steps
  (10 hold one of SOAP's eigenbasis refreshes, broadcast under DDP; none of Shampoo's root refreshes, every 100).

Both are ratios to AdamW measured in the same run.
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import time
from argparse import Namespace
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from optim_step import learned_weights, stepper
from torch.distributed.tensor import DTensor, distribute_tensor

from optbench import optim
from optbench.config.compose import compose
from optbench.models import build
from optbench.optim.registry import make_config
from optbench.training import distributed, fsdp_optimizer
from optbench.training.collective_bytes import CollectiveBytes

PARALLEL = ("ddp", "fsdp")
MIB = 2**20


def main(args: Namespace) -> None:
    """Under torchrun: measure on this rank. Otherwise: start N ranks under torchrun, each running this again."""
    if "WORLD_SIZE" not in os.environ:
        threads = max(1, (os.cpu_count() or 1) // args.world_size)
        env = {"OMP_NUM_THREADS": str(threads), **os.environ}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.world_size}",
               *sys.argv]
        sys.exit(subprocess.run(cmd, env=env, check=False).returncode)
    world = distributed.from_environment()
    with distributed.process_group(world):
        device = torch.device(distributed.init(world, args.device))
        measure_all(args, world, device)


def make_model(args: Namespace, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return build(compose([f"model={args.preset}", *args.set]).model, args.vocab, 1024).to(device)


def measure_all(args: Namespace, world: distributed.World, device: torch.device) -> None:
    names = [n for n in args.only.split(",") if n] or optim.names()
    names = ["adamw", *[n for n in names if n != "adamw"]]  # AdamW first: the baseline of every ratio
    learned = learned_weights()
    model = make_model(args, device)
    n_params = sum(p.numel() for p in model.parameters())
    sync = {parallel: gradient_sync_bytes(args, parallel, world, device) for parallel in PARALLEL}
    if world.is_main:
        print_header(args, world, device, n_params, sync)
    baseline: dict[str, tuple[float, float]] = {}
    for name in names:
        cells = []
        for parallel in PARALLEL:
            cfg = make_config(name, **learned.get(name, {}))
            if parallel == "fsdp" and optim.fsdp_mode(cfg) == "refused":
                cells.append(f"{'refused':>15}{'':>9}{'':>23}{'':>9}")
                continue
            seconds, own = measure(cfg, name, parallel, args, world, device)
            total = sync[parallel] + own
            baseline.setdefault(parallel, (seconds, total))
            base_s, base_b = baseline[parallel]
            cells.append(f"{1000 * seconds:>15.1f}{seconds / base_s:>9.2f}"
                         f"{f'{total / MIB:.2f} (+{own / MIB:.2f})':>23}{total / base_b:>9.2f}")
        if world.is_main:
            print(f"{name:<12}" + "".join(cells), flush=True)


def print_header(args: Namespace, world: distributed.World, device: torch.device, n_params: int,
                 sync: dict[str, float]) -> None:
    print(f"{' '.join([args.preset, *args.set])} (vocab {args.vocab}): {n_params / 1e6:.1f}M parameters, "
          f"{world.size} ranks on {device.type} ({dist.get_backend()}), {torch.get_num_threads()} threads per rank")
    print(f"ms/step: optimizer.step(), the slowest rank's, median of {args.steps} steps. MiB/step: a rank's share of "
          f"the bytes moved between ranks in a training step, mean of {args.comm_steps} steps: gradient sync (DDP "
          f"{sync['ddp'] / MIB:.2f}, FSDP2 {sync['fsdp'] / MIB:.2f}) + the optimizer's own collectives (in brackets)")
    print(f"{'optimizer':<12}" + "".join(f"{label + ' ms/step':>15}{'x AdamW':>9}{label + ' MiB/step':>23}"
                                         f"{'x AdamW':>9}" for label in ("DDP", "FSDP2")), flush=True)


def gradient_sync_bytes(args: Namespace, parallel: str, world: distributed.World, device: torch.device) -> float:
    """A rank's share of the bytes a forward and backward of the wrapped model moves (mean over ranks): the part of a
    training step's communication every optimizer has. DDP's all-reduce is checked against the parameter bytes, so a
    count that missed the reducer's collectives (issued from C++) cannot pass for a figure."""
    model = make_model(args, device)
    replica = distributed.replicate(model, world, parallel)
    tokens = torch.randint(args.vocab, (1, 64), generator=torch.Generator().manual_seed(world.rank)).to(device)
    with CollectiveBytes() as counter:
        logits = replica(tokens)
        F.cross_entropy(logits.float().flatten(0, 1), tokens.flatten()).backward()
    if parallel == "ddp":
        expected = 2 * (world.size - 1) / world.size * sum(p.numel() * p.element_size() for p in model.parameters())
        if not math.isclose(counter.total, expected, rel_tol=1e-12):
            raise RuntimeError(f"DDP's gradient all-reduce counted {counter.total} bytes, not {expected}")
    return mean_over_ranks(counter.total, world, device)


def mean_over_ranks(value: float, world: distributed.World, device: torch.device) -> float:
    return distributed.sum_(world, [value], device)[0] / world.size


def set_gradients(model: torch.nn.Module) -> None:
    """The same random gradient on every rank, as its shard where the parameter is FSDP2's DTensor."""
    generator = torch.Generator().manual_seed(0)
    for p in model.parameters():
        g = (torch.randn(p.shape, generator=generator) * 1e-3).to(p.device)
        p.grad = distribute_tensor(g, p.device_mesh, p.placements, src_data_rank=None) if isinstance(p, DTensor) else g


def measure(cfg: optim.OptimConfig, name: str, parallel: str, args: Namespace, world: distributed.World,
            device: torch.device) -> tuple[float, float]:
    """(seconds per step, the slowest rank's median; a rank's share of the bytes the optimizer's step moves, mean over
    steps and ranks)."""
    model = make_model(args, device)
    distributed.replicate(model, world, parallel)  # FSDP2 shards in place; DDP's wrapper is not needed to step
    optimizer = fsdp_optimizer.build(cfg, model, optim.plan(cfg, model))  # the FSDP2 form where parameters are DTensors
    set_gradients(model)
    step = stepper(optimizer, name)
    seconds = slowest_median(step, args.steps, world, device)
    with CollectiveBytes() as counter:
        for _ in range(args.comm_steps):
            step()
    return seconds, mean_over_ranks(counter.total / args.comm_steps, world, device)


def slowest_median(step: Callable[[], None], steps: int, world: distributed.World, device: torch.device) -> float:
    """Median over `steps` steps of the slowest rank's time, each step started together, after one warm-up."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    step()
    samples = []
    for _ in range(steps):
        dist.barrier()
        start = time.perf_counter()
        step()
        sync()
        samples.append(time.perf_counter() - start)
    slowest = torch.tensor(samples, dtype=torch.float64, device=device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return statistics.median(slowest.tolist())
