"""One process's optimizer state dict, as an FSDPOptimizer's ranks hold it (resuming a single-file checkpoint under
FSDP2; see fsdp_optimizer.py), and the walk over an optimizer's parameters that sharded checkpoints share.

The optimizer inside an FSDPOptimizer is built over one process's build plan, so its `state_dict()` has one
process's layout: parameters numbered in plan order, the same param groups. Only the per-parameter entries are
scattered: a sharded parameter's state is DTensors on every rank, a whole tensor's is on its owner alone.
`scattered` cuts one process's dict (every rank holds all of it) down to each rank's part.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from optbench.training.shard_exchange import shard_rows

if TYPE_CHECKING:
    from optbench.training.fsdp_optimizer import FSDPOptimizer

Key = tuple[str, int]
"""(part of a hybrid optimizer, or "" for a plain one; the parameter's index in that part's state dict)."""


def scattered(opt: FSDPOptimizer, full: dict) -> dict:
    """This rank's part of one process's state dict: its shards of the sharded parameters' states and the states
    of the whole tensors it owns (`full` itself is left as it was)."""
    params = {key: p for key, p, _ in parameter_states(opt.inner)}
    local = _numbered(full)  # shallow copies down to each part's dict
    if "parts" in local:
        local["parts"] = {part: dict(leaf) for part, leaf in full["parts"].items()}
    for part, leaf in _leaf_dicts(local):
        kept = {}
        for i, state in leaf["state"].items():
            p = params[(part, i)]
            whole = opt.whole_of(p)
            if whole is None:
                kept[i] = _mapped(state, lambda t, p=p: _shard_like(t, p))
            elif opt.owned(whole):
                kept[i] = state
        leaf["state"] = kept
    return local


def _numbered(full: dict) -> dict:
    """A shallow copy of `full`, parameters numbered as torch.optim numbers them. Checkpoints written under FSDP2
    before FSDPOptimizer (elementwise optimizers only, through torch.distributed.checkpoint) name them instead."""
    named = [name for group in full.get("param_groups", []) for name in group["params"] if isinstance(name, str)]
    if not named:
        return dict(full)
    number = {name: i for i, name in enumerate(named)}
    return {**full, "state": {number[name]: state for name, state in full["state"].items()},
            "param_groups": [{**group, "params": [number[name] for name in group["params"]]}
                             for group in full["param_groups"]]}


def parameter_states(optimizer: torch.optim.Optimizer) -> Iterator[tuple[Key, torch.Tensor, dict | None]]:
    """(key, parameter, its state here or None) of every parameter of a plain or hybrid optimizer, in state-dict
    order: the same on every rank, and the same keys as one process's."""
    parts = getattr(optimizer, "parts", {"": optimizer})
    for part, leaf in parts.items():
        params = [p for group in leaf.param_groups for p in group["params"]]
        for i, p in enumerate(params):
            yield (part, i), p, leaf.state.get(p)


def _leaf_dicts(state_dict: dict) -> Iterator[tuple[str, dict]]:
    """(part, its torch.optim state dict) of a HybridOptimizer's {"parts": ...}, or ("", the dict itself)."""
    if "parts" in state_dict:
        yield from state_dict["parts"].items()
    else:
        yield "", state_dict


def _mapped(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """`value` with `fn` applied to every tensor in it (states hold tensors, lists of them, numbers, None)."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, dict):
        return {k: _mapped(v, fn) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_mapped(v, fn) for v in value)
    return value


def _shard_like(t: torch.Tensor, p: DTensor) -> torch.Tensor:
    """A sharded parameter's state tensor: this rank's rows as a DTensor placed like `p` where it has p's shape (an
    elementwise optimizer's moments), unchanged otherwise (step counts)."""
    if t.shape != p.shape or p.dim() == 0:
        return t
    rank, size = dist.get_rank(), dist.get_world_size()
    rows = shard_rows(p.shape[0], size)
    local = t[sum(rows[:rank]):sum(rows[:rank + 1])].to(p.to_local().device)
    # shape and stride given: FSDP2's shards may be uneven, and from_local would guess rows x world
    return DTensor.from_local(local, p.device_mesh, p.placements, run_check=False, shape=p.shape,
                              stride=p.stride())
