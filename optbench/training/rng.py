"""Every random stream a training step may draw from, as plain values a safe checkpoint can hold.

numpy's state is stored as plain lists and python's as nested lists, so `torch.load(weights_only=True)`
reads them back; CUDA states are per device, and each rank saves its own (see checkpoint.py).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
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


@contextlib.contextmanager
def isolated_rng() -> Iterator[None]:
    """The caller's random streams (python, numpy, torch) put back after the block: a run draws from streams it
    seeds itself, and leaves those of the process around it (a notebook, a sweep worker, a test session) as
    they were."""
    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)


def _as_tuples(obj):
    """random.setstate wants the nested tuples back that serialisation turned to lists."""
    return tuple(_as_tuples(x) for x in obj) if isinstance(obj, (list, tuple)) else obj
