"""The optimizer's state: it must survive the checkpoint format (torch.save, then torch.load with
weights_only=True) unchanged, and how many bytes it takes per parameter is reported."""

from __future__ import annotations

import io
import math
import pickle
from collections.abc import Iterator
from typing import Any

import torch

from optbench import optim
from optbench.check import lm
from optbench.check.loop import start, train
from optbench.check.result import INFO, Outcome, describe, failed, passed
from optbench.check.subject import Subject

STEPS = 3
"""Enough for lazily created state (moments, preconditioners, counters) to exist."""
SAFE_TYPES = "torch.load(weights_only=True) builds only tensors, numbers, strings and containers of them"


def through_disk(obj: Any, weights_only: bool = True) -> Any:
    """`obj` after torch.save and torch.load: with weights_only, as optbench's checkpoints are read."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=weights_only)


def _trained_state(subject: Subject) -> tuple[torch.optim.Optimizer, dict]:
    run = start(subject, lm.tiny_lm(), STEPS)
    train(run, lm.task(lm.batches(STEPS)), range(STEPS))
    return run.optimizer, run.optimizer.state_dict()


def round_trip(subject: Subject) -> Outcome:
    _, state = _trained_state(subject)
    try:
        loaded = through_disk(state)
    except Exception as err:
        path, bad = offending(state)
        why = SAFE_TYPES if isinstance(err, pickle.UnpicklingError) else describe(err)
        return failed(f"{path} holds a {type(bad).__name__}", why, key=path,
                      type=f"{type(bad).__module__}.{type(bad).__qualname__}")
    changed = next(differences(state, loaded), None)
    if changed is not None:
        return failed(f"{changed} differs after loading", key=changed)
    return passed("loads with weights_only=True, unchanged")


def offending(obj: Any, path: str = "") -> tuple[str, Any]:
    """The deepest key path under which something does not survive `through_disk` (a container whose parts all do
    is itself the culprit: a class of its own, or keys that are not plain)."""
    for key, child in _children(obj):
        child_path = f"{path}.{key}" if path else str(key)
        if not _survives(child):
            return offending(child, child_path)
    return path or "(the state dict)", obj


def _survives(obj: Any) -> bool:
    try:
        through_disk(obj)
    except Exception:
        return False
    return True


def _children(obj: Any) -> list[tuple[Any, Any]]:
    if isinstance(obj, dict):
        return list(obj.items())
    if isinstance(obj, list | tuple):
        return list(enumerate(obj))
    return []


def differences(a: Any, b: Any, path: str = "") -> Iterator[str]:
    """Key paths where two states differ: tensors bitwise (dtype and shape included), numbers and the rest by value
    (NaN equal to NaN)."""
    where = path or "(the state dict)"
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b)):
            yield where
    elif isinstance(a, dict | list | tuple) and type(a) is type(b):
        keys_a, keys_b = dict(_children(a)), dict(_children(b))
        if keys_a.keys() != keys_b.keys():
            yield where
            return
        for key, value in keys_a.items():
            yield from differences(value, keys_b[key], f"{path}.{key}" if path else str(key))
    elif not (a == b or _both_nan(a, b)):
        yield where


def _both_nan(a: Any, b: Any) -> bool:
    return isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)


def bytes_per_parameter(subject: Subject) -> Outcome:
    optimizer, _ = _trained_state(subject)
    params = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    total = optim.state_bytes(optimizer)
    per = total / params
    return Outcome(INFO, f"{per:.2f} bytes per parameter", {"bytes": total, "parameters": params,
                                                           "bytes_per_parameter": per},
                   f"{total:,} bytes over {params:,} fp32 parameters after {STEPS} steps")
