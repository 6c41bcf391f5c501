"""The cautious mask (Liang et al. 2024, "Cautious Optimizers: Improving Training with One Line of Code",
arXiv:2411.16085), over lists of tensors: keep only the coordinates of an update that point the same way as
the current gradient, and scale the survivors up so that the update keeps its overall size.

    phi = 1[u * g > 0]                         `alignment_masks`   (strictly: u = 0 or g = 0 is masked)
    u  <- u * phi * d / (nnz(phi) + 1)         `cautious_`         (d = numel, per tensor)

This is the normalisation of the paper's first version (arXiv:2411.16085v1, lr scaled by d / (nnz + 1)) and
of the authors' original code (kyleliang919/C-Optim c_adamw.py / c_lion.py, `mask * (mask.numel() /
(mask.sum() + 1))`), and pytorch-optimizer==4.1.0's `BaseOptimizer.apply_cautious`. It is per tensor (each
parameter's own count; the +1 keeps an all-masked tensor finite: its update is 0). Later versions moved to
`mask / (mask.mean() + eps)` (paper v4) and timm's `mask / mask.mean().clamp(min=1e-3)` (the authors' current
c_adamw.py), i.e. d / max(nnz, d / 1000): larger by (nnz + 1) / nnz (visible only on small tensors) and
different on almost fully masked ones; not implemented here.
"""

from __future__ import annotations

import torch
from torch import Tensor


def alignment_masks(updates: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
    """1 where update and gradient have the same (nonzero) sign, else 0, as new tensors of the updates' dtype."""
    masks = torch._foreach_mul(updates, grads)
    torch._foreach_sign_(masks)
    torch._foreach_clamp_min_(masks, 0.0)
    return masks


def mask_scales(masks: list[Tensor]) -> list[Tensor]:
    """numel / (nnz + 1) of each 0/1 mask, as 0-dim tensors counted in at least float32 (a bfloat16 count
    would be rounded to 8 bits)."""
    return [mask.numel() / (mask.sum(dtype=torch.promote_types(mask.dtype, torch.float32)) + 1)
            for mask in masks]


def cautious_(updates: list[Tensor], grads: list[Tensor]) -> None:
    """u <- u * 1[u g > 0] * numel / (nnz + 1), in place, per tensor: the cautious update."""
    masks = alignment_masks(updates, grads)
    scales = mask_scales(masks)
    torch._foreach_mul_(masks, [s.to(m.dtype) for s, m in zip(scales, masks)])
    torch._foreach_mul_(updates, masks)
