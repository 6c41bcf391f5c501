"""Data parallelism under torchrun: process group, per-rank device, and the few collectives the trainer needs.

    torchrun --nproc_per_node=N -m optbench train ...      (gloo on CPU, nccl on CUDA; multi-node alike)

Without torchrun's environment (WORLD_SIZE unset or 1) everything here is a no-op, so the single
process path is the same code. Gradient accumulation is split across ranks: rank r computes the
global micro-batches m with m % world == r (see data/loader.py), so any world size sees the same
global batch.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from optbench import optim
from optbench.config.schema import OptimConfig
from optbench.errors import UserError
from optbench.optim.routing import Routed


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def from_environment() -> World:
    """The world torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK (one process without it)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def init(world: World, device_name: str) -> str:
    """Join the process group (once) and return the device this rank should use."""
    if not world.distributed:
        return device_name
    on_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if on_cuda:
        torch.cuda.set_device(world.local_rank)
        device_name = f"cuda:{world.local_rank}"
    elif device_name not in ("auto", "cpu"):
        raise UserError(f"train.device={device_name} is not supported under torchrun; valid: auto, cpu, cuda")
    else:
        device_name = "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if on_cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    return device_name


def replicate(model: torch.nn.Module, world: World, parallel: str = "ddp") -> torch.nn.Module:
    """The model as ranks train it: itself in one process, a DDP replica, or FSDP2-sharded in place.

    DDP: buffers (RoPE tables) are deterministic, so they are not re-synced at every forward, and ranks may
    run different numbers of evaluation forwards without a collective to match. FSDP2: each block is one
    unit of all-gather, and the root holds the embeddings and head (tied in GPT-2).
    """
    if not world.distributed:
        return model
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard  # FSDP2 and DTensor (~1 s to import): for FSDP runs only

        for block in model.blocks():
            fully_shard(block)
        fully_shard(model)
        return model
    no_forward_sync = ({"forward_sync_buffers": False}
                       if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                       else {"broadcast_buffers": False})  # the name before torch 2.14
    return DistributedDataParallel(model, **no_forward_sync)


@contextlib.contextmanager
def gradient_sync(replica: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Reduce gradients over ranks only in the backward passes run with `enabled` (the last micro-batch)."""
    if isinstance(replica, DistributedDataParallel) and not enabled:
        with replica.no_sync():
            yield
    elif is_fsdp(replica):
        replica.set_requires_gradient_sync(enabled)
        yield
    else:
        yield


def is_fsdp(model: torch.nn.Module) -> bool:
    """Whether `model` was sharded by FSDP2, without importing FSDP: where nothing imported it, nothing was."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    return fsdp is not None and isinstance(model, fsdp.FSDPModule)


def build_optimizer(cfg: OptimConfig, model: nn.Module, replica: nn.Module,
                    plan: list[Routed]) -> torch.optim.Optimizer:
    """The run's optimizer: `optim.build`, or under FSDP2 that optimizer stepping the shards, and whole tensors on
    their owner ranks (fsdp_optimizer.py)."""
    if not is_fsdp(replica):
        return optim.build(cfg, model, plan)
    from optbench.training import fsdp_optimizer

    return fsdp_optimizer.build(cfg, model, plan)


def load_full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, model_state: dict,
                    optimizer_state: dict) -> None:
    """Load one process's state dicts (a single-file checkpoint's), which every rank holds whole; under FSDP2 each
    rank keeps its part (the optimizer is then an FSDPOptimizer, see fsdp_optimizer.py)."""
    if not is_fsdp(model):
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, model_state, options=StateDictOptions(full_state_dict=True))
    optimizer.load_full_state_dict(optimizer_state)  # after the weights: owners re-read their working copies


def as_float(value: torch.Tensor) -> float:
    """A 0-d tensor's value, gathering it first if FSDP made it a DTensor (the clipped gradient norm)."""
    return (value.full_tensor() if hasattr(value, "full_tensor") else value).item()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def sum_(world: World, values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of `values` over ranks (float64, so eval sums lose nothing)."""
    if not world.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def any_(world: World, flag: bool, device: torch.device) -> bool:
    """True on every rank if it is true on one (all ranks must stop at the same step)."""
    return sum_(world, [float(flag)], device)[0] > 0 if world.distributed else flag


def gather_objects(world: World, obj: Any) -> list[Any]:
    """`obj` of every rank, in rank order (picklable values only; used for per-rank RNG states)."""
    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


@contextlib.contextmanager
def process_group(world: World) -> Iterator[None]:
    """The process group's one owner. A group joined inside the block (the Trainer joins once, in `init`) is
    left when the block ends, on an error too; a group joined before the block belongs to whoever joined it,
    so several runs in one launch can share it."""
    owned = world.distributed and not dist.is_initialized()
    try:
        yield
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()
