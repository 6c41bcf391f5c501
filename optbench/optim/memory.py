"""How much memory an optimizer's state takes: the report's "optimizer bytes per parameter" column."""

from __future__ import annotations

from typing import Any

import torch
from torch.distributed.tensor import DTensor


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimizer's state dict (a hybrid's parts and quantised codes included). Under
    FSDP2 the state is spread over the ranks (training/fsdp_optimizer.py), which report their sum."""
    spread = getattr(optimizer, "all_ranks_state_bytes", None)
    return local_state_bytes(optimizer) if spread is None else spread


def local_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """`state_bytes` of what this process holds: a DTensor counts its local shard."""
    state = optimizer.state_dict()
    return _tensor_bytes(state.get("state", {})) + _tensor_bytes(state.get("parts", {}))


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, DTensor):
        return _tensor_bytes(obj.to_local())
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0
