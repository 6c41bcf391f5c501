"""Chunk-parallel forms of the recurrences in recurrent.py, in pure PyTorch.

The sequence is cut into chunks of C tokens. Within a chunk every output is a masked matmul over the
chunk's own tokens (parallel, like attention); across chunks only the K x V state is passed along, one
step per chunk instead of one per token. Same inputs, outputs, layout and precision as recurrent.py;
the last chunk is zero-padded (a zero key writes nothing and a zero log-decay keeps the state, so the
final state is exact).

GLA (Yang et al. 2023, "Gated Linear Attention Transformers with Hardware-Efficient Training"):
with b_t = sum of log a_j over the chunk up to t (per key channel, decreasing), a chunk starting from
state S_0 gives

    o_t = (q_t * e^{b_t})^T S_0 + sum_{s<=t} [sum_c q_tc k_sc e^{b_tc - b_sc}] v_s
    S_C = diag(e^{b_C}) S_0 + sum_s (k_s * e^{b_C - b_s}) v_s^T.

Every exponent is <= 0, so nothing overflows however strong the decay; the price is a (C, C, K)
tensor inside each chunk, which is why GLA's default chunk is small. (flash-linear-attention's
chunk_gla factorises the off-diagonal sub-blocks around a reference point instead.)

Delta rule and gated delta rule (Yang et al. 2024, "Parallelizing Linear Transformers with the Delta
Rule over Sequence Length"; Yang, Kautz & Hatamizadeh 2024, "Gated Delta Networks"):
with g_t = sum of log alpha_j over the chunk up to t (g = 0 for DeltaNet) and L_ts = e^{g_t - g_s} for
s <= t, the chunk's corrections d_t = b_t (v_t - alpha_t S_{t-1}^T k_t) solve the unit lower-triangular
system (I + A) D = beta*V - (beta * e^g * K) S_0 with A_ts = b_t L_ts k_t.k_s for s < t. The UT
transform precomputes, for all chunks at once, U = (I + A)^{-1} (beta*V) and W = (I + A)^{-1}
(beta * e^g * K) (the WY representation of the chunk's product of Householder-like factors), so that

    D = U - W S_0,   o_t = (q_t * e^{g_t})^T S_0 + sum_{s<=t} L_ts (q_t.k_s) d_s,
    S_C = e^{g_C} S_0 + sum_s (k_s * e^{g_C - g_s}) d_s^T.

Read alongside fla-core 0.6.0's fla/ops/delta_rule/naive.py (delta_rule_chunkwise) and
fla/ops/gated_delta_rule/naive.py (naive_chunk_gated_delta_rule); written here from the equations above.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from optbench.models.linear_attention.recurrent import heads_first, initial

GLA_CHUNK = 16
DELTA_CHUNK = 64
"""flash-linear-attention's chunk size for the delta rules; its inverse is 64 x 64 per chunk, cheap."""


def to_chunks(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """(B, H, T, ...) -> (B, H, N, C, ...), zero-padding T up to a multiple of C."""
    seq = x.size(2)
    pad = -seq % chunk
    if pad:
        widths = [0, 0] * (x.dim() - 3) + [0, pad]
        x = F.pad(x, widths)
    return x.unflatten(2, (-1, chunk))


def from_chunks(x: torch.Tensor, seq: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, H, N, C, D) -> (B, T, H, D): undo to_chunks and heads_first."""
    return x.flatten(2, 3)[:, :, :seq].transpose(1, 2).to(dtype)


def causal_mask(chunk: int, device: torch.device) -> torch.Tensor:
    """True where position s may be seen from position t (s <= t)."""
    return torch.ones(chunk, chunk, dtype=torch.bool, device=device).tril()


def decay_between(log_decay: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """e^{g_t - g_s} on the mask, 0 elsewhere, for cumulative log-decays g (..., C) or (..., C, K).

    The exponent is set to -inf off the mask *before* exp: t < s would give e^{positive}, which can
    overflow and turn into NaN in the backward pass even after masking.
    """
    per_channel = log_decay.dim() == 5
    g_t = log_decay.unsqueeze(-2 if per_channel else -1)
    g_s = log_decay.unsqueeze(-3 if per_channel else -2)
    where = mask[..., None] if per_channel else mask
    return (g_t - g_s).masked_fill(~where, float("-inf")).exp()


def gla_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor,
                initial_state: torch.Tensor | None = None, chunk: int = GLA_CHUNK,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gated linear attention, chunk by chunk (see the module docstring); returns (o, final state)."""
    out_dtype, (batch, seq, heads, k_dim) = v.dtype, q.shape
    q, k, v, log_decay = heads_first(q, k, v, log_decay)
    q, k, v, g = (to_chunks(x, chunk) for x in (q * k_dim ** -0.5, k, v, log_decay))
    g = g.cumsum(dim=-2)  # (B, H, N, C, K): log decay from the chunk's start through t
    g_last = g[..., -1:, :]

    within = decay_between(g, causal_mask(chunk, q.device))  # (B, H, N, C, C, K)
    scores = torch.einsum("bhntk,bhnsk,bhntsk->bhnts", q, k, within)
    o = scores @ v
    q_from_start = q * g.exp()
    k_to_end = k * (g_last - g).exp()

    state = initial(initial_state, batch, heads, k_dim, v.size(-1), q)
    from_state = []
    for n in range(q.size(2)):
        from_state.append(q_from_start[:, :, n] @ state)
        state = g_last[:, :, n].exp().transpose(-1, -2) * state + k_to_end[:, :, n].transpose(-1, -2) @ v[:, :, n]
    o = o + torch.stack(from_state, dim=2)
    return from_chunks(o, seq, out_dtype), state


def delta_rule_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                       initial_state: torch.Tensor | None = None, chunk: int = DELTA_CHUNK,
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """DeltaNet: the gated delta rule with alpha = 1 (log-decay 0)."""
    return gated_delta_rule_chunked(q, k, v, torch.zeros_like(beta), beta, initial_state, chunk)


def gated_delta_rule_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor,
                             beta: torch.Tensor, initial_state: torch.Tensor | None = None,
                             chunk: int = DELTA_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated delta rule through the UT transform (see the module docstring); returns (o, final state)."""
    out_dtype, (batch, seq, heads, k_dim) = v.dtype, q.shape
    q, k, v, log_decay, beta = heads_first(q, k, v, log_decay, beta)
    q, k, v, g, beta = (to_chunks(x, chunk) for x in (q * k_dim ** -0.5, k, v, log_decay, beta))
    g = g.cumsum(dim=-1)  # (B, H, N, C): log decay from the chunk's start through t
    g_last = g[..., -1:]
    mask = causal_mask(chunk, q.device)
    decay = decay_between(g, mask)  # L, (B, H, N, C, C)

    # (I + A) is unit lower-triangular: solve with A's strict lower part, the diagonal taken as 1.
    a = (beta[..., None] * (k @ k.transpose(-1, -2)) * decay).tril(-1)
    u = torch.linalg.solve_triangular(a, beta[..., None] * v, upper=False, unitriangular=True)
    w = torch.linalg.solve_triangular(a, (beta * g.exp())[..., None] * k, upper=False, unitriangular=True)
    scores = (q @ k.transpose(-1, -2)) * decay
    q_from_start = q * g.exp()[..., None]
    k_to_end = k * (g_last - g).exp()[..., None]

    state = initial(initial_state, batch, heads, k_dim, v.size(-1), q)
    outputs = []
    for n in range(q.size(2)):
        corrections = u[:, :, n] - w[:, :, n] @ state
        outputs.append(q_from_start[:, :, n] @ state + scores[:, :, n] @ corrections)
        state = g_last[:, :, n, :, None].exp() * state + k_to_end[:, :, n].transpose(-1, -2) @ corrections
    return from_chunks(torch.stack(outputs, dim=2), seq, out_dtype), state
