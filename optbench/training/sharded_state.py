"""What a sharded checkpoint (sharded_checkpoint.py) of an FSDP2 run holds, and how a run of any world size reads it.

    model       {FQN: tensor}, torch's get_model_state_dict: DTensors, each rank writing its rows
    eval_model  the same at the evaluation point of an optimizer with train/eval modes (Schedule-Free), for sampling
    optimizer   {"state": {FQN: {name: value}}}, or {"parts": {part: {"state": ...}}} for a hybrid (Muon + AdamW)
    run.pt      step, tokens, every rank's RNG state (a list by rank), extra (time, telemetry), and the optimizer's
                state dict without its per-parameter states (param groups: lr, betas, ...) with the FQN of each
                parameter number, "param_names"

Each parameter's optimizer state is keyed by the parameter's name, never by a rank, and is the state one process
keeps for it:
- a parameter FSDP2 shards and its optimizer steps elementwise (Capabilities.fsdp "shards"): each state tensor of its
  shape is a DTensor sharded like it, which DCP writes rows by rows and reads back re-sharded at any world size; its
  scalars (step counts) are the same on every rank and written once;
- a parameter stepped whole on an owner rank ("owner", fsdp_optimizer.py): its state is whole tensors, on the owner
  only, written by the owner as plain tensors; at another world size the owners change (owners.py) and each new
  owner reads the whole state of each parameter it owns now.
So nothing saved depends on the world size: read whole by one process (`whole_payload`) a checkpoint is the
single-file checkpoint one process writes, its optimizer state numbered as torch.optim numbers it. torch's
get_optimizer_state_dict keys states by FQN too, but cannot be used here: an FSDPOptimizer steps stand-ins for the
whole tensors, which are not the model's parameters, and it fills a fresh optimizer's state by stepping it once.

Empty per-parameter states (signSGD's) are not stored (DCP keeps no empty dict); torch.optim's state is a
defaultdict, so a missing entry steps as an empty one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    set_model_state_dict,
)
from torch.distributed.tensor import DTensor

from optbench.training import sharded_checkpoint
from optbench.training.fsdp_state import parameter_states
from optbench.training.sharded_checkpoint import KeyPath, Sharded


@dataclass(frozen=True)
class Entry:
    """One parameter of the optimizer: where its state sits in the optimizer's state dict and in the checkpoint."""

    part: str
    """The part of a hybrid optimizer, "" for a plain one."""
    name: str
    param: torch.Tensor
    """The model's parameter (a DTensor under FSDP2), not the stand-in an FSDPOptimizer steps."""
    sharded: bool
    """Stepped on FSDP2's shards; False for a whole tensor stepped on its owner, and in one process."""
    held: bool
    """This rank keeps its state: always for a sharded one, on its owner only for a whole one."""


def entries(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Iterator[tuple[Entry, dict | None]]:
    """Every parameter of the optimizer (an FSDPOptimizer, or any over the model's parameters) with its state here,
    in state-dict order: each part's parameters by number."""
    inner = getattr(optimizer, "inner", optimizer)
    names = {id(p): name for name, p in model.named_parameters()}
    for (part, _), p, state in parameter_states(inner):
        whole = optimizer.whole_of(p) if hasattr(optimizer, "whole_of") else None
        param = p if whole is None else whole.param
        sharded = whole is None and isinstance(param, DTensor)
        yield Entry(part, names[id(param)], param, sharded, whole is None or optimizer.owned(whole)), state


def contents(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             payload: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(this rank's tensors, run.pt) of the checkpoint (CheckpointStore.save_sharded). `payload`: step, tokens, rng
    and extra as a single-file checkpoint holds them; extra's eval_model goes into the shards."""
    extra = dict(payload["extra"])
    eval_model = extra.pop("eval_model", None)
    tensors = {"model": get_model_state_dict(model), "optimizer": _optimizer_states(model, optimizer)}
    if eval_model is not None:
        tensors["eval_model"] = eval_model
    return tensors, {**payload, "extra": extra, **_optimizer_layout(model, optimizer)}


def _optimizer_states(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    saved: dict[str, Any] = {}
    for entry, state in entries(model, optimizer):
        if entry.held and state:
            if entry.sharded:
                _check_elementwise(entry, state)
            _leaf(saved, entry.part)[entry.name] = state
    return saved


def _leaf(saved: dict[str, Any], part: str) -> dict[str, Any]:
    """The {FQN: state} of `part` in the saved optimizer dict, made if new."""
    holder = saved if part == "" else saved.setdefault("parts", {}).setdefault(part, {})
    return holder.setdefault("state", {})


def _check_elementwise(entry: Entry, state: dict[str, Any]) -> None:
    """A sharded parameter's state must be tensors sharded like it, or scalars: anything else is one rank's view
    of a whole (a norm of its rows), which no other world size could split again."""
    for key, value in state.items():
        if isinstance(value, DTensor):
            fits = value.shape == entry.param.shape and value.placements == entry.param.placements
        elif isinstance(value, torch.Tensor):
            fits = value.dim() == 0
        else:
            fits = not any(isinstance(v, torch.Tensor) for v in _leaves(value))
        if not fits:
            raise RuntimeError(f"optimizer state {key!r} of {entry.name} is neither sharded like the parameter nor a "
                               "scalar, so a sharded checkpoint cannot tell each rank's part of it; an optimizer "
                               "keeping such state steps whole tensors (Capabilities.fsdp='owner')")


def _leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def _optimizer_layout(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """run.pt's part of the optimizer: its state dict without per-parameter states, and each number's FQN."""
    full = getattr(optimizer, "inner", optimizer).state_dict()
    layout = ({**full, "parts": {part: {**leaf, "state": {}} for part, leaf in full["parts"].items()}}
              if "parts" in full else {**full, "state": {}})
    names: dict[str, list[str]] = {}
    for entry, _ in entries(model, optimizer):
        names.setdefault(entry.part, []).append(entry.name)
    return {"optimizer": layout, "param_names": names}


def _numbered(run_state: dict[str, Any], saved: dict[str, Any]) -> dict[str, Any]:
    """The optimizer's state dict as torch.optim numbers it: run.pt's layout, with the states read by name."""
    names = run_state["param_names"]

    def leaf(part: str, layout: dict[str, Any]) -> dict[str, Any]:
        holder = saved if part == "" else saved.get("parts", {}).get(part, {})
        states = holder.get("state", {})
        return {**layout, "state": {i: states[name] for i, name in enumerate(names[part]) if name in states}}

    layout = run_state["optimizer"]
    if "parts" in layout:
        return {**layout, "parts": {part: leaf(part, sub) for part, sub in layout["parts"].items()}}
    return leaf("", layout)


def whole_payload(checkpoint: Sharded, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint read whole in one process: the payload of a single-file checkpoint (checkpoint.py)."""
    saved = sharded_checkpoint.read_whole(checkpoint.path, device)
    run = {k: v for k, v in checkpoint.run_state.items() if k != "param_names"}
    extra = {**run["extra"], **({"eval_model": saved["eval_model"]} if "eval_model" in saved else {})}
    return {**run, "model": saved["model"], "optimizer": _numbered(checkpoint.run_state, saved.get("optimizer", {})),
            "extra": extra}


def load_in_place(checkpoint: Sharded, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load the checkpoint into an FSDP2 model and its optimizer, at whatever world size saved it: each rank reads
    its rows of the model and of the elementwise states, and the whole states of the tensors it owns now. Every
    rank calls it."""
    here = {(entry.part, entry.name): entry for entry, _ in entries(model, optimizer)}
    model_state = get_model_state_dict(model)
    destinations: dict[str, Any] = {}
    where: dict[str, KeyPath] = {}
    for key, (path, entry) in sharded_checkpoint.index(checkpoint.path).items():
        if path[0] == "model":
            destinations[key] = model_state[path[1]]
        elif path[0] == "optimizer" and here[_optimizer_key(path)].held:
            destinations[key] = _optimizer_destination(here[_optimizer_key(path)], path, entry)
        else:
            continue  # eval_model: sampling's weights, not training's
        where[key] = path
    sharded_checkpoint.read(checkpoint.path, destinations, collective=True)
    saved = sharded_checkpoint.nest({where[key]: value for key, value in destinations.items()})
    set_model_state_dict(model, saved["model"])
    state_dict = _numbered(checkpoint.run_state, saved.get("optimizer", {}))
    # after the weights: an FSDPOptimizer's owners re-read their working copies from the shards
    getattr(optimizer, "load_local_state_dict", optimizer.load_state_dict)(state_dict)


def _optimizer_key(path: KeyPath) -> tuple[str, str]:
    """(part, FQN) of a saved optimizer value's path: optimizer/state/FQN/... or optimizer/parts/PART/state/FQN/..."""
    return (path[2], path[4]) if path[1] == "parts" else ("", path[2])


def _optimizer_destination(entry: Entry, path: KeyPath, stored: Any) -> torch.Tensor | None:
    """Where a saved optimizer value is read to: this rank's rows of a state tensor shaped like a sharded parameter,
    a whole tensor otherwise, None for a plain value."""
    if not sharded_checkpoint.is_tensor(stored):
        return None
    dtype = stored.properties.dtype
    top_level = len(path) == (6 if path[1] == "parts" else 4)  # .../FQN/name, not inside a list
    if entry.sharded and top_level and len(stored.size) > 0 and stored.size == entry.param.shape:
        return torch.empty_like(entry.param, dtype=dtype)  # a DTensor sharded like the parameter
    device = entry.param.to_local().device if isinstance(entry.param, DTensor) else entry.param.device
    return torch.empty(stored.size, dtype=dtype, device=device)
