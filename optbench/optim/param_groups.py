"""Which parameters get weight decay.

Matrices (token embeddings, projections, the head) decay; vectors (norm gains, biases) do not,
as in GPT-2/nanoGPT training. The optimizer-library issue replaces this with role-based routing.
"""

from __future__ import annotations

from typing import Any

from torch import nn

ParamGroup = dict[str, Any]


def param_groups(model: nn.Module, weight_decay: float) -> list[ParamGroup]:
    """Two groups, decayed matrices then undecayed vectors, each with the parameter names."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append((name, p))
    groups = [
        {"params": [p for _, p in decay], "names": [n for n, _ in decay], "weight_decay": weight_decay},
        {"params": [p for _, p in no_decay], "names": [n for n, _ in no_decay], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]
