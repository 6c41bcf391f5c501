"""Block-wise 8-bit quantisation of optimizer state (Dettmers et al. 2022, arXiv 2110.02861, Section 2).

A tensor is cut into blocks of `BLOCK_SIZE` consecutive elements (the last one zero-padded); each block is
divided by its absolute maximum (kept as one fp32 scale per block), and each normalised value in [-1, 1]
is stored as the uint8 index of the nearest entry of a 256-entry code map:

    codes, absmax = quantize_blockwise(x, qmap)        x ~ qmap[codes] * absmax (per block)
    x_hat = dequantize_blockwise(codes, absmax, qmap)

The code maps are the paper's dynamic (tree) data type, as bitsandbytes' `create_dynamic_map` builds
them: after the sign bit (signed map only), a run of zero bits selects a decade 10^-6 ... 10^0 and the bits
left after the indicator bit split [0.1, 1] of that decade linearly, so small magnitudes keep a relative
precision that a linear map would lose. Adam's first moment uses the signed map, its second moment (never
negative) the unsigned one, which spends the sign bit on one more fraction bit. The values are
bit-identical to bitsandbytes 0.50.2 and torchao 0.18 (`create_dynamic_map`, checked in the tests).
"""

from __future__ import annotations

import weakref
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

BLOCK_SIZE = 256
"""Elements per quantisation block: the paper's (and bitsandbytes') block size."""
EXPONENT_BITS = 7
"""Decades 10^-6 .. 10^0 of the dynamic map (bitsandbytes' max_exponent_bits)."""


@lru_cache(maxsize=2)
def _dynamic_map_values(signed: bool) -> tuple[float, ...]:
    values: list[float] = [0.0, 1.0]
    for decade in range(EXPONENT_BITS):
        # Decade 10^(decade - 6): 2^decade linear steps over [0.1, 1] (2^(decade+1) without a sign bit),
        # each represented by the midpoint of its step; fp32 arithmetic, as bitsandbytes computes them.
        steps = 2 ** decade * (1 if signed else 2)
        edges = torch.linspace(0.1, 1.0, steps + 1, dtype=torch.float32)
        mids = (edges[:-1] + edges[1:]) / 2.0
        scale = 10.0 ** (decade - (EXPONENT_BITS - 1))
        values += (scale * mids).tolist()
        if signed:
            values += (-scale * mids).tolist()
    assert len(values) == 256
    return tuple(sorted(values))


def dynamic_map(signed: bool, device: torch.device | str | None = None) -> Tensor:
    """The 256 sorted values of the dynamic tree code map (fp32), signed for m or unsigned for v."""
    return torch.tensor(_dynamic_map_values(signed), dtype=torch.float32, device=device)


def nearest_code(normalized: Tensor, qmap: Tensor) -> Tensor:
    """uint8 index of the map entry nearest to each value: the entry at or below it, stepped up when the value
    is at least half-way to the next one (torchao's arithmetic, so ties break alike).

    A binary search per element (torch.bucketize) cost 30 ns per value on CPU; instead the top 16 bits of each
    fp32 value (sign, exponent, 7 mantissa bits) index a table of the nearest code for that bit prefix, and
    one comparison decides between it and the next code. `_prefix_table` checks that no prefix spans more.
    """
    table, low, half_gap = _prefix_table(qmap)
    prefix = (normalized.float().contiguous().view(torch.int32) >> 16) & 0xFFFF
    code = table.index_select(0, prefix.view(-1)).view(normalized.shape)
    up = (normalized - low.index_select(0, code.view(-1)).view(code.shape)) >= \
        half_gap.index_select(0, code.view(-1)).view(code.shape)
    return (code + up).to(torch.uint8)


_TABLES: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
"""id(map) -> its prefix table, dropped when the map tensor is (tensors cannot be weak dict keys: == is elementwise)."""


def _prefix_table(qmap: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(int32 code nearest the smallest value of each 16-bit prefix, the map, each code's half gap to the next),
    built once per map tensor."""
    if id(qmap) not in _TABLES:
        prefixes = torch.arange(1 << 16, dtype=torch.int32, device=qmap.device) << 16
        raw = torch.stack([prefixes, prefixes | 0xFFFF]).view(torch.float32)
        finite = raw.isfinite().all(0)  # the inf/NaN prefixes: no normalized value has them
        ends = raw.nan_to_num(0.0).clamp(-1.0, 1.0)
        codes = _bisect_nearest(ends, qmap)
        smallest_first = ends[0] <= ends[1]  # negative prefixes grow downwards
        first, last = torch.where(smallest_first, codes[0], codes[1]), torch.where(smallest_first, codes[1], codes[0])
        if ((last - first).abs() * finite).max() > 1:
            raise ValueError("code map too fine for a 16-bit prefix table")
        half_gap = torch.cat([(qmap[1:] - qmap[:-1]) * 0.5, qmap.new_full((1,), float("inf"))])
        _TABLES[id(qmap)] = (first.int(), qmap, half_gap)
        weakref.finalize(qmap, _TABLES.pop, id(qmap), None)
    return _TABLES[id(qmap)]


def _bisect_nearest(normalized: Tensor, qmap: Tensor) -> Tensor:
    below = (torch.bucketize(normalized, qmap, right=True) - 1).clamp_(0, qmap.numel() - 1)
    above = (below + 1).clamp_(max=qmap.numel() - 1)
    low, high = qmap[below], qmap[above]
    return torch.where(normalized - low >= (high - low) * 0.5, above, below)


def _blocks(x: Tensor, block_size: int) -> Tensor:
    flat = x.reshape(-1)
    pad = -flat.numel() % block_size
    if pad:
        flat = F.pad(flat, (0, pad))
    return flat.view(-1, block_size)


def num_blocks(numel: int, block_size: int = BLOCK_SIZE) -> int:
    return -(-numel // block_size)


def quantize_blockwise(x: Tensor, qmap: Tensor, block_size: int = BLOCK_SIZE) -> tuple[Tensor, Tensor]:
    """(uint8 codes shaped like x, fp32 absmax per block): all blocks at once, no loop over blocks."""
    blocks = _blocks(x.float(), block_size)
    absmax = blocks.abs().amax(dim=1)
    normalized = blocks / absmax.clamp_min(1e-12).unsqueeze(1)
    codes = nearest_code(normalized, qmap).view(-1)[:x.numel()]
    return codes.view(x.shape), absmax


def dequantize_blockwise(codes: Tensor, absmax: Tensor, qmap: Tensor, block_size: int = BLOCK_SIZE) -> Tensor:
    """fp32 values qmap[codes] * absmax of their block, shaped like `codes`."""
    values = _blocks(qmap.index_select(0, codes.reshape(-1).int()), block_size) * absmax.unsqueeze(1)
    return values.view(-1)[:codes.numel()].view(codes.shape)


def quantize_blockwise_(codes: Tensor, absmax: Tensor, x: Tensor, qmap: Tensor, block_size: int = BLOCK_SIZE) -> None:
    """Requantise `x` into existing state tensors, in place."""
    new_codes, new_absmax = quantize_blockwise(x, qmap, block_size)
    codes.copy_(new_codes)
    absmax.copy_(new_absmax)
