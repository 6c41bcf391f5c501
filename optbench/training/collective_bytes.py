"""Bytes per rank that torch.distributed collectives move, counted where every collective passes: the dispatcher.

    with CollectiveBytes() as sent:
        optimizer.step()
    sent.total, sent.by_op                     # this rank's share of the bytes, and per collective

A TorchDispatchMode sees each c10d op (torch.distributed's calls from Python, and from C++: DDP's gradient
all-reduce, FSDP2's all-gathers and reduce-scatters) and each functional collective (DTensor's redistributions), so
no collective escapes the count the way it would escape patched Python functions. Each collective counts the bytes
that must cross between its ranks at the least, shared evenly among them (whatever algorithm gloo or NCCL picks);
with a buffer of S bytes over n ranks, a rank's share is

    all-reduce       2(n-1)/n S
    all-gather       (n-1)/n S    S: the gathered output
    reduce-scatter   (n-1)/n S    S: the input
    broadcast        (n-1)/n S    each other rank receives S
    all-to-all       exactly the pieces this rank sends to other ranks

(nccl-tests' "bus bandwidth" has the same factors, but for a broadcast, where it counts the bottleneck link). A
collective op not in the table raises rather than go uncounted. The mode adds a Python call to every op while it is
on: count steps other than the timed ones.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

UNCOUNTED = {"c10d::barrier", "c10d::monitored_barrier_", "c10d::check_for_nan", "_c10d_functional::wait_tensor",
             "_c10d_functional::_wrap_tensor_autograd"}
"""Ops of the collective namespaces that carry no payload (a barrier, waiting for or wrapping a functional result).
The autograd forms of the functional collectives (_c10d_functional_autograd::*) reach the mode as the plain ones."""


def _all_reduce(s: int, n: int) -> float:
    return 2 * (n - 1) / n * s


def _to_each_other_rank_once(s: int, n: int) -> float:
    """A broadcast: S reaches each of the other n - 1 ranks."""
    return (n - 1) / n * s


def _to_each_other_rank(s: int, n: int) -> float:
    """S to each other rank: an all-gather's input, a reduce-scatter's output."""
    return float((n - 1) * s)


def _all_but_own_piece(s: int, n: int) -> float:
    """A reduce-scatter's input, but for the piece this rank keeps."""
    return (n - 1) / n * s


RULES = {
    "c10d::allreduce_": (_all_reduce, "tensors"), "c10d::allreduce_coalesced_": (_all_reduce, "tensors"),
    "c10d::broadcast_": (_to_each_other_rank_once, "tensors"),
    "c10d::_allgather_base_": (_to_each_other_rank, "input_tensor"),
    "c10d::allgather_": (_to_each_other_rank, "input_tensors"),
    "c10d::allgather_coalesced_": (_to_each_other_rank, "input_list"),
    "c10d::allgather_into_tensor_coalesced_": (_to_each_other_rank, "inputs"),
    "c10d::_reduce_scatter_base_": (_to_each_other_rank, "output_tensor"),
    "c10d::reduce_scatter_": (_to_each_other_rank, "output_tensors"),
    "c10d::reduce_scatter_tensor_coalesced_": (_to_each_other_rank, "outputs"),
    **{f"_c10d_functional::{op}": rule for op, rule in {
        "all_reduce": (_all_reduce, "input"), "all_reduce_": (_all_reduce, "input"),
        "all_reduce_coalesced": (_all_reduce, "inputs"), "all_reduce_coalesced_": (_all_reduce, "inputs"),
        "broadcast": (_to_each_other_rank_once, "input"), "broadcast_": (_to_each_other_rank_once, "input"),
        "all_gather_into_tensor": (_to_each_other_rank, "input"),
        "all_gather_into_tensor_out": (_to_each_other_rank, "input"),
        "all_gather_into_tensor_coalesced": (_to_each_other_rank, "inputs"),
        "reduce_scatter_tensor": (_all_but_own_piece, "input"),
        "reduce_scatter_tensor_out": (_all_but_own_piece, "input"),
        "reduce_scatter_tensor_coalesced": (_all_but_own_piece, "inputs")}.items()},
}
"""Collective op -> (a rank's share from S, the bytes of the argument named, and the group's size n; that argument).
The all-to-alls are counted apart, piece by piece."""


def _bytes(tensors: Any) -> int:
    """Bytes of a tensor or of a (nested) list of tensors."""
    if isinstance(tensors, torch.Tensor):
        return tensors.numel() * tensors.element_size()
    return sum(_bytes(t) for t in tensors)


def _sent(op: str, a: dict[str, Any], rank: int, n: int) -> float:
    """This rank's share of the bytes collective `op` (its arguments by name) moves over a group of n ranks."""
    if op in RULES:
        share, argument = RULES[op]
        return share(_bytes(a[argument]), n)
    if op == "c10d::alltoall_":  # one input tensor per destination rank
        return float(_bytes(a["input_tensors"]) - _bytes(a["input_tensors"][rank]))
    if op in ("c10d::alltoall_base_", "_c10d_functional::all_to_all_single"):
        # input_split_sizes: rows of dimension 0 for each destination rank; none given: equal pieces
        inputs, splits = a["input"], list(a["input_split_sizes"])
        if not splits:
            return _bytes(inputs) * (n - 1) / n
        row = _bytes(inputs) / inputs.shape[0] if inputs.shape[0] else 0.0
        return (sum(splits) - splits[rank]) * row
    raise NotImplementedError(f"collective {op} is not counted by CollectiveBytes; add it to RULES")


def _group(a: dict[str, Any]) -> tuple[int, int]:
    """(rank, size) in the op's process group."""
    if "process_group" in a:
        group = torch._C._distributed_c10d.ProcessGroup.unbox(a["process_group"])
    else:
        group = dist.distributed_c10d._resolve_process_group(a["group_name"])
    return group.rank(), group.size()


class CollectiveBytes(TorchDispatchMode):
    """While active, adds up this rank's share of the bytes every collective moves (the module's convention)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_op: Counter[str] = Counter()
        """Bytes per op, by its dispatcher name (c10d::allreduce_, _c10d_functional::all_gather_into_tensor, ...)."""

    @property
    def total(self) -> float:
        return sum(self.by_op.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        op = func._schema.name
        if func.namespace in ("c10d", "_c10d_functional") and op not in UNCOUNTED:
            named = {**{s.name: v for s, v in zip(func._schema.arguments, args)}, **kwargs}
            self.by_op[op] += _sent(op, named, *_group(named))
        return func(*args, **kwargs)
