"""The three recurrences, one token at a time: the definitions every faster form is checked against.

Each head keeps a state matrix S (K x V) and reads it with its query, o_t = S_t^T q_t / sqrt(K):

    GLA        S_t = diag(a_t) S_{t-1} + k_t v_t^T                       (Yang et al. 2023)
    DeltaNet   S_t = (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T          (Schlag et al. 2021; Yang et al. 2024)
    Gated      S_t = alpha_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T  (Yang, Kautz & Hatamizadeh 2024)

with a_t in (0, 1)^K a decay per key channel, alpha_t in (0, 1) one decay per head and b_t in (0, 1) the
delta rule's writing strength. Decays are passed in log space (log a_t, log alpha_t), as the models make
them (logsigmoid, -softplus) and as flash-linear-attention's kernels take them.

Layout follows flash-linear-attention (fla-core 0.6.0, fla/ops/{gla,delta_rule,gated_delta_rule}/naive.py):
q, k (B, T, H, K), v (B, T, H, V), per-channel decays (B, T, H, K), per-head scalars (B, T, H), states
(B, H, K, V) in float32. Everything is computed in float32 (float64 inputs stay float64) and o is
returned in v's dtype.
"""

from __future__ import annotations

import torch

from optbench.models.layers import upcast


def heads_first(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """(B, T, H, ...) -> (B, H, T, ...) in at least float32: time becomes the dimension we walk or chunk along."""
    return [upcast(t.transpose(1, 2)) for t in tensors]


def initial(state: torch.Tensor | None, batch: int, heads: int, k_dim: int, v_dim: int,
            like: torch.Tensor) -> torch.Tensor:
    """The state before the first token: the given one (in at least float32) or zeros like `like`."""
    if state is None:
        return like.new_zeros(batch, heads, k_dim, v_dim)
    return upcast(state)


def gla_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor,
                  initial_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gated linear attention: decay each key channel of the state, add k v^T, read with q."""
    out_dtype = v.dtype
    q, k, v, log_decay = heads_first(q, k, v, log_decay)
    batch, heads, seq, k_dim = q.shape
    q = q * k_dim ** -0.5
    state = initial(initial_state, batch, heads, k_dim, v.size(-1), q)
    outputs = []
    for t in range(seq):
        state = log_decay[:, :, t, :, None].exp() * state + k[:, :, t, :, None] * v[:, :, t, None, :]
        outputs.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t], state))
    return torch.stack(outputs, dim=1).to(out_dtype), state


def delta_rule_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                         initial_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The delta rule: move the value stored under k_t a fraction b_t of the way to v_t, read with q."""
    out_dtype = v.dtype
    q, k, v, beta = heads_first(q, k, v, beta)
    batch, heads, seq, k_dim = q.shape
    q = q * k_dim ** -0.5
    state = initial(initial_state, batch, heads, k_dim, v.size(-1), q)
    outputs = []
    for t in range(seq):
        k_t = k[:, :, t]
        stored = torch.einsum("bhk,bhkv->bhv", k_t, state)  # what the memory returns for k_t now
        correction = beta[:, :, t, None] * (v[:, :, t] - stored)
        state = state + k_t[..., None] * correction[..., None, :]
        outputs.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t], state))
    return torch.stack(outputs, dim=1).to(out_dtype), state


def gated_delta_rule_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor,
                               beta: torch.Tensor, initial_state: torch.Tensor | None = None,
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated delta rule: decay the whole state by alpha_t, then a delta-rule step."""
    out_dtype = v.dtype
    q, k, v, log_decay, beta = heads_first(q, k, v, log_decay, beta)
    batch, heads, seq, k_dim = q.shape
    q = q * k_dim ** -0.5
    state = initial(initial_state, batch, heads, k_dim, v.size(-1), q)
    outputs = []
    for t in range(seq):
        k_t = k[:, :, t]
        state = log_decay[:, :, t, None, None].exp() * state
        stored = torch.einsum("bhk,bhkv->bhv", k_t, state)
        correction = beta[:, :, t, None] * (v[:, :, t] - stored)
        state = state + k_t[..., None] * correction[..., None, :]
        outputs.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t], state))
    return torch.stack(outputs, dim=1).to(out_dtype), state
