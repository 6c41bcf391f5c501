"""GPT-2 (Radford et al. 2019), written like nanoGPT's model.py.

Learned position embeddings, pre-LayerNorm blocks (LayerNorm before attention and MLP, plus one
after the last block), a 4x GELU MLP and an output head tied to the token embeddings.
`model.mixer=pom` puts the Polynomial Mixer (pom.py) in place of self-attention in every block.
Parameter names follow nanoGPT and the HF checkpoint (`transformer.wte`, `transformer.h.0.attn.c_attn`,
`lm_head`, ...) because optimizer code partitions parameters by name (Adam-mini, for one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from optbench.config.schema import ModelConfig
from optbench.errors import check, check_choice
from optbench.models import mup
from optbench.models.layers import CausalLM, attend, init_weights
from optbench.models.pom import PolynomialMixer
from optbench.models.registry import register


@dataclass
class GPT2Config(ModelConfig):
    """GPT-2 architecture; the shared keys (n_layer, n_head, n_embd, ...) come from ModelConfig."""

    name: str = "gpt2"
    bias: bool = True
    """Biases in Linear layers and LayerNorms, as in GPT-2; False is slightly faster and as good."""
    mixer: str = "attention"
    """Token mixer of every block: attention (causal self-attention) | pom (Polynomial Mixer, linear in T)."""
    pom_degree: int = 2
    """pom: degree k, the highest product of projected features (the paper's k; the Hydra fork's GPT-2 uses 2)."""
    pom_expand: int = 2
    """pom: width of each of the k factors in multiples of n_embd; the state has k * pom_expand * n_embd channels."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("model.mixer", self.mixer, MIXERS)
        check(self.pom_degree > 0 and self.pom_expand > 0,
              f"model.pom_degree={self.pom_degree} and model.pom_expand={self.pom_expand} must be positive")


MIXERS = ("attention", "pom")


class CausalSelfAttention(nn.Module):
    """All heads at once: one fused matmul for q, k and v, then causal SDPA and an output projection."""

    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.scale = mup.attention_scale(cfg, cfg.n_embd // cfg.n_head) if cfg.mup else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, width = x.shape
        q, k, v = (t.view(batch, seq, self.n_head, width // self.n_head).transpose(1, 2)
                   for t in self.c_attn(x).split(width, dim=2))
        y = attend(q, k, v, self.dropout if self.training else 0.0, self.scale)
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
    """Pre-norm residual block around a token mixer (self-attention, or another `model.mixer`) and the MLP:
    x + mixer(ln(x)), then x + mlp(ln(x)); or, with `parallel_block`, x + mixer(ln(x)) + mlp(ln(x))."""

    def __init__(self, cfg: GPT2Config, mixer: nn.Module) -> None:
        super().__init__()
        self.parallel = cfg.parallel_block
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = mixer
        self.ln_2 = None if self.parallel else nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.parallel:
            h = self.ln_1(x)
            return x + self.attn(h) + self.mlp(h)
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
            h=nn.ModuleList(Block(cfg, self.make_mixer(cfg, i)) for i in range(cfg.n_layer)),
            ln_f=nn.LayerNorm(cfg.n_embd, bias=cfg.bias),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, vocab_size, bias=False)
        # Weight tying (Press & Wolf 2017): the head reads logits off the token embedding matrix.
        self.lm_head.weight = self.transformer.wte.weight
        init_weights(self, cfg.init_std, cfg.n_layer, residual=("c_proj.weight",))
        self.mup_width = mup.width_multiplier(cfg) if cfg.mup else None  # muP's m; None: standard parametrisation
        if self.mup_width is not None:
            mup.rescale_init_(self, self.lm_head, self.mup_width)

    def make_mixer(self, cfg: GPT2Config, layer: int) -> nn.Module:
        """Layer `layer`'s token mixer, called as mixer(x); its output projection is named `c_proj`."""
        if cfg.mixer == "pom":
            return PolynomialMixer(cfg.n_embd, cfg.pom_degree, cfg.pom_expand, bias=cfg.bias, dropout=cfg.dropout)
        return CausalSelfAttention(cfg)

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """CausalLM's 6 N + 12 L d T less 12 d T for each PoM block: PoM has no T x T matmuls. Its projections
        are in 6 N; its lift, cumulative mean and gate are elementwise (a few FLOPs per state channel, under
        1% of its matmuls at 124M) and go uncounted, like GELU and LayerNorm."""
        seq = self.seq_len if seq_len is None else seq_len
        pom_blocks = sum(isinstance(block.attn, PolynomialMixer) for block in self.transformer.h)
        return super().flops_per_token(seq_len) - 12.0 * pom_blocks * self.cfg.n_embd * seq

    def blocks(self) -> nn.ModuleList:
        return self.transformer.h

    def lr_multipliers(self) -> dict[str, float]:
        return {} if self.mup_width is None else mup.lr_multipliers(self, self.lm_head, self.mup_width)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab_size) for token ids (B, T); position t sees tokens 0..t only."""
        self._check_length(idx.size(1))
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if self.mup_width is not None:
            x = x * mup.output_multiplier(self.mup_width)  # muP's readout 1/m; a tied table's lookup keeps 1
        return self.lm_head(x)
