"""Factored second moments (Shazeer & Stern 2018, Adafactor, Section 3): a matrix of non-negative statistics
V (n x m, or a batch of them over leading dimensions) kept as its row means R (n) and column means C (m) only,
and rebuilt as the rank-1 V_hat = R C^T / mean(R), which has the same row and column means as V.

    R <- beta R + (1 - beta) mean_cols(V)    C <- beta C + (1 - beta) mean_rows(V)    `factored_ema_`
    1 / sqrt(V_hat) = rsqrt(R / mean(R)) rsqrt(C)^T                                    `factored_rsqrt`
    U / max(1, RMS(U) / d)                                                             `clip_by_rms_`

Used by CAME for both its squared gradients and its instability matrix (torch.optim.Adafactor, which
optbench uses as is, has its own).
"""

from __future__ import annotations

from torch import Tensor


def is_factored(p: Tensor) -> bool:
    """Tensors of 2 or more dimensions are factored over their last two; vectors keep a full second moment."""
    return p.dim() >= 2


def factored_zeros(p: Tensor) -> tuple[Tensor, Tensor]:
    """Zero row and column statistics for a tensor of shape (..., n, m): shapes (..., n) and (..., m)."""
    shape = p.shape
    return p.new_zeros(shape[:-1]), p.new_zeros(shape[:-2] + shape[-1:])


def factored_ema_(row: Tensor, col: Tensor, values: Tensor, beta: float) -> None:
    """row <- beta row + (1 - beta) mean over columns of values; col likewise over rows; in place."""
    row.mul_(beta).add_(values.mean(dim=-1), alpha=1.0 - beta)
    col.mul_(beta).add_(values.mean(dim=-2), alpha=1.0 - beta)


def factored_rsqrt(row: Tensor, col: Tensor) -> Tensor:
    """1 / sqrt(V_hat) for V_hat = row col^T / mean(row), as a new tensor of shape (..., n, m)."""
    r = (row / row.mean(dim=-1, keepdim=True)).rsqrt_().unsqueeze(-1)
    return r * col.unsqueeze(-2).rsqrt()


def rms(t: Tensor) -> Tensor:
    """Root mean square of all entries, as a 0-d tensor."""
    return t.norm(2) / (t.numel() ** 0.5)


def clip_by_rms_(update: Tensor, threshold: float) -> Tensor:
    """update / max(1, RMS(update) / threshold), in place (Adafactor's update clipping)."""
    return update.div_((rms(update) / threshold).clamp_(min=1.0))
