"""Checkpoints: model, optimizer and progress in one file, written atomically, loaded safely.

Loading uses `weights_only=True`, so a checkpoint can never run code; everything in it is tensors
and plain Python values (numpy's RNG state is stored as plain lists for that reason).
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from optbench.train.rundir import write_atomic

LATEST = "latest.pt"


def rng_state() -> dict[str, Any]:
    """Every random stream a training step may draw from."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuples(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(obj):
    """random.setstate wants the nested tuples back that serialisation may have turned to lists."""
    return tuple(_as_tuples(x) for x in obj) if isinstance(obj, (list, tuple)) else obj


def save(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         step: int, tokens: int, extra: dict[str, Any] | None = None) -> None:
    """Write a checkpoint for resuming after `step` completed steps."""
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "tokens": tokens,
        "rng": rng_state(),
        "extra": extra or {},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_atomic(path, buffer.getvalue())


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint without unpickling arbitrary objects."""
    return torch.load(path, map_location=map_location, weights_only=True)
