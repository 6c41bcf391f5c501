"""Kronecker-factored preconditioners, shared by Shampoo and SOAP.

For a gradient G of order k (a matrix: k = 2) each dimension i keeps a factor, the outer product of G
with itself contracted over every other dimension (for a matrix: L = G G^T and R = G^T G):

    factor_i <- beta factor_i + (1 - beta) G_(i) G_(i)^T      `update_factors_` (or a plain sum)

Shampoo (Gupta et al. 2018) preconditions with inverse roots of the factors, L^{-1/4} G R^{-1/4}
(`inverse_root`, `contract`); SOAP (Vyas et al. 2024) runs Adam in their eigenbasis, Q_L^T G Q_R
(`eigenbasis`, refreshed by one power iteration + QR in `refresh_eigenbasis`, `contract`).

All matrix work (outer products, eigh, QR, inverse roots) runs in float32 whatever the parameter dtype
(bf16 has no eigh/QR, and on CPU it is emulated anyway); callers pass float32 tensors or get them back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def merge_small_dims(shape: Sequence[int], max_dim: int) -> tuple[int, ...]:
    """Drop size-1 dimensions and merge neighbours while their product stays <= max_dim.

    (3, 4, 1, 5) with max_dim 20 -> (12, 5); a shape of ones -> (1,). The rule of both references
    (SOAP's `merge_dims`, distributed_shampoo's `merge_small_dims`)."""
    squeezed = [d for d in shape if d != 1] or [1]
    merged = [squeezed[0]]
    for d in squeezed[1:]:
        if merged[-1] * d <= max_dim:
            merged[-1] *= d
        else:
            merged.append(d)
    return tuple(merged)


def split_blocks(x: Tensor, block: int) -> list[Tensor]:
    """Views of `x` cut into blocks of at most `block` along every dimension (row-major block order).

    Writing into a block writes into `x`; distributed_shampoo blocks large tensors this way."""
    blocks = [x]
    for dim in range(x.dim()):
        blocks = [piece for b in blocks for piece in b.split(block, dim)]
    return blocks


def outer_products(grad: Tensor, which: Sequence[bool]) -> list[Tensor | None]:
    """For each dimension i marked in `which`: G contracted with itself over every other dimension
    (a matrix: [G G^T, G^T G]; a vector: [g g^T]); None for the others."""
    order = grad.dim()
    return [torch.tensordot(grad, grad, dims=[[*range(i), *range(i + 1, order)]] * 2) if use else None
            for i, use in enumerate(which)]


def update_factors_(factors: Sequence[Tensor | None], grad: Tensor, beta: float | None) -> None:
    """factor_i <- beta factor_i + (1 - beta) outer_i (a lerp, as SOAP does), or with beta None the sum
    factor_i <- factor_i + outer_i (Shampoo's original AdaGrad-style accumulation). In place; None skipped."""
    outers = outer_products(grad.float(), [f is not None for f in factors])
    for factor, outer in zip(factors, outers):
        if factor is None:
            continue
        if beta is None:
            factor.add_(outer)
        else:
            factor.lerp_(outer, 1.0 - beta)


def _eigh(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """torch.linalg.eigh in float32, retried in float64 where float32 fails to converge (both references)."""
    try:
        return torch.linalg.eigh(matrix)
    except torch.linalg.LinAlgError:
        values, vectors = torch.linalg.eigh(matrix.double())
        return values.float(), vectors.float()


def eigenbasis(factor: Tensor) -> Tensor:
    """Eigenvectors of a symmetric PSD factor as columns, largest eigenvalue first (SOAP's initial Q).

    The reference adds 1e-30 I before eigh; kept so an all-zero factor gives the same basis."""
    f = factor.float()
    _, vectors = _eigh(f + 1e-30 * torch.eye(f.shape[0], dtype=f.dtype, device=f.device))
    return vectors.flip(1)


def refresh_eigenbasis(factor: Tensor, basis: Tensor) -> tuple[Tensor, Tensor]:
    """One step of power iteration from the current basis, then QR (SOAP's `get_orthogonal_matrix_QR`).

    The current basis's columns are first sorted by their eigenvalue estimates diag(Q^T F Q), largest
    first. Returns the new basis and that order: the second moment, which lives in this basis, must be
    permuted along the same dimension (`index_select(dim, order)`) to stay aligned with it."""
    f, q = factor.float(), basis.float()
    fq = f @ q
    estimates = (q * fq).sum(dim=0)  # diag(Q^T F Q) without forming Q^T F Q
    order = torch.argsort(estimates, descending=True)
    new_basis, _ = torch.linalg.qr(fq.index_select(1, order))
    return new_basis, order


def contract(x: Tensor, matrices: Sequence[Tensor | None], transpose: bool = False) -> Tensor:
    """Multiply every dimension i of `x` by its matrix M_i: x_(i) -> M_i^T x_(i) (transpose: M_i x_(i)).

    A matrix X becomes M_0^T X M_1 (transpose: M_0 X M_1^T): with eigenbases this projects onto them
    (SOAP's `project`) and back (`project_back`); with symmetric inverse roots it is Shampoo's
    L^{-1/4} X R^{-1/4}. A None leaves its dimension alone. Each contraction moves the contracted
    dimension last, so after all of them the dimensions are back in order."""
    for m in matrices:
        if m is None:
            x = x.permute(*range(1, x.dim()), 0)
        else:
            x = torch.tensordot(x, m, dims=([0], [1 if transpose else 0]))
    return x


def inverse_root(factor: Tensor, root: float, eps: float) -> Tensor:
    """(F + eps I)^{-1/root} of a symmetric PSD factor, by eigendecomposition in float32.

    distributed_shampoo's `matrix_inverse_root` with its default perturbation: eps I is added before
    eigh, and if rounding still leaves an eigenvalue below eps, all are shifted up so the smallest is eps."""
    f = factor.float()
    values, vectors = _eigh(f + eps * torch.eye(f.shape[0], dtype=f.dtype, device=f.device))
    shift = max(eps - values.min().item(), 0.0)
    if shift > 0.0:
        values = values + shift
    return (vectors * values.pow(-1.0 / root).unsqueeze(0)) @ vectors.T
