"""The linear-attention model families `gla`, `deltanet` and `gated-deltanet`: Llama with another token mixer.

Everything but the mixer is our Llama (Transformer++): pre-RMSNorm blocks, a SwiGLU MLP whose width
defaults to 8/3 d rounded up to 256 (fla's GatedMLP with hidden_ratio 4 gives the same), a final RMSNorm and
an optionally tied head; these are the flame/fla models' `{GLA,DeltaNet,GatedDeltaNet}ForCausalLM` layouts
(flash-linear-attention 0.6.0, fla/models/*/modeling_*.py). The keys below mirror those models' configs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from optbench.errors import check, check_choice
from optbench.models.linear_attention.chunked import DELTA_CHUNK
from optbench.models.linear_attention.kernels import BACKENDS
from optbench.models.linear_attention.mixers import DeltaNetMixer, GatedDeltaNetMixer, GatedLinearAttention
from optbench.models.llama import Llama, LlamaConfig
from optbench.models.registry import register


@dataclass
class LinearAttentionConfig(LlamaConfig):
    """Keys every linear-attention family shares; the Llama keys size the rest of the model."""

    kernel: str = "auto"
    """auto: flash-linear-attention's Triton kernels on CUDA when installed, else ours in PyTorch | fla | torch."""
    conv_size: int = 4
    """Taps of the short causal convolution on q, k and v (0: none)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("model.kernel", self.kernel, BACKENDS)
        check(self.conv_size >= 0, f"model.conv_size={self.conv_size} must be >= 0")


def check_width(key: str, expand: float, n_embd: int, heads: int) -> int:
    """int(expand * n_embd), which must be positive and split evenly over `heads`."""
    width = int(n_embd * expand)
    check(width > 0 and width % heads == 0,
          f"model.{key}={expand} gives width {width}, which must be positive and divisible by {heads} heads")
    return width


@dataclass
class ExpandedWidthConfig(LinearAttentionConfig):
    """Mixers whose key and value widths are multiples of n_embd split over n_head heads (GLA, DeltaNet)."""

    expand_k: float = 1.0
    """Key width = expand_k * n_embd over n_head heads."""
    expand_v: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_width("expand_k", self.expand_k, self.n_embd, self.n_head)
        check_width("expand_v", self.expand_v, self.n_embd, self.n_head)

    @property
    def key_dim(self) -> int:
        return int(self.n_embd * self.expand_k)

    @property
    def value_dim(self) -> int:
        return int(self.n_embd * self.expand_v)


@dataclass
class GLAConfig(ExpandedWidthConfig):
    """Gated Linear Attention (Yang et al. 2023); defaults are fla's GLAConfig's."""

    name: str = "gla"
    conv_size: int = 0
    expand_k: float = 0.5
    """GLA's state is K x V per head, so half-width keys halve it."""
    gate_low_rank: int = 16
    """Bottleneck of the decay gate's projection (d -> r -> key width)."""
    gate_logit_normalizer: float = 16.0
    """log a = logsigmoid(z) / this: a larger value keeps decays closer to 1."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.gate_low_rank > 0, f"model.gate_low_rank={self.gate_low_rank} must be positive")
        check(self.gate_logit_normalizer > 0,
              f"model.gate_logit_normalizer={self.gate_logit_normalizer} must be positive")


@dataclass
class DeltaNetConfig(ExpandedWidthConfig):
    """DeltaNet (Schlag et al. 2021; Yang et al. 2024); defaults are fla's DeltaNetConfig's (expand_k = expand_v = 1)."""

    name: str = "deltanet"


@dataclass
class GatedDeltaNetConfig(LinearAttentionConfig):
    """Gated DeltaNet (Yang, Kautz & Hatamizadeh 2024). Its heads are sized on their own, as in fla's
    GatedDeltaNetConfig (num_heads, head_dim), not as n_embd / n_head."""

    name: str = "gated-deltanet"
    n_mixer_head: int | None = None
    """Heads of the gated delta rule; None: n_head. Need not divide n_embd (the reference 340M: 6 x 256 at 1024)."""
    head_dim: int | None = None
    """Key width per head; None: n_embd / heads."""
    expand_v: float = 2.0
    """Value width per head = expand_v * head_dim."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.mixer_heads > 0, f"model.n_mixer_head={self.n_mixer_head} must be positive")
        check(self.head_k_dim > 0, f"model.head_dim={self.head_dim} must be positive")
        value = self.head_k_dim * self.expand_v
        check(value >= 1 and math.isclose(value, round(value)),
              f"model.expand_v={self.expand_v} times head_dim={self.head_k_dim} must be a positive whole number")

    @property
    def mixer_heads(self) -> int:
        return self.n_head if self.n_mixer_head is None else self.n_mixer_head

    @property
    def head_k_dim(self) -> int:
        return self.n_embd // self.mixer_heads if self.head_dim is None else self.head_dim

    @property
    def head_v_dim(self) -> int:
        return round(self.head_k_dim * self.expand_v)


class LinearAttentionLM(Llama):
    """Llama whose mixers are linear attention: training FLOPs are 6 N plus the chunked mixing, no T x T term."""

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """6 N (the base count at context 0: no attention term) plus 3x the mixers' forward FLOPs per token
        in the chunked form fla trains with (chunks of 64, or the whole context when shorter)."""
        seq = self.seq_len if seq_len is None else seq_len
        chunk = min(DELTA_CHUNK, seq)
        mixing = sum(layer.attn.mixing_flops(chunk) for layer in self.layers)
        return super().flops_per_token(seq_len=0) + 3.0 * mixing


@register("gla", GLAConfig, "Gated Linear Attention: per-channel data-dependent decay (Yang et al. 2023)")
class GLA(LinearAttentionLM):
    def make_mixer(self, cfg: GLAConfig, layer: int) -> nn.Module:
        return GatedLinearAttention(cfg)


@register("deltanet", DeltaNetConfig, "DeltaNet: delta-rule linear attention, chunked (Yang et al. 2024)")
class DeltaNet(LinearAttentionLM):
    def make_mixer(self, cfg: DeltaNetConfig, layer: int) -> nn.Module:
        return DeltaNetMixer(cfg)


@register("gated-deltanet", GatedDeltaNetConfig,
          "Gated DeltaNet: delta rule with a Mamba-2 decay (Yang, Kautz & Hatamizadeh 2024)")
class GatedDeltaNet(LinearAttentionLM):
    def make_mixer(self, cfg: GatedDeltaNetConfig, layer: int) -> nn.Module:
        return GatedDeltaNetMixer(cfg)
