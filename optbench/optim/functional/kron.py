"""Kronecker-factored PSGD preconditioners (Li 2015/2018, arXiv 1512.04202 and 1803.09383): the math.

A tensor G of order k gets one factor Q_i per dimension i: an upper-triangular d_i x d_i matrix, or a
diagonal (a d_i vector) where a full factor is too large or not wanted. The preconditioner is
P = Q^T Q with Q = Q_1 (x) ... (x) Q_k, applied dimension by dimension (`precondition`). The factors are
fitted online so that P matches the inverse square root of the curvature seen through a pair (v, h):
here h is the (momentum of the) gradient dithered by the probe v ~ N(0, I) (`dither`), as kron_torch does,
and each factor takes one step of relative gradient descent on the Lie group of its kind
(`update_preconditioner_`):

    A = Q h                      (each Q_i applied along dimension i)
    B = Q^{-T} v                 (each Q_i^{-T} applied along dimension i: triangular solves)
    for each i:  T1 = A_i A_i^T,  T2 = B_i B_i^T     (A_i: dimension i first, the rest flattened)
                 Q_i <- Q_i - lr triu(T1 - T2) Q_i / ||T1 + T2||_2     (a lower bound of the norm)
                 (diagonal: Q_i <- Q_i - lr (T1 - T2) Q_i / max|T1 + T2|, with row sums instead)

Written after kron_torch==0.3.3 (Evan Walters, CC-BY-4.0: github.com/evanatyourservice/kron_torch,
kron_torch/kron.py: `_init_Q_exprs`, `_update_precond`, `_lb`, `_precond_grad`, `_balance_Q`,
`_clip_update_rms`), which in turn follows Xi-Lin Li's psgd_torch. kron_torch builds einsum strings per
tensor; here each operation is applied along one dimension at a time (tensordot / triangular solve),
which is the same arithmetic up to summation order.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

MEMORY_SAVE_MODES = ("none", "smart_one_diag", "one_diag", "all_diag")
"""Which dimensions get a diagonal factor beyond the size rules: none; the largest if it is strictly larger
than the second largest; the largest; all (kron_torch's memory_save_mode, None written "none")."""


# ------------------------------------------------------------------------------------ shapes and init
def merged_shape(shape: torch.Size) -> list[int] | None:
    """kron_torch's merge_dims for tensors of order > 2: [prod(all but last), last] or [first, prod(rest)],
    whichever has the smaller signed difference cols - rows (kron_torch compares `np.diff`, not its
    absolute value). None for order <= 2."""
    if len(shape) <= 2:
        return None
    fold_last = [math.prod(shape[:-1]), shape[-1]]
    fold_first = [shape[0], math.prod(shape[1:])]
    return fold_last if fold_last[1] - fold_last[0] <= fold_first[1] - fold_first[0] else fold_first


def diagonal_dims(shape: torch.Size, max_size_triangular: int, min_ndim_triangular: int,
                  memory_save_mode: str = "none") -> list[bool]:
    """Per dimension, whether its factor is diagonal: size 1, size > max_size_triangular, order below
    min_ndim_triangular (vectors), or chosen by `memory_save_mode`."""
    order = len(shape)
    chosen = [False] * order
    largest = max(range(order), key=lambda i: (shape[i], i)) if order else 0
    if memory_save_mode == "all_diag":
        chosen = [True] * order
    elif memory_save_mode == "one_diag" and order:
        chosen[largest] = True
    elif memory_save_mode == "smart_one_diag" and order > 1:
        sizes = sorted(shape)
        if sizes[-1] > sizes[-2]:
            chosen[largest] = True
    return [chosen[i] or size == 1 or size > max_size_triangular or order < min_ndim_triangular
            for i, size in enumerate(shape)]


def init_factors(shape: torch.Size, diagonal: list[bool], init_scale: float, dtype: torch.dtype,
                 device: torch.device) -> list[Tensor]:
    """Q_i = init_scale^(1/k) I (a vector of that value for a diagonal factor), so that Q = init_scale I."""
    scale = init_scale ** (1 / len(shape))
    return [scale * torch.ones(d, dtype=dtype, device=device) if diag else
            scale * torch.eye(d, dtype=dtype, device=device) for d, diag in zip(shape, diagonal)]


# ------------------------------------------------------------------------------ one factor along a dim
def apply_along(t: Tensor, q: Tensor, dim: int, transpose: bool = False) -> Tensor:
    """q (or q^T) applied to dimension `dim` of t; a diagonal factor (a vector) scales that dimension."""
    if q.dim() == 1:
        return t * q.view(-1, *([1] * (t.dim() - dim - 1)))
    return torch.movedim(torch.tensordot(q, t, dims=([0 if transpose else 1], [dim])), 0, dim)


def solve_along(t: Tensor, q: Tensor, dim: int) -> Tensor:
    """q^{-T} applied to dimension `dim` of t (q upper triangular; a diagonal factor divides), in float32."""
    if q.dim() == 1:
        return t / q.view(-1, *([1] * (t.dim() - dim - 1)))
    moved = torch.movedim(t, dim, -1)
    rows = torch.linalg.solve_triangular(q.float(), moved.reshape(-1, moved.size(-1)).float(), upper=True,
                                         left=False)  # x q^{-1} per row = q^{-T} x
    return torch.movedim(rows.to(t.dtype).reshape(moved.shape), -1, dim)


def gram_along(a: Tensor, dim: int, diagonal: bool) -> Tensor:
    """A_i A_i^T with A_i = a with `dim` first and the rest flattened; only its diagonal for a diagonal factor."""
    rows = torch.movedim(a, dim, 0).reshape(a.size(dim), -1)
    return (rows * rows).sum(1) if diagonal else rows @ rows.T


# ----------------------------------------------------------------------------------------- the update
def dither(h: Tensor, v: Tensor) -> Tensor:
    """h + sqrt(eps_f32) mean|h| v, in place (kron_torch dithers the momentum in place, so the dithered
    momentum is also what gets preconditioned); keeps the fit well-posed where h is degenerate."""
    eps = torch.tensor(torch.finfo(torch.float32).eps, dtype=h.dtype, device=h.device)
    return h.add_(eps.sqrt() * h.abs().mean() * v)


def spectral_norm_lower_bound(a: Tensor, max_abs: Tensor) -> Tensor:
    """A cheap lower bound of ||a||_2 for symmetric a (kron_torch `_lb`): one power step from the column
    of largest norm, computed on a / max|a| for range safety."""
    a = a / max_abs
    column = torch.argmax((a * a).sum(0))
    x = a[:, column] @ a
    x = a @ (x / x.norm())
    return x.norm() * max_abs


def update_preconditioner_(factors: list[Tensor], h: Tensor, v: Tensor, lr: float) -> None:
    """One PSGD step of every factor, in place, on the pair (probe v, dithered gradient h = dither(h, v))."""
    tiny = torch.finfo(factors[0].dtype).tiny
    a, b = h, v
    for i, q in enumerate(factors):
        a = apply_along(a, q, i)
        b = solve_along(b, q, i)
    for i, q in enumerate(factors):
        diagonal = q.dim() == 1
        t1, t2 = gram_along(a, i, diagonal), gram_along(b, i, diagonal)
        step, total = (t1 - t2) * lr, t1 + t2
        norm = total.abs().max()
        if diagonal:
            q.sub_(step * (q / norm.clamp(min=tiny)))
        else:
            bound = torch.where(norm > 0, spectral_norm_lower_bound(total, norm), norm).clamp(min=tiny)
            q.sub_((torch.triu(step) / bound) @ q)


def precondition(factors: list[Tensor], g: Tensor) -> Tensor:
    """P g = Q^T Q g, each factor applied along its dimension (then its transpose)."""
    for i, q in enumerate(factors):
        g = apply_along(apply_along(g, q, i), q, i, transpose=True)
    return g


def balance_(factors: list[Tensor]) -> None:
    """Rescale the factors to equal max-abs norms (their geometric mean), in place: Q itself is unchanged,
    only the factors' dynamic range is evened out (kron_torch `_balance_Q`)."""
    norms = torch.stack([q.abs().max() for q in factors])
    torch._foreach_mul_(factors, list(norms.log().mean().exp() / norms))


def clip_update_rms_(u: Tensor, max_rms: float = 1.1) -> Tensor:
    """u <- u min(1, max_rms / (rms(u) + 1e-12)), in place (kron_torch `_clip_update_rms`)."""
    return u.mul_(torch.clamp(max_rms / u.square().mean().sqrt().add(1e-12), max=1.0))


# ------------------------------------------------------------------------------------ update schedule
def update_probability(step: int, max_prob: float = 1.0, min_prob: float = 0.03, decay: float = 0.001,
                       flat_start: int = 500) -> Tensor:
    """kron_torch's schedule, in float32 as there: max_prob exp(-decay (step - flat_start)) clamped to
    [min_prob, max_prob]: 1.0 for 500 steps, then an exponential anneal to 0.03 (reached near step 4000)."""
    max_prob, min_prob, decay, step, flat_start = (torch.tensor(float(x), dtype=torch.float32)
                                                   for x in (max_prob, min_prob, decay, step, flat_start))
    return (max_prob * torch.exp(-decay * (step - flat_start))).clamp(min=min_prob, max=max_prob)


def is_update_step(counter: int, prob: Tensor) -> bool:
    """kron_torch's deterministic thinning: update once `counter` steps reach 1 / prob (in float32)."""
    return bool(torch.tensor(counter, dtype=torch.int32) >= 1 / prob)
