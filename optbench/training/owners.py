"""Which rank computes each whole tensor's update under FSDP2 (see fsdp_optimizer.py): balanced by estimated cost.

Owners are a function of the shapes and the world size alone, so every rank computes the same assignment
without communicating, and a resumed run (same world size) gets the same one.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence


def update_cost(shape: Sequence[int]) -> float:
    """Estimated FLOPs of one whole-tensor update: m n min(m, n) per matrix over the last two dimensions (the
    order of Newton–Schulz's matmuls, of an eigendecomposition or an SVD of its factors), times the number of
    matrices in the leading dimensions (MoE experts); a vector's update is elementwise, n."""
    if len(shape) < 2:
        return float(math.prod(shape))
    m, n = shape[-2], shape[-1]
    return float(math.prod(shape[:-2]) * m * n * min(m, n))


def assign_owners(shapes: Sequence[Sequence[int]], world_size: int) -> list[int]:
    """The owner rank of each tensor: longest processing time first (the most expensive tensor goes to the rank
    with the least cost so far; ties to the lower rank, then the earlier tensor), within 4/3 of the best split."""
    order = sorted(range(len(shapes)), key=lambda i: (-update_cost(shapes[i]), i))
    loads = [(0.0, rank) for rank in range(world_size)]  # a heap of (cost so far, rank)
    owners = [0] * len(shapes)
    for i in order:
        load, rank = heapq.heappop(loads)
        owners[i] = rank
        heapq.heappush(loads, (load + update_cost(shapes[i]), rank))
    return owners
