"""How much memory an optimizer's state takes: the report's "optimizer bytes per parameter" column."""

from __future__ import annotations

import sys
from typing import Any

import torch


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
    if _is_dtensor(obj):
        return _tensor_bytes(obj.to_local())
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _is_dtensor(obj: Any) -> bool:
    """Whether `obj` is a DTensor, without importing DTensor's module (~1 s of every process's start-up, for the
    torch compiler it imports): where nothing imported it, no DTensor can exist."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(obj, module.DTensor)
