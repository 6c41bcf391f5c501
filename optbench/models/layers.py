"""Pieces every model family shares: attention, RMSNorm, rotary embeddings, init, and `CausalLM`.

`CausalLM` is the common model interface (`num_params`, `flops_per_token`, `generate`); a family
subclasses it and writes only its own `__init__` and `forward(idx) -> logits`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from optbench.config.schema import ModelConfig


def upcast(x: torch.Tensor) -> torch.Tensor:
    """x in float32 at least: half precisions widen, float64 (train.dtype=float64, a verification run) stays."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= n."""
    return -(-n // multiple) * multiple


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float,
           scale: float | None = None) -> torch.Tensor:
    """Causal multi-head attention of (B, H, T, D) queries over (B, H_kv, T, D) keys and values.

    H_kv may divide H (grouped-query attention): SDPA's `enable_gqa` shares each key/value head
    with H / H_kv query heads without materialising copies. `scale` multiplies q.k before the softmax
    (None: 1/sqrt(D); muP passes its 1/D rule). Returns the heads side by side, (B, T, H*D).
    """
    y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale,
                                       enable_gqa=k.size(1) != q.size(1))
    batch, heads, seq, head_dim = y.shape
    return y.transpose(1, 2).reshape(batch, seq, heads * head_dim)


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain (Zhang & Sennrich 2019), as in LLaMA.

    Computed in float32 (float64 stays float64) and cast back, like Meta's reference: the mean of
    squares of bf16 activations loses too many bits.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = upcast(x)
        normed = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021) in the "rotate half" layout of GPT-NeoX and HF.

    Channel i of the first half of each head is paired with channel i of the second half and the
    pair is rotated by angle pos * theta^(-2i/D). Meta's interleaved layout pairs neighbours
    instead; the two differ only by a fixed permutation of the q/k projection rows.
    cos/sin tables are computed once for `max_len` positions and kept out of the state dict
    (non-persistent): they are a function of the config, not learned.
    """

    def __init__(self, head_dim: int, max_len: int, theta: float = 10000.0) -> None:
        super().__init__()
        inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (T, D/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate x of shape (B, H, T, D) by the angles of positions 0..T-1 (in float32 at least)."""
        seq = x.size(-2)
        cos, sin = self.cos[:seq], self.sin[:seq]
        x1, x2 = upcast(x).chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


def init_weights(model: nn.Module, std: float, n_layer: int, residual: tuple[str, ...]) -> None:
    """GPT-2 init: every Linear and Embedding weight ~ N(0, std), biases 0, norms left at 1.

    Parameters whose names end with one of `residual` (the projections writing into the residual
    stream) get std / sqrt(2 * n_layer): the stream sums 2 * n_layer such branches, so this keeps
    its variance at init independent of depth (Radford et al. 2019, section 2.3).
    """
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    for name, param in model.named_parameters():
        if name.endswith(residual):
            nn.init.normal_(param, mean=0.0, std=std / math.sqrt(2 * n_layer))


class CausalLM(nn.Module):
    """The interface every model family shares.

    A subclass sets `self.cfg` (a ModelConfig) and `self.seq_len` (the longest context it was built
    for) and implements `forward(idx: LongTensor[B, T]) -> logits FloatTensor[B, T, V]` and
    `blocks() -> nn.ModuleList` (its repeated transformer blocks: FSDP shards each as a unit), and may
    report `auxiliary_losses()` and `forward_stats()` of its last forward, and per-parameter
    `lr_multipliers()` (muP's).
    Embedding tables are recognised as `nn.Embedding` modules and a tied head as an `nn.Linear`
    sharing such a table's weight, so the counting rules below hold for every family.
    """

    cfg: ModelConfig
    seq_len: int

    def _tables(self) -> list[nn.Parameter]:
        """The lookup tables: token and learned-position embedding weights, each once."""
        tables = {id(m.weight): m.weight for m in self.modules() if isinstance(m, nn.Embedding)}
        return list(tables.values())

    def num_params(self, embeddings: bool = True) -> int:
        """Number of parameters, a tied matrix counted once.

        embeddings=False gives the non-embedding count N of Kaplan et al. (2020): everything
        except the token and learned-position embedding tables. A head tied to the token table is
        thereby excluded; an untied head is a separate matrix and is counted. (nanoGPT's
        get_num_params subtracts only the position table, keeping the tied token matrix.)
        """
        total = sum(p.numel() for p in self.parameters())
        if embeddings:
            return total
        return total - sum(t.numel() for t in self._tables())

    def num_active_params(self) -> int:
        """Non-embedding parameters each token passes through: all of them in a dense model; a mixture of
        experts counts only the experts a token is routed to."""
        return self.num_params(embeddings=False)

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs (forward + backward) per token: 6 N + 12 L d T (PaLM, appendix B).

        N is the number of parameters that take part in a matmul per token: the active non-embedding
        count (`num_active_params`) plus the head when it is tied to the token table (a lookup costs no FLOPs, the head
        does). 12 L d T is attention's scores and weighted sum over a context of T = `seq_len`
        (default: the built context), counted over the full T x T matrix as PaLM does.
        """
        tables = {id(t) for t in self._tables()}
        tied_heads = {id(m.weight): m.weight.numel() for m in self.modules()
                      if isinstance(m, nn.Linear) and id(m.weight) in tables}
        matmul_params = self.num_active_params() + sum(tied_heads.values())
        seq = self.seq_len if seq_len is None else seq_len
        return 6.0 * matmul_params + 12.0 * self.cfg.n_layer * self.cfg.n_embd * seq

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None,
                 vocab_limit: int | None = None) -> torch.Tensor:
        """Append `max_new_tokens` sampled tokens to each row of `idx` (B, T) and return (B, T + new).

        `vocab_limit` restricts sampling to the tokenizer's ids: the embedding table is padded
        beyond them (50257 -> 50304) and those rows must never be sampled.

        The context is cropped to the last `seq_len` tokens, the model runs in eval mode (no
        dropout) and restores its mode afterwards, and all randomness comes from `generator`
        (which must live on idx's device), so the result is a function of the seed.
        """
        was_training = self.training
        self.eval()
        try:
            for _ in range(max_new_tokens):
                logits = upcast(self(idx[:, -self.seq_len:])[:, -1, :vocab_limit]) / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits, dim=-1)
                idx = torch.cat((idx, torch.multinomial(probs, 1, generator=generator)), dim=1)
        finally:
            self.train(was_training)
        return idx

    def lr_multipliers(self) -> dict[str, float]:
        """Parameter name -> multiplier on the optimizer's lr for it (muP's per-group lr); absent names: 1.
        Routing puts each multiplier into its own param group. None by default (standard parametrisation)."""
        return {}

    def auxiliary_losses(self) -> dict[str, torch.Tensor]:
        """Weighted extra loss terms of the last forward (a mixture of experts' router losses), which the
        trainer adds to the cross-entropy and logs by name; none for a dense model."""
        return {}

    def load_initial_weights(self) -> None:
        """Overwrite the fresh init with weights from elsewhere (a mixture of experts upcycled from a dense
        checkpoint); the trainer calls it once before training starts, never on resume."""

    def forward_stats(self) -> dict[str, float]:
        """Statistics of the last forward worth logging (expert load, dropped tokens); none by default."""
        return {}

    def _check_length(self, seq: int) -> None:
        """Fail clearly (instead of an index error deep inside) on a context longer than built for."""
        if seq > self.seq_len:
            raise ValueError(f"sequence of length {seq} is longer than the model's seq_len={self.seq_len}")
