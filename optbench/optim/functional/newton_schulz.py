"""Newton–Schulz orthogonalisation: the approximate polar factor U V^T of a matrix G = U S V^T.

Keller Jordan's quintic iteration (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural
networks"; reference: muon-optimizer==0.1.0 `muon.zeropower_via_newtonschulz5`): normalise G by its
Frobenius norm (so every singular value is <= 1), transpose a tall matrix so the Gram matrix X X^T is the
small one, then iterate X <- a X + (b A + c A^2) X with A = X X^T. The coefficients maximise the slope at
zero rather than converge, so after 5 steps the singular values land in a band around 1 (about 0.7-1.2),
not exactly on 1 -- which the authors found does not hurt training.

Leading dimensions are a batch: a 3-D tensor of MoE experts [E, out, in] is E matrices, each orthogonalised
on its own. `orthogonalize` stacks same-shaped tensors into one batched call (one kernel launch per shape
instead of one per parameter: a transformer's layers share a handful of shapes).

Precision: the reference runs in bfloat16, which is fast and adequate on GPUs. On CPU bfloat16 matmuls are
emulated (about 23x slower than float32), so `resolve_dtype("auto", device)` picks bfloat16 on CUDA and
float32 elsewhere; optimizers expose this as `ns_dtype` (auto | float32 | bfloat16).
"""

from __future__ import annotations

from collections import defaultdict

import torch

from optbench.optim.functional.sharding import broadcast_from_owners, world

COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""(a, b, c) of the quintic X <- a X + b (X X^T) X + c (X X^T)^2 X (Jordan et al. 2024)."""
EPS = 1e-7
"""Added to the Frobenius norm before dividing, so a zero matrix stays zero instead of becoming NaN."""
NS_DTYPES = ("auto", "float32", "bfloat16")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype the iteration runs in: `auto` is bfloat16 on CUDA (as the reference) and float32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def newton_schulz(G: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.float32,
                  eps: float = EPS) -> torch.Tensor:
    """Approximately orthogonalise each matrix in the last two dimensions of G (leading ones are a batch).

    Returns a tensor of G's shape in `dtype`, whose singular values lie near 1 (or are 0 where G's are).
    """
    if G.dim() < 2:
        raise ValueError(f"newton_schulz needs a matrix or a batch of matrices, got shape {tuple(G.shape)}")
    a, b, c = COEFFICIENTS
    tall = G.size(-2) > G.size(-1)
    X = G.to(dtype)
    if tall:
        X = X.mT
    batch_shape = X.shape[:-2]
    X = X.reshape(-1, *X.shape[-2:])
    X = X / (torch.linalg.matrix_norm(X, keepdim=True) + eps)  # Frobenius norm >= spectral norm
    for _ in range(steps):
        A = torch.bmm(X, X.mT)
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)  # b A + c A^2
        X = torch.baddbmm(X, B, X, beta=a)  # a X + B X
    X = X.reshape(*batch_shape, *X.shape[-2:])
    return X.mT if tall else X


def orthogonalize(tensors: list[torch.Tensor], steps: int = 5, ns_dtype: str = "auto") -> list[torch.Tensor]:
    """`newton_schulz` of each tensor, same-shaped ones stacked into one batched call.

    Each result has its input's shape and dtype.
    Under DDP each rank orthogonalises every world-th tensor of each shape and receives the rest from
    their owners (see sharding.py): the same result as one process, 1/world of the work.
    """
    size, rank = world()
    by_kind: dict[tuple, list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        by_kind[(t.shape, t.device, t.dtype)].append(i)
    out: list[torch.Tensor | None] = [None] * len(tensors)
    owners = [0] * len(tensors)
    for (shape, device, dtype), indices in by_kind.items():
        for k, i in enumerate(indices):
            owners[i] = k % size
        mine = indices[rank::size]
        if mine:
            stacked = torch.stack([tensors[i] for i in mine]) if len(mine) > 1 else tensors[mine[0]]
            result = newton_schulz(stacked, steps, resolve_dtype(ns_dtype, device)).to(dtype)
            for k, i in enumerate(mine):
                out[i] = result[k] if len(mine) > 1 else result
        for i in indices:
            if out[i] is None:
                out[i] = torch.empty(shape, dtype=dtype, device=device)
    if size > 1:
        out = [t.contiguous() for t in out]
        broadcast_from_owners(out, owners)
    return out
