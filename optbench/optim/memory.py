"""How much memory an optimizer's state takes: the report's "optimizer bytes per parameter" column."""

from __future__ import annotations

from typing import Any

import torch


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimizer's state dict (a hybrid's parts and quantised codes included)."""
    state = optimizer.state_dict()
    return _tensor_bytes(state.get("state", {})) + _tensor_bytes(state.get("parts", {}))


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0
