"""GPT-2 (Radford et al. 2019), written like nanoGPT's model.py.

Learned position embeddings, pre-LayerNorm blocks (LayerNorm before attention and MLP, plus one
after the last block), a 4x GELU MLP and an output head tied to the token embeddings.
Parameter names follow nanoGPT and the HF checkpoint (`transformer.wte`, `transformer.h.0.attn.c_attn`,
`lm_head`, ...) because optimizer code partitions parameters by name (Adam-mini, for one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from optbench.config.schema import ModelConfig
from optbench.models.layers import CausalLM, attend, init_weights
from optbench.models.registry import register


@dataclass
class GPT2Config(ModelConfig):
    """GPT-2 architecture; the shared keys (n_layer, n_head, n_embd, ...) come from ModelConfig."""

    name: str = "gpt2"
    bias: bool = True
    """Biases in Linear layers and LayerNorms, as in GPT-2; False is slightly faster and as good."""


class CausalSelfAttention(nn.Module):
    """All heads at once: one fused matmul for q, k and v, then causal SDPA and an output projection."""

    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, width = x.shape
        q, k, v = (t.view(batch, seq, self.n_head, width // self.n_head).transpose(1, 2)
                   for t in self.c_attn(x).split(width, dim=2))
        y = attend(q, k, v, self.dropout if self.training else 0.0)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise 4x expansion with GELU in GPT-2's tanh approximation."""

    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


@register("gpt2", GPT2Config, "GPT-2: learned positions, LayerNorm, GELU MLP, tied head (Radford et al. 2019)")
class GPT2(CausalLM):
    """GPT-2 language model over a `vocab_size`-token vocabulary and contexts up to `seq_len`."""

    def __init__(self, cfg: GPT2Config, vocab_size: int, seq_len: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.seq_len = seq_len
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, cfg.n_embd),
            wpe=nn.Embedding(seq_len, cfg.n_embd),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
            ln_f=nn.LayerNorm(cfg.n_embd, bias=cfg.bias),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, vocab_size, bias=False)
        # Weight tying (Press & Wolf 2017): the head reads logits off the token embedding matrix.
        self.lm_head.weight = self.transformer.wte.weight
        init_weights(self, cfg.init_std, cfg.n_layer, residual=("c_proj.weight",))

    def blocks(self) -> nn.ModuleList:
        return self.transformer.h

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab_size) for token ids (B, T); position t sees tokens 0..t only."""
        self._check_length(idx.size(1))
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))
