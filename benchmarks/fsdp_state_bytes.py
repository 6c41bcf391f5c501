"""Optimizer-state bytes held by each rank under FSDP2 (train.parallel=fsdp) and under DDP, against one process.

    python -m torch.distributed.run --standalone --nproc_per_node=N benchmarks/fsdp_state_bytes.py \
        [--optim muon,soap] [--preset llama-60m] [--vocab 32000] [--steps 2] [--json OUT]

Each optimizer is built as the trainer builds it (FSDP2: training/fsdp_optimizer.py; DDP: a full optimizer per
rank) on the preset, and stepped `--steps` times on random gradients (state is created by the first step). A
rank's bytes are the tensors of its state dict (a DTensor counts its local shard, a whole tensor's state lives on
its owner): the peak over the steps is reported per rank, with one process's figure for the same model. `--json`
also records, for the matrix part of a matrix optimizer, its bytes per rank and how many ranks hold each tensor's
state (tests/reliability/test_fsdp_owners.py checks them).
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.tensor import distribute_tensor

from optbench import optim
from optbench.config.compose import compose
from optbench.models import build
from optbench.optim.functional import sharding
from optbench.optim.memory import local_state_bytes
from optbench.training import distributed, fsdp_optimizer


def random_grads(model: torch.nn.Module, generator: torch.Generator) -> None:
    """The same random gradient on every rank, as a DTensor where the parameter is one."""
    for p in model.parameters():
        g = torch.randn(p.shape, generator=generator) * 1e-3
        p.grad = distribute_tensor(g, p.device_mesh, p.placements) if hasattr(p, "device_mesh") else g


def peak_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int, local: bool) -> int:
    """The largest state this process holds over `steps` steps (`local`: a one-process reference among ranks)."""
    generator, peak = torch.Generator().manual_seed(0), 0
    for _ in range(steps):
        random_grads(model, generator)
        if local:
            with sharding.local_only():
                optimizer.step()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        peak = max(peak, local_state_bytes(optimizer))
    return peak


def matrix_part(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer | None:
    """The matrix optimizer inside a hybrid (Muon's, without its AdamW backup), else None."""
    inner = getattr(optimizer, "inner", optimizer)
    return getattr(inner, "parts", {}).get("matrix")


def one_process(cfg: optim.OptimConfig, model: torch.nn.Module, steps: int) -> dict:
    """The reference figures, on rank 0 alone: the whole state and its matrix part."""
    optimizer = optim.build(cfg, model)
    result = {"single": peak_bytes(model, optimizer, steps, local=True)}
    if matrix_part(optimizer) is not None:
        result["matrix_single"] = local_state_bytes(matrix_part(optimizer))
    return result


def measure(name: str, preset: str, vocab: int, parallel: str, steps: int, world: distributed.World) -> dict:
    torch.manual_seed(0)
    model = build(compose([f"model={preset}"]).model, vocab, 256)
    cfg = optim.make_config(name)
    result = one_process(cfg, copy.deepcopy(model), steps) if world.is_main else {}
    if parallel == "fsdp":
        distributed.replicate(model, world, "fsdp")
        optimizer = fsdp_optimizer.build(cfg, model, optim.plan(cfg, model))
    else:
        optimizer = optim.build(cfg, model)  # DDP keeps a whole optimizer on every rank
    mine = peak_bytes(model, optimizer, steps, local=False)
    result["ranks"] = distributed.gather_objects(world, mine)
    matrices = matrix_part(optimizer)
    if matrices is not None:
        result["matrix_ranks"] = distributed.gather_objects(world, local_state_bytes(matrices))
        holders = [int(bool(matrices.state.get(p))) for group in matrices.param_groups for p in group["params"]]
        counts = torch.tensor(holders, dtype=torch.int64)
        dist.all_reduce(counts)
        result["ranks_holding_each_matrix"] = counts.tolist()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optim", default="muon,soap")
    parser.add_argument("--preset", default="llama-60m")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--parallel", default="fsdp,ddp")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    world = distributed.from_environment()
    results = {}
    with distributed.process_group(world):
        distributed.init(world, "cpu")
        for parallel in args.parallel.split(","):
            for name in args.optim.split(","):
                results[f"{name}/{parallel}"] = measure(name, args.preset, args.vocab, parallel, args.steps, world)
    if not world.is_main:
        return
    print(f"{args.preset}, vocab {args.vocab}, {world.size} ranks: optimizer-state MiB per rank (peak over "
          f"{args.steps} steps)")
    print(f"{'optimizer':<18}{'one process':>12}{'max rank':>10}{'sum':>10}{'max/one':>9}   per rank")
    for key, r in results.items():
        mib = [b / 2**20 for b in r["ranks"]]
        print(f"{key:<18}{r['single'] / 2**20:>12.2f}{max(mib):>10.2f}{sum(mib):>10.2f}"
              f"{max(r['ranks']) / r['single']:>9.2f}   {' '.join(f'{m:.2f}' for m in mib)}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
