"""Split an optimizer's expensive per-matrix work across data-parallel ranks, then share the results.

Under DDP every rank holds the same gradients and optimizer state, so each would redo the same
Newton–Schulz iterations, eigendecompositions or inverse roots. Instead, job i runs on rank
i % world and its owner broadcasts what it wrote (as modded-nanogpt's distributed Muon does with an
all-gather): the same numbers on every rank, 1/world of the work on each. Without an initialised
process group (one process) every job simply runs here.

Under FSDP2 the roles turn around (optbench/training/fsdp_optimizer.py): each whole tensor already has one owner
rank that steps it alone, so inside that step (`local_only`) the work is not split again, and a rank's optimizer
sees the tensors other ranks step (`stepped_elsewhere`) without their gradients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.distributed as dist

_local_only = False

Job = tuple[Callable[[], None], Sequence[torch.Tensor]]
"""(work that writes its results in place, the tensors it writes)."""


def world() -> tuple[int, int]:
    """(size, rank) of the default process group, or (1, 0) without one or inside `local_only`."""
    if dist.is_available() and dist.is_initialized() and not _local_only:
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """Run every job here and share nothing: an FSDP owner's step, which other ranks do not take part in."""
    global _local_only
    outer, _local_only = _local_only, True
    try:
        yield
    finally:
        _local_only = outer


def stepped_elsewhere(p: torch.Tensor) -> torch.device | None:
    """The device another rank steps `p` on in this step (FSDP2: p's owner; here p has no gradient), else None.
    An optimizer whose random stream runs through its parameters in order draws p's share of it anyway, so the
    stream stays where one process's is (PSGD-Kron's probes)."""
    return getattr(p, "stepped_elsewhere_on", None)


def broadcast_from_owners(tensors: Sequence[torch.Tensor], owners: Sequence[int]) -> None:
    """tensors[i] <- the owner's tensors[i] on every rank (asynchronous, issued in the same order everywhere).

    Collectives need contiguous memory: a strided tensor (an eigenbasis from eigh is column-major) travels
    through a contiguous copy and is written back in place, keeping its layout and so its matmul results.
    """
    buffers = [t if t.is_contiguous() else t.contiguous() for t in tensors]
    handles = [dist.broadcast(b, src=owner, async_op=True) for b, owner in zip(buffers, owners)]
    for handle in handles:
        handle.wait()
    for t, b in zip(tensors, buffers):
        if b is not t:
            t.copy_(b)


def run_sharded(jobs: Sequence[Job]) -> None:
    """Run each job on one rank (round robin) and broadcast its outputs; in one process, run them all."""
    size, rank = world()
    if size == 1:
        for work, _ in jobs:
            work()
        return
    outputs, owners = [], []
    for i, (work, written) in enumerate(jobs):
        if i % size == rank:
            work()
        outputs += written
        owners += [i % size] * len(written)
    broadcast_from_owners(outputs, owners)

