"""LLaMA (Touvron et al. 2023) as used in optimizer benchmarks.

Differences from GPT-2: RMSNorm instead of LayerNorm, rotary position embeddings instead of a
learned table, a SwiGLU MLP, no biases, and optionally grouped-query attention (GQA) and
RMSNorm on queries and keys (qk_norm). Defaults follow EPFL's llm-baselines Llama (tied
embeddings, norm eps 1e-5, MLP width 8/3 d rounded up to 256); the GaLore presets untie the head.
Parameter names follow the HF layout under torchtitan-style modules:
`tok_embeddings`, `layers.N.attn.{q,k,v,o}_proj`, `layers.N.mlp.{gate,up,down}_proj`, `norm`, `output`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from optbench.config.schema import ModelConfig
from optbench.errors import check
from optbench.models import mup
from optbench.models.layers import CausalLM, RMSNorm, RotaryEmbedding, attend, init_weights, round_up
from optbench.models.registry import register


@dataclass
class LlamaConfig(ModelConfig):
    """LLaMA architecture; the shared keys (n_layer, n_head, n_embd, ...) come from ModelConfig."""

    name: str = "llama"
    n_kv_head: int | None = None
    """Key/value heads for grouped-query attention (must divide n_head); None: n_head (plain MHA)."""
    ffn_hidden: int | None = None
    """SwiGLU hidden width; None: 8/3 n_embd rounded up to `multiple_of` (same FLOPs as a 4x GELU MLP)."""
    multiple_of: int = 256
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    qk_norm: bool = False
    """RMSNorm over each head's queries and keys before RoPE, which tames attention-logit growth."""
    tie_embeddings: bool = True
    """Share the output head with the token embeddings (llm-baselines does; Meta's LLaMA does not)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        kv = self.kv_heads
        check(kv > 0 and self.n_head % kv == 0,
              f"model.n_kv_head={self.n_kv_head} must be positive and divide model.n_head={self.n_head}")
        check((self.n_embd // self.n_head) % 2 == 0,
              f"model.n_embd / model.n_head = {self.n_embd // self.n_head} must be even for rotary embeddings")
        check(self.ffn_hidden is None or self.ffn_hidden > 0, f"model.ffn_hidden={self.ffn_hidden} must be positive")
        check(self.multiple_of > 0, f"model.multiple_of={self.multiple_of} must be positive")
        check(self.norm_eps > 0 and self.rope_theta > 0, "model.norm_eps and model.rope_theta must be positive")

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def ffn_dim(self) -> int:
        """The SwiGLU width: int(8/3 n_embd) rounded up to `multiple_of`, as in Meta's and EPFL's code."""
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        return round_up(8 * self.n_embd // 3, self.multiple_of)


class Attention(nn.Module):
    """Causal self-attention with RoPE, n_head query heads sharing n_kv_head key/value heads."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head = cfg.n_head, cfg.kv_heads
        self.head_dim = cfg.n_embd // cfg.n_head
        self.dropout = cfg.dropout
        self.q_proj = nn.Linear(cfg.n_embd, self.n_head * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, cfg.n_embd, bias=False)
        if cfg.qk_norm:
            self.q_norm, self.k_norm = RMSNorm(self.head_dim, cfg.norm_eps), RMSNorm(self.head_dim, cfg.norm_eps)
        else:
            self.q_norm = self.k_norm = nn.Identity()
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.scale = mup.attention_scale(cfg, self.head_dim) if cfg.mup else None

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding) -> torch.Tensor:
        batch, seq, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(batch, seq, self.n_head, self.head_dim))
        k = self.k_norm(self.k_proj(x).view(batch, seq, self.n_kv_head, self.head_dim))
        v = self.v_proj(x).view(batch, seq, self.n_kv_head, self.head_dim)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        y = attend(rope(q), rope(k), v, self.dropout if self.training else 0.0, self.scale)
        return self.resid_dropout(self.o_proj(y))


class MLP(nn.Module):
    """SwiGLU (Shazeer 2020): down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.n_embd, cfg.ffn_dim, bias=False)
        self.up_proj = nn.Linear(cfg.n_embd, cfg.ffn_dim, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_dim, cfg.n_embd, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))


class Block(nn.Module):
    """Pre-norm residual block around a token mixer (attention here; subclasses of Llama swap in others)
    and a feed-forward layer (SwiGLU here; a mixture of experts in MoE): x + mixer(norm(x)), then
    x + ffn(norm(x)); or, with `parallel_block`, x + mixer(norm(x)) + ffn(norm(x)) over one norm."""

    def __init__(self, cfg: LlamaConfig, mixer: nn.Module, ffn: nn.Module) -> None:
        super().__init__()
        self.parallel = cfg.parallel_block
        self.attn_norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.attn = mixer
        self.mlp_norm = None if self.parallel else RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.mlp = ffn

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding) -> torch.Tensor:
        if self.parallel:
            h = self.attn_norm(x)
            return x + self.attn(h, rope) + self.mlp(h)
        x = x + self.attn(self.attn_norm(x), rope)
        return x + self.mlp(self.mlp_norm(x))


@register("llama", LlamaConfig, "LLaMA: RoPE, RMSNorm, SwiGLU, no biases; optional GQA, qk-norm, untied head")
class Llama(CausalLM):
    """LLaMA language model over a `vocab_size`-token vocabulary and contexts up to `seq_len`."""

    def __init__(self, cfg: LlamaConfig, vocab_size: int, seq_len: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.seq_len = seq_len
        self.tok_embeddings = nn.Embedding(vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.rope = RotaryEmbedding(cfg.n_embd // cfg.n_head, seq_len, cfg.rope_theta)
        self.layers = nn.ModuleList(Block(cfg, self.make_mixer(cfg, i), self.make_ffn(cfg, i))
                                    for i in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.output = nn.Linear(cfg.n_embd, vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        init_weights(self, cfg.init_std, cfg.n_layer, residual=("o_proj.weight", "down_proj.weight"))
        self.mup_width = mup.width_multiplier(cfg) if cfg.mup else None  # muP's m; None: standard parametrisation
        if self.mup_width is not None:
            mup.rescale_init_(self, self.output, self.mup_width)

    def make_mixer(self, cfg: LlamaConfig, layer: int) -> nn.Module:
        """Layer `layer`'s token mixer, called as mixer(x, rope). A family built on Llama overrides this; its
        output projection should be named `o_proj` so init scales it as a residual branch."""
        return Attention(cfg)

    def make_ffn(self, cfg: LlamaConfig, layer: int) -> nn.Module:
        """Layer `layer`'s feed-forward, called as ffn(x); residual outputs are named `down_proj`."""
        return MLP(cfg)

    def blocks(self) -> nn.ModuleList:
        return self.layers

    def lr_multipliers(self) -> dict[str, float]:
        return {} if self.mup_width is None else mup.lr_multipliers(self, self.output, self.mup_width)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab_size) for token ids (B, T); position t sees tokens 0..t only."""
        self._check_length(idx.size(1))
        x = self.drop(self.tok_embeddings(idx))
        for layer in self.layers:
            x = layer(x, self.rope)
        x = self.norm(x)
        if self.mup_width is not None:
            x = x * mup.output_multiplier(self.mup_width)  # muP's readout 1/m; a tied table's lookup keeps 1
        return self.output(x)
