"""Moving FSDP2 shards to the rank that owns the whole tensor, and whole tensors back to the shards.

FSDP2 shards each parameter (and its gradient) on dimension 0: rank r holds a contiguous run of rows (`shard_rows`).
`gather_to_owners` assembles each tensor whole on its owner from every rank's rows; `scatter_to_shards` sends each
rank its rows of the tensors an owner holds whole. Each direction is one `all_to_all_single` per dtype carrying
every tensor at once (batched over shapes and owners, so a step pays one collective's latency, not one per
tensor); gloo (CPU) and NCCL both implement it. Every rank calls both with the same tensors in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist


def shard_rows(dim0: int, world_size: int) -> tuple[int, ...]:
    """Rows of dimension 0 each rank holds under FSDP2's Shard(0): torch.chunk's split, ceil(n / world) rows per
    rank in rank order (the last ranks fewer, or none)."""
    per = -(-dim0 // world_size)
    return tuple(max(0, min(dim0, (r + 1) * per) - r * per) for r in range(world_size))


@dataclass(frozen=True)
class Layout:
    """Where one whole tensor lives: its shape and dtype, its owner, and the rows each rank holds."""

    shape: torch.Size
    dtype: torch.dtype
    owner: int
    rows: tuple[int, ...]

    def numel_on(self, rank: int) -> int:
        return self.rows[rank] * self.shape[1:].numel()

    def offset_of(self, rank: int) -> int:
        """Where rank's rows start in the flattened whole tensor."""
        return sum(self.rows[:rank]) * self.shape[1:].numel()


def gather_to_owners(layouts: Sequence[Layout], shards: Sequence[torch.Tensor], rank: int,
                     device: torch.device) -> dict[int, torch.Tensor]:
    """{i: the whole tensor i} for each tensor this rank owns, from `shards` (this rank's rows of every tensor)."""
    whole: dict[int, torch.Tensor] = {}
    for dtype, indices in _by_dtype(layouts).items():
        world = len(layouts[indices[0]].rows)
        sends = [[shards[i] for i in indices if layouts[i].owner == dest] for dest in range(world)]
        mine = [i for i in indices if layouts[i].owner == rank]
        received = _all_to_all(sends, [[layouts[i].numel_on(src) for i in mine] for src in range(world)],
                               dtype, device)
        for k, i in enumerate(mine):  # rank order is row order: the pieces concatenate into the whole tensor
            whole[i] = torch.cat([received[src][k] for src in range(world)]).view(layouts[i].shape)
    return whole


def scatter_to_shards(layouts: Sequence[Layout], whole: dict[int, torch.Tensor], rank: int,
                      device: torch.device) -> dict[int, torch.Tensor]:
    """{i: this rank's rows of tensor i} for every tensor, from `whole` (the tensors this rank owns)."""
    shards: dict[int, torch.Tensor] = {}
    for dtype, indices in _by_dtype(layouts).items():
        world = len(layouts[indices[0]].rows)
        mine = [i for i in indices if layouts[i].owner == rank]
        sends = [[_rows_of(whole[i], layouts[i], dest) for i in mine] for dest in range(world)]
        sizes = [[layouts[i].numel_on(rank) for i in indices if layouts[i].owner == src] for src in range(world)]
        received = _all_to_all(sends, sizes, dtype, device)
        for src in range(world):
            for piece, i in zip(received[src], [i for i in indices if layouts[i].owner == src]):
                shards[i] = piece.view(layouts[i].rows[rank], *layouts[i].shape[1:])
    return shards


def _rows_of(tensor: torch.Tensor, layout: Layout, rank: int) -> torch.Tensor:
    start = layout.offset_of(rank)
    return tensor.reshape(-1)[start:start + layout.numel_on(rank)]


def _by_dtype(layouts: Sequence[Layout]) -> dict[torch.dtype, list[int]]:
    """Indices of the tensors of each dtype (a collective carries one dtype), in an order every rank shares."""
    groups: dict[torch.dtype, list[int]] = {}
    for i, layout in enumerate(layouts):
        groups.setdefault(layout.dtype, []).append(i)
    return dict(sorted(groups.items(), key=lambda item: str(item[0])))


def _all_to_all(sends: list[list[torch.Tensor]], sizes: list[list[int]], dtype: torch.dtype,
                device: torch.device) -> list[list[torch.Tensor]]:
    """sends[dest]: what goes to rank dest; sizes[src]: the numels rank src sends here. Returns the pieces received
    from each rank, flat (views of one buffer)."""
    flat = [t.reshape(-1) for pieces in sends for t in pieces]
    send = torch.cat(flat) if flat else torch.empty(0, dtype=dtype, device=device)
    recv = torch.empty(sum(map(sum, sizes)), dtype=dtype, device=device)
    dist.all_to_all_single(recv, send, output_split_sizes=[sum(s) for s in sizes],
                           input_split_sizes=[sum(t.numel() for t in pieces) for pieces in sends])
    views = iter(recv.split([n for numels in sizes for n in numels]))
    return [[next(views) for _ in numels] for numels in sizes]
