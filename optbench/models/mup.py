"""muP, the maximal update parametrization, for the transformer families: each rule as one small function.

Paper: Yang et al. 2022, "Tensor Programs V: Tuning Large Neural Networks via Zero-Shot Hyperparameter Transfer"
(arXiv 2203.03466): Table 3 (muP, Adam column) in the equivalent form of Table 8, where the readout gets a 1/fan_in
multiplier and a width-independent init instead of an init of variance 1/fan_in^2 (the form that allows a readout
tied to the input embedding). Reference implementation: microsoft/mup 1.0.0 -- mup/layer.py (MuReadout,
MuSharedReadout) at 16ef49056825daaa7bc7c691024bd66586a9f6a6, mup/optim.py (MuAdam) and
examples/Transformer/model.py (1/d attention) at 0518b39e91caa5d81ad0529225046cbdfdef69c4.

The width multiplier is m = n_embd / mup_base_width. optbench's standard parametrisation (SP) draws every weight
from N(0, init_std), the same at every width; muP is anchored to it at the base width: at m = 1 every rule below is
the identity, so a model tuned there is unchanged (same init for the same seed, same logits). Why each rule:

- Hidden matrices (both dimensions grow with width: q/k/v/o, MLP, experts; any weight of 2+ dims that is neither
  an embedding table nor the head): init std / sqrt(m), since a coordinate of W x sums fan_in terms and only
  variance 1/fan_in keeps it O(1) (Table 3, init var 1/fan_in; a constant std makes it grow like sqrt(m)). Adam lr
  / m: Adam's step is O(1) per entry and aligned with x, so (dW) x sums fan_in correlated terms and grows like
  fan_in (law of large numbers, not the CLT's sqrt), hence Adam lr 1/fan_in (Table 3; MuAdam's lr / width_mult).
  Their weight decay is multiplied by m, so decoupled decay's per-step shrink lr * wd is unchanged (as MuAdam does).
- Embeddings (token and position tables): init and lr unchanged. Their fan_in is the vocabulary or the context,
  which do not grow with width, and a one-hot lookup sums no width terms (Table 3, input weights: Adam lr 1).
- The readout: logits multiplied by 1/m, weight's init and lr unchanged (Table 8: multiplier 1/fan_in, init var 1,
  Adam lr 1 -- MuReadout, "a 1/width multiplier and a constant variance initialization"). The readout sums fan_in
  terms of the final hidden state; the multiplier makes its effective init variance and Adam step scale as Table 3's
  1/fan_in^2 and 1/fan_in, so logits stay O(1) after training instead of growing like m.
- A tied head is the token table: like MuSharedReadout, the table keeps the embedding's init and lr, and the 1/m
  multiplier acts only where it is read out. That is why Table 8's form is used: Table 3 would need two different
  inits for the one tensor.
- Attention logits q.k * sqrt(d_base) / d instead of q.k / sqrt(d) (d = head dim): once trained, q and k are
  correlated, so q.k grows like d (law of large numbers), not sqrt(d) (TP5's muP for Transformers; mup's example
  "change attention scaling to 1/d"). The constant sqrt(d_base), d_base = `mup_base_head_dim` or the head dim at the
  base width, makes it SP's 1/sqrt(d) at the base.
- Vectors (norm gains, biases): unchanged. Each has one width dimension and no fan_in sum (Table 3 puts biases
  with input weights: init and Adam lr independent of width).

The rules apply by role, not by module name, so families built on gpt2/llama (other mixers, experts) inherit them.
A weight with one side of fixed size (an MoE router, a depthwise convolution, a low-rank gate factor) counts as
hidden here, though strict muP (mup's base shapes) would treat it as input- or output-like.
The lr rule is Adam's: routing hands it to every optimizer, but SGD- or Muon-like updates follow other muP rules.
Not done: mup's optional zero init of the readout and queries, which would break "muP = SP at the base width".
"""

from __future__ import annotations

import math

import torch
from torch import nn

from optbench.config.schema import ModelConfig


def width_multiplier(cfg: ModelConfig) -> float:
    """m = n_embd / mup_base_width: how much wider than the base (tuned) model this one is."""
    return cfg.n_embd / cfg.mup_base_width


def hidden_init_scale(m: float) -> float:
    """Factor on the SP init std of hidden matrices: 1/sqrt(m), i.e. init variance proportional to 1/fan_in."""
    return 1.0 / math.sqrt(m)


def hidden_lr_multiplier(m: float) -> float:
    """Factor on the Adam lr of hidden matrices: 1/m, i.e. lr proportional to 1/fan_in."""
    return 1.0 / m


def output_multiplier(m: float) -> float:
    """Factor on the logits (applied to the readout's input): 1/m."""
    return 1.0 / m


def attention_scale(cfg: ModelConfig, head_dim: int) -> float:
    """The softmax scale sqrt(d_base) / d, written (1/sqrt(d)) sqrt(d_base/d) so it is SP's 1/sqrt(d) exactly
    when d = d_base (the square root of 1.0 is exact)."""
    base = cfg.mup_base_head_dim if cfg.mup_base_head_dim is not None else head_dim / width_multiplier(cfg)
    return (1.0 / math.sqrt(head_dim)) * math.sqrt(base / head_dim)


def hidden_matrices(model: nn.Module, head: nn.Linear) -> dict[str, nn.Parameter]:
    """name -> weight of every hidden matrix: 2+ dims, not an nn.Embedding table (a tied head included), not `head`."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return {name: p for name, p in model.named_parameters()
            if p.dim() >= 2 and id(p) not in tables and p is not head.weight}


@torch.no_grad()
def rescale_init_(model: nn.Module, head: nn.Linear, m: float) -> None:
    """Turn a fresh SP init into muP's: hidden matrices times 1/sqrt(m), the rest as drawn. A rescale after the
    draw (not a second draw) keeps the random stream, so m = 1 gives SP's weights bit for bit."""
    scale = hidden_init_scale(m)
    for p in hidden_matrices(model, head).values():
        p.mul_(scale)


def lr_multipliers(model: nn.Module, head: nn.Linear, m: float) -> dict[str, float]:
    """Parameter name -> muP's Adam lr multiplier: 1/m for every hidden matrix (also at m = 1, so routing knows the
    model is muP); absent parameters keep the optimizer's lr."""
    multiplier = hidden_lr_multiplier(m)
    return {name: multiplier for name in hidden_matrices(model, head)}
