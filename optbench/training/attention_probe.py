"""Attention pathologies on a fixed probe window: each layer's largest attention logit and mean attention entropy.

Growing attention logits (and attention collapsing onto one token, entropy near 0) precede many loss spikes in
LLM pretraining (Dehghani et al. 2023, "Scaling Vision Transformers to 22B"; Wortsman et al. 2023, "Small-scale
proxies for large-scale Transformer training instabilities"). Training never materialises the scores (SDPA's
fused kernels), so the probe runs one extra forward of the window, outside the training step, in eval mode
under no_grad, and recomputes each layer's softmax explicitly from the queries, keys and scale that layer hands
to `F.scaled_dot_product_attention`: a torch-function mode sees the call with its own arguments, and forward
pre-hooks on `model.blocks()` say which layer made it. Every family whose mixer is softmax attention (gpt2,
llama, moe) is covered without code of its own; a layer whose mixer has no softmax (PoM, gla, deltanet,
gated-deltanet) makes no such call and reports nothing.

    max_logit   the largest scale * <q_i, k_j> over heads and causal pairs j <= i
    entropy     -sum_j p_ij log p_ij of each query's attention distribution, in nats, averaged over heads and
                query positions (the first position attends only to itself: entropy 0)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from optbench.training import device as hw
from optbench.training.rng import isolated_rng


def _sdpa_arguments(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                    enable_gqa=False):
    """The arguments of F.scaled_dot_product_attention by name, however the call passed them."""
    if attn_mask is not None:
        raise NotImplementedError("the attention probe reads causal or unmasked attention, not an attn_mask")
    return query, key, is_causal, scale


def head_logits(q: torch.Tensor, k: torch.Tensor, scale: float, causal: bool) -> torch.Tensor:
    """(B, T, S) float32 scores scale * q k^T of one head's (B, T, D) queries and (B, S, D) keys; the pairs
    causal attention leaves out are -inf."""
    logits = scale * (q.float() @ k.float().transpose(-1, -2))
    if causal:
        allowed = torch.ones(logits.shape[-2:], dtype=torch.bool, device=logits.device).tril()
        logits = logits.masked_fill(~allowed, -math.inf)
    return logits


def softmax_stats(query: torch.Tensor, key: torch.Tensor, causal: bool, scale: float | None) -> torch.Tensor:
    """(max logit, mean entropy) of attention with (B, H, T, D) queries over (B, H_kv, S, D) keys, H_kv dividing
    H as SDPA's enable_gqa shares them; one head at a time, so only a (B, T, S) score matrix is ever held."""
    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    share = query.size(1) // key.size(1)
    maxima, entropies = [], []
    for head in range(query.size(1)):
        logits = head_logits(query[:, head], key[:, head // share], scale, causal)
        maxima.append(logits.max())
        entropies.append(torch.special.entr(logits.softmax(dim=-1)).sum(dim=-1).mean())
    return torch.stack([torch.stack(maxima).max(), torch.stack(entropies).mean()])


class _AttentionCalls(TorchFunctionMode):
    """Records softmax_stats of every SDPA call made inside it, under the layer whose block is running."""

    def __init__(self) -> None:
        super().__init__()
        self.layer: int | None = None
        self.stats: dict[int, list[torch.Tensor]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and self.layer is not None:
            self.stats.setdefault(self.layer, []).append(softmax_stats(*_sdpa_arguments(*args, **kwargs)))
        return func(*args, **kwargs)


@contextmanager
def _layer_hooks(blocks: nn.ModuleList, calls: _AttentionCalls) -> Iterator[None]:
    def entering(layer: int):
        def hook(module, inputs):
            calls.layer = layer
        return hook

    handles = [block.register_forward_pre_hook(entering(i)) for i, block in enumerate(blocks)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def attention_stats(model: nn.Module, window: torch.Tensor, device: torch.device,
                    dtype: torch.dtype) -> tuple[list[int], torch.Tensor]:
    """The layers with softmax attention, and (len(layers), 2) of their (max logit, mean entropy) on `window`
    ((1, T) token ids) as the training forward computes them (same autocast). The model's mode, its state and
    every random stream are as they were afterwards: training goes on as if the probe had not run."""
    calls = _AttentionCalls()
    was_training = model.training
    model.eval()
    try:
        with isolated_rng(), _layer_hooks(model.blocks(), calls), hw.autocast(device, dtype), calls:
            model(window.to(device))
    finally:
        model.train(was_training)
    layers = sorted(calls.stats)
    if not layers:
        return [], torch.zeros(0, 2, device=device)
    per_layer = [torch.stack(calls.stats[layer]) for layer in layers]
    return layers, torch.stack([torch.stack([s[:, 0].max(), s[:, 1].mean()]) for s in per_layer])
