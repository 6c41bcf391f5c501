"""Low-rank gradient projections, shared by GaLore (SVD bases) and APOLLO (seeded random Gaussian bases).

A matrix gradient G (m x n) is projected on its smaller side and keeps its larger one, as both papers do:

    side "right" (m >= n):  Q is r x n,  R = G Q^T   (m x r),  back: R Q        (channels: the m rows)
    side "left"  (m <  n):  Q is m x r,  R = Q^T G   (r x n),  back: Q R        (channels: the n columns)

GaLore's Q holds the top-r singular vectors of the gradient at the refresh step (Vh[:r] on the right,
U[:, :r] on the left); APOLLO's holds N(0, 1/r) entries drawn from a seed, so only the seed needs
keeping: `random_projection(seed, ...)` gives the same Q on every call, after a resume included.
Both refresh Q every `update_proj_gap` updates, counted from the first (`refresh_due`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SIDES = ("right", "left")
PROJ_TYPES = ("std", "reverse_std", "right", "left")
"""GaLore's projection types: std projects the smaller side, reverse_std the larger, right/left a fixed one."""


def projection_side(shape: torch.Size | tuple[int, ...], proj_type: str = "std") -> str:
    """Which side of an m x n matrix gets projected (see the module docstring)."""
    rows, cols = shape
    if proj_type == "std":
        return "right" if rows >= cols else "left"
    if proj_type == "reverse_std":
        return "left" if rows >= cols else "right"
    if proj_type in SIDES:
        return proj_type
    raise ValueError(f"unknown projection type {proj_type!r}")


def refresh_due(step: int, update_proj_gap: int) -> bool:
    """A new projection before update number `step` (0-based): at 0, gap, 2 gap, ..."""
    return step % update_proj_gap == 0


def project(grad: Tensor, basis: Tensor, side: str) -> Tensor:
    """The low-rank image R of a gradient: G Q^T on the right, Q^T G on the left."""
    return grad @ basis.T if side == "right" else basis.T @ grad


def project_back(low_rank: Tensor, basis: Tensor, side: str) -> Tensor:
    """Back to the parameter's shape: R Q on the right, Q R on the left."""
    return low_rank @ basis if side == "right" else basis @ low_rank


def svd_projection(grad: Tensor, rank: int, side: str) -> Tensor:
    """GaLore's basis: the top-`rank` right (r x n) or left (m x r) singular vectors of the gradient, computed in
    float32 and returned in the gradient's dtype. Signs are LAPACK's, as in the reference (torch.linalg.svd)."""
    u, _, vh = torch.linalg.svd(grad.float(), full_matrices=False)
    basis = vh[:rank, :] if side == "right" else u[:, :rank]
    return basis.to(grad.dtype)


def random_projection(seed: int, shape: torch.Size | tuple[int, ...], rank: int, side: str,
                      device: torch.device, dtype: torch.dtype) -> Tensor:
    """APOLLO's basis: entries i.i.d. N(0, 1/rank) from a generator seeded with `seed`, r x n (right) or m x r
    (left). The same seed gives the same matrix on a given device type."""
    rows, cols = shape
    size = (rank, cols) if side == "right" else (rows, rank)
    generator = torch.Generator(device=device).manual_seed(seed)
    basis = torch.randn(size, generator=generator, device=device, dtype=torch.float32)
    return basis.div_(math.sqrt(rank)).to(dtype)


def projection_seed(base_seed: int, index: int, refresh: int) -> int:
    """A fresh seed per (optimizer seed, parameter index, refresh number): Algorithm 1's "independent new seed",
    a pure function of counters kept in the state, so it survives a checkpoint as a plain int."""
    return ((base_seed * 1_000_003 + index) * 1_000_003 + refresh) % (2 ** 63)


def channel_norms(low_rank: Tensor, side: str) -> Tensor:
    """Norm of each channel (the unprojected side) of a low-rank matrix, shaped to broadcast over the full
    gradient: m x 1 for the right side (rows), 1 x n for the left side (columns)."""
    return low_rank.norm(dim=1, keepdim=True) if side == "right" else low_rank.norm(dim=0, keepdim=True)
