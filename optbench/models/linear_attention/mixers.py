"""The three token mixers: projections, short convolutions, q/k maps, gates, output norm and `o_proj`.

Each follows flash-linear-attention's layer (flash-linear-attention 0.6.0: fla/layers/gla.py
GatedLinearAttention, fla/layers/delta_net.py DeltaNet, fla/layers/gated_deltanet.py GatedDeltaNet) with the
options that the flame configs of Scaling-for-Scaling's Stage 2 select, and keeps its parameter names:

    GLA            q k v from x (no short conv, no feature map); per-channel decay
                   log a = logsigmoid(gk_proj(x)) / 16 through a rank-16 bottleneck (Yang et al. 2023);
                   output RMSNorm(o) * silu(g_proj(x)).
    DeltaNet       q k v = silu(short causal conv(proj(x))); q, k L2-normalised per head; beta = sigmoid(b_proj(x));
                   output RMSNorm(o) per head, no gate (Yang et al. 2024).
    Gated DeltaNet as DeltaNet, plus a per-head decay log alpha = -exp(A_log) * softplus(a_proj(x) + dt_bias)
                   (Mamba-2's parametrisation) and output RMSNorm(o) * silu(g_proj(x)) (Yang, Kautz &
                   Hatamizadeh 2024).

A mixer is called as mixer(x, rope) like llama's attention; linear attention carries position in its
decays and convolutions and ignores the rotary table.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from optbench.models.layers import RMSNorm, upcast
from optbench.models.linear_attention import kernels

if TYPE_CHECKING:  # families.py imports this module to build its mixers
    from optbench.models.linear_attention.families import DeltaNetConfig, GatedDeltaNetConfig, GLAConfig


class ShortConv(nn.Conv1d):
    """Depthwise causal convolution over time, then SiLU (fla's ShortConvolution with activation='silu').

    Weights start ~ N(0, std) as fla's `_init_weights` sets every Conv1d (the model's own init only
    visits Linear and Embedding modules).
    """

    def __init__(self, dim: int, size: int, std: float) -> None:
        super().__init__(dim, dim, size, groups=dim, padding=size - 1, bias=False)
        nn.init.normal_(self.weight, mean=0.0, std=std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, D); padding both ends and keeping the first T outputs makes t see t-size+1..t."""
        return F.silu(super().forward(x.transpose(1, 2))[..., :x.size(1)].transpose(1, 2))


def short_conv(dim: int, size: int, std: float) -> nn.Module:
    """A ShortConv of `size` taps, or SiLU alone for size 0 (fla's use_short_conv=False keeps the SiLU)."""
    return ShortConv(dim, size, std) if size > 0 else nn.SiLU()


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(|x|^2 + eps) over the last dimension, in float32, as fla's l2norm: unit keys keep every
    delta-rule step I - beta k k^T a contraction."""
    wide = upcast(x)
    return (wide * torch.rsqrt(wide.pow(2).sum(-1, keepdim=True) + eps)).type_as(x)


def split_heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(B, T, H * D) -> (B, T, H, D)."""
    return x.unflatten(-1, (-1, head_dim))


def chunk_flops(heads: int, k_dim: int, v_dim: int, chunk: int, delta: bool) -> float:
    """Forward FLOPs per token of a chunked linear-attention layer's token mixing (chunk C, per-head dims).

    Per head: the chunk's scores q k^T (2 C K) and their product with the values (2 C V), the read of the
    incoming state (2 K V) and the write of the outgoing one (2 K V). The delta rules add k k^T (2 C K),
    the UT transform applied to [beta K, beta V] (2 C (K + V)) and W S_0 (2 K V). Full C x C blocks are
    counted (as PaLM counts full T x T attention); elementwise gates and the C x C inverse are left out.
    """
    per_head = 2 * chunk * (k_dim + v_dim) + 4 * k_dim * v_dim
    if delta:
        per_head += 2 * chunk * k_dim + 2 * chunk * (k_dim + v_dim) + 2 * k_dim * v_dim
    return float(heads * per_head)


class GatedLinearAttention(nn.Module):
    """GLA: a matrix memory whose key channels each decay at a data-dependent rate."""

    def __init__(self, cfg: GLAConfig) -> None:
        super().__init__()
        d, self.heads = cfg.n_embd, cfg.n_head
        self.head_k, self.head_v = cfg.key_dim // cfg.n_head, cfg.value_dim // cfg.n_head
        self.backend, self.normalizer, self.use_conv = cfg.kernel, cfg.gate_logit_normalizer, cfg.conv_size > 0
        kernels.check_backend(cfg.kernel)
        self.q_proj = nn.Linear(d, cfg.key_dim, bias=False)
        self.k_proj = nn.Linear(d, cfg.key_dim, bias=False)
        self.v_proj = nn.Linear(d, cfg.value_dim, bias=False)
        self.g_proj = nn.Linear(d, cfg.value_dim, bias=False)
        # Low rank keeps the gate cheap (r (d + K) parameters instead of d K); the bias sets its resting level.
        self.gk_proj = nn.Sequential(nn.Linear(d, cfg.gate_low_rank, bias=False),
                                     nn.Linear(cfg.gate_low_rank, cfg.key_dim, bias=True))
        if self.use_conv:  # off in the reference configs; fla's GLA has no SiLU on q, k, v without it
            self.q_conv1d = ShortConv(cfg.key_dim, cfg.conv_size, cfg.init_std)
            self.k_conv1d = ShortConv(cfg.key_dim, cfg.conv_size, cfg.init_std)
            self.v_conv1d = ShortConv(cfg.value_dim, cfg.conv_size, cfg.init_std)
        self.o_norm = RMSNorm(self.head_v, cfg.norm_eps)
        self.o_proj = nn.Linear(cfg.value_dim, d, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, rope: nn.Module | None = None) -> torch.Tensor:
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.use_conv:
            q, k, v = self.q_conv1d(q), self.k_conv1d(k), self.v_conv1d(v)
        # Dividing the log-sigmoid by 16 keeps decays near 1 (long memory) at init: a = sigmoid(z)^(1/16).
        log_decay = F.logsigmoid(upcast(self.gk_proj(x))) / self.normalizer
        o, _ = kernels.gla(split_heads(q, self.head_k), split_heads(k, self.head_k), split_heads(v, self.head_v),
                           split_heads(log_decay, self.head_k), backend=self.backend)
        o = self.o_norm(o) * F.silu(split_heads(self.g_proj(x), self.head_v))
        return self.dropout(self.o_proj(o.flatten(-2)))

    def mixing_flops(self, chunk: int) -> float:
        return chunk_flops(self.heads, self.head_k, self.head_v, chunk, delta=False)


class DeltaNetMixer(nn.Module):
    """DeltaNet: a matrix memory updated by the delta rule, with L2-normalised keys and queries."""

    def __init__(self, cfg: DeltaNetConfig) -> None:
        super().__init__()
        d, self.heads = cfg.n_embd, cfg.n_head
        self.head_k, self.head_v = cfg.key_dim // cfg.n_head, cfg.value_dim // cfg.n_head
        self.backend = cfg.kernel
        kernels.check_backend(cfg.kernel)
        self.q_proj = nn.Linear(d, cfg.key_dim, bias=False)
        self.k_proj = nn.Linear(d, cfg.key_dim, bias=False)
        self.v_proj = nn.Linear(d, cfg.value_dim, bias=False)
        self.b_proj = nn.Linear(d, self.heads, bias=False)
        self.q_conv1d = short_conv(cfg.key_dim, cfg.conv_size, cfg.init_std)
        self.k_conv1d = short_conv(cfg.key_dim, cfg.conv_size, cfg.init_std)
        self.v_conv1d = short_conv(cfg.value_dim, cfg.conv_size, cfg.init_std)
        self.o_norm = RMSNorm(self.head_v, cfg.norm_eps)
        self.o_proj = nn.Linear(cfg.value_dim, d, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, rope: nn.Module | None = None) -> torch.Tensor:
        q = l2_normalize(split_heads(self.q_conv1d(self.q_proj(x)), self.head_k))
        k = l2_normalize(split_heads(self.k_conv1d(self.k_proj(x)), self.head_k))
        v = split_heads(self.v_conv1d(self.v_proj(x)), self.head_v)
        beta = torch.sigmoid(self.b_proj(x))
        o, _ = kernels.delta_rule(q, k, v, beta, backend=self.backend)
        return self.dropout(self.o_proj(self.o_norm(o).flatten(-2)))

    def mixing_flops(self, chunk: int) -> float:
        return chunk_flops(self.heads, self.head_k, self.head_v, chunk, delta=True)


class GatedDeltaNetMixer(nn.Module):
    """Gated DeltaNet: the delta rule with a per-head, data-dependent decay of the whole memory."""

    def __init__(self, cfg: GatedDeltaNetConfig) -> None:
        super().__init__()
        d, self.heads = cfg.n_embd, cfg.mixer_heads
        self.head_k, self.head_v = cfg.head_k_dim, cfg.head_v_dim
        key_dim, value_dim = self.heads * self.head_k, self.heads * self.head_v
        self.backend = cfg.kernel
        kernels.check_backend(cfg.kernel)
        self.q_proj = nn.Linear(d, key_dim, bias=False)
        self.k_proj = nn.Linear(d, key_dim, bias=False)
        self.v_proj = nn.Linear(d, value_dim, bias=False)
        self.a_proj = nn.Linear(d, self.heads, bias=False)
        self.b_proj = nn.Linear(d, self.heads, bias=False)
        self.A_log, self.dt_bias = decay_parameters(self.heads)
        self.q_conv1d = short_conv(key_dim, cfg.conv_size, cfg.init_std)
        self.k_conv1d = short_conv(key_dim, cfg.conv_size, cfg.init_std)
        self.v_conv1d = short_conv(value_dim, cfg.conv_size, cfg.init_std)
        self.g_proj = nn.Linear(d, value_dim, bias=False)
        self.o_norm = RMSNorm(self.head_v, cfg.norm_eps)
        self.o_proj = nn.Linear(value_dim, d, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, rope: nn.Module | None = None) -> torch.Tensor:
        q = l2_normalize(split_heads(self.q_conv1d(self.q_proj(x)), self.head_k))
        k = l2_normalize(split_heads(self.k_conv1d(self.k_proj(x)), self.head_k))
        v = split_heads(self.v_conv1d(self.v_proj(x)), self.head_v)
        beta = torch.sigmoid(self.b_proj(x))
        # alpha = exp(-A dt) with A = exp(A_log) > 0 and step dt = softplus(.) > 0, as Mamba-2 discretises.
        log_decay = -upcast(self.A_log).exp() * F.softplus(upcast(self.a_proj(x)) + self.dt_bias)
        o, _ = kernels.gated_delta_rule(q, k, v, log_decay, beta, backend=self.backend)
        o = self.o_norm(o) * F.silu(split_heads(self.g_proj(x), self.head_v))
        return self.dropout(self.o_proj(o.flatten(-2)))

    def mixing_flops(self, chunk: int) -> float:
        return chunk_flops(self.heads, self.head_k, self.head_v, chunk, delta=True)


def decay_parameters(heads: int) -> tuple[nn.Parameter, nn.Parameter]:
    """Mamba-2's init, as fla's GatedDeltaNet: A ~ U(0, 16) stored as log A, and a bias that makes the
    initial step softplus(dt_bias) log-uniform in [1e-3, 0.1] (floored at 1e-4): decays from nearly 1
    (long memory) to strong, spread over the heads."""
    a = torch.empty(heads).uniform_(0, 16)
    dt = torch.exp(torch.rand(heads) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
    inverse_softplus = dt + torch.log(-torch.expm1(-dt))
    return nn.Parameter(a.log()), nn.Parameter(inverse_softplus)
