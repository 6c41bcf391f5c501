"""Any optimizer under FSDP2: elementwise updates on the shards, whole-tensor updates on one owner rank each.

FSDP2 leaves each rank with a shard (rows of dimension 0) of every parameter and of its gradient. An elementwise
update (AdamW, Lion, ...; `Capabilities.fsdp == "shards"`) runs on those shards as it is. An update that needs
the whole tensor (Muon's Newton–Schulz, SOAP's and Shampoo's factors, GaLore's SVD, a per-tensor norm;
`"owner"`) cannot. For those, each tensor gets an owner rank (owners.py: balanced by estimated FLOPs), and a step

    1. gathers every such gradient whole on its owner (shard_exchange.py: one all-to-all),
    2. steps the optimizer on every rank: each owner updates a full-size working copy of each tensor it owns, with
       the same single-device code and state one process has (owners work on different tensors at once),
    3. scatters the updated tensors back into the shards (one all-to-all).

The optimizer is the one `optim.build` makes for one process, over a build plan whose whole-tensor entries are
replaced by stand-ins: the owner's working copy, or elsewhere a one-element tensor expanded to the full shape
(no gradient, so the optimizer leaves it and its state alone). Parameter order, param groups and the state of
every tensor are therefore one process's, which is what makes the numbers equal and a checkpoint hold one process's
state, keyed by parameter name (sharded_state.py). A tensor's optimizer state lives on its owner only.

The working copy is kept rather than gathered every step (one all-to-all per direction instead of two); it is
refreshed from the shards whenever weights are loaded into the model from outside (`refresh`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor, Shard

from optbench import optim
from optbench.config.schema import Config, OptimConfig
from optbench.errors import UserError
from optbench.optim.functional import sharding
from optbench.optim.memory import local_state_bytes
from optbench.optim.routing import Routed
from optbench.training import fsdp_state
from optbench.training.owners import assign_owners
from optbench.training.shard_exchange import Layout, gather_to_owners, scatter_to_shards, shard_rows


@dataclass(frozen=True)
class Whole:
    """A parameter its optimizer steps whole: the model's sharded DTensor, where it is stepped, and in its place
    in the optimizer a stand-in (the owner's full-size working copy; elsewhere an expanded one-element tensor)."""

    param: DTensor
    layout: Layout
    stand_in: torch.Tensor


def check(cfg: Config) -> None:
    """Refuse, in one line, a run that `train.parallel=fsdp` cannot give one process's numbers."""
    modes = {c.name: optim.fsdp_mode(c) for c in _configs(cfg.optim)}
    for name, mode in modes.items():
        if mode == "refused":
            able = ", ".join(n for n in optim.names() if optim.get(n).capabilities.fsdp != "refused")
            why = optim.get(name).capabilities.fsdp_refusal
            raise UserError(f"optim={name} cannot run under train.parallel=fsdp: {why}; valid with fsdp: {able} "
                            "(or train.parallel=ddp)")
    if cfg.train.dtype == "float16" and "owner" in modes.values():
        raise UserError(f"train.dtype=float16 scales gradients that optim={cfg.optim.name}'s owner ranks gather "
                        "outside the gradient scaler under train.parallel=fsdp; valid: auto, bfloat16, float32")


def build(cfg: OptimConfig, model: nn.Module, plan: list[Routed]) -> torch.optim.Optimizer:
    """`optim.build(cfg, model, plan)`, or under FSDP2 (the plan holds DTensors) that optimizer as an FSDPOptimizer."""
    if not any(isinstance(r.param, DTensor) for r in plan):
        return optim.build(cfg, model, plan)
    rank, size = dist.get_rank(), dist.get_world_size()
    picked = [i for i, r in enumerate(plan) if optim.fsdp_mode(cfg.backup if r.part == "backup" else cfg) == "owner"]
    owners = assign_owners([plan[i].param.shape for i in picked], size)
    wholes = [_whole(plan[i].param, owner, rank, size) for i, owner in zip(picked, owners)]
    stand_ins = dict(zip(picked, (w.stand_in for w in wholes)))
    local_plan = [dataclasses.replace(r, param=stand_ins[i]) if i in stand_ins else r for i, r in enumerate(plan)]
    return FSDPOptimizer(optim.build(cfg, model, local_plan), wholes, model)


def _configs(cfg: OptimConfig) -> list[OptimConfig]:
    """The configs of the optimizers a run builds: a matrix optimizer's backup takes the other parameters."""
    return [cfg, cfg.backup] if optim.matrix_only(cfg) else [cfg]


def _whole(param: torch.Tensor, owner: int, rank: int, size: int) -> Whole:
    if not isinstance(param, DTensor) or tuple(param.placements) != (Shard(0),):
        raise ValueError(f"FSDP2 parameters are DTensors sharded on dimension 0 over one mesh dimension; got "
                         f"{type(param).__name__} {getattr(param, 'placements', '')}")
    layout = Layout(param.shape, param.dtype, owner, shard_rows(param.shape[0], size))
    local = param.to_local()
    if local.shape[0] != layout.rows[rank]:  # FSDP2 splits as torch.chunk does; a change there must not go unseen
        raise RuntimeError(f"rank {rank} holds {local.shape[0]} rows of a {tuple(param.shape)} parameter, "
                           f"not {layout.rows[rank]}")
    if owner == rank:
        stand_in = torch.empty(param.shape, dtype=param.dtype, device=local.device)
    else:
        stand_in = torch.empty((), dtype=param.dtype, device=local.device).expand(param.shape)
    return Whole(param, layout, stand_in)


class FSDPOptimizer(torch.optim.Optimizer):
    """An optimizer built for one process, stepped over FSDP2 shards (elementwise parts) and owners (the rest)."""

    def __init__(self, inner: torch.optim.Optimizer, wholes: Sequence[Whole], model: nn.Module):
        self.inner = inner
        self.wholes = list(wholes)
        self._by_stand_in = {id(w.stand_in): w for w in self.wholes}
        self._fsdp_modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
        self.rank, self.device = dist.get_rank(), next(model.parameters()).to_local().device
        self.all_ranks_state_bytes = 0
        """The optimizer state's bytes summed over ranks, as of the last step (`optim.state_bytes` reports it)."""
        super().__init__(inner.param_groups, defaults={})  # the same group dicts: the lr schedule reaches `inner`
        self.refresh()

    def owned(self, whole: Whole) -> bool:
        return whole.layout.owner == self.rank

    def whole_of(self, p: torch.Tensor) -> Whole | None:
        """The whole tensor `p` stands in for in the inner optimizer; None for a sharded parameter."""
        return self._by_stand_in.get(id(p))

    @torch.no_grad()
    def refresh(self) -> None:
        """Working copies <- the model's shards (after building, and after weights were loaded into the model)."""
        copies = gather_to_owners([w.layout for w in self.wholes], [w.param.to_local() for w in self.wholes],
                                  self.rank, self.device)
        for i, copy in copies.items():
            self.wholes[i].stand_in.copy_(copy)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        stepped = [w for w in self.wholes if w.param.grad is not None]  # the same on every rank (FSDP2 reduces all)
        layouts = [w.layout for w in stepped]
        grads = gather_to_owners(layouts, [w.param.grad.to_local() for w in stepped], self.rank, self.device)
        for k, w in enumerate(stepped):
            if k in grads:
                w.stand_in.grad = grads[k]
            else:
                w.stand_in.stepped_elsewhere_on = self.device
        try:
            with sharding.local_only():  # an owner's step is its own: no rank splits it again
                self.inner.step()
        finally:
            for w in stepped:
                w.stand_in.grad, w.stand_in.stepped_elsewhere_on = None, None  # the gathered gradient is freed now
        updated = {k: w.stand_in for k, w in enumerate(stepped) if self.owned(w)}
        for k, rows in scatter_to_shards(layouts, updated, self.rank, self.device).items():
            stepped[k].param.to_local().copy_(rows)
        self._count_state()
        return loss

    def _count_state(self) -> None:
        """Sum the ranks' state bytes here, where every rank is anyway (a run's summary may be written where
        not every rank is, after an error on one)."""
        total = torch.tensor([local_state_bytes(self.inner)], dtype=torch.int64, device=self.device)
        dist.all_reduce(total)
        self.all_ranks_state_bytes = int(total.item())

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none)
        for w in self.wholes:
            if set_to_none:
                w.param.grad = None
            elif w.param.grad is not None:
                w.param.grad.zero_()

    def state_dict(self) -> dict:
        """This rank's optimizer state: shards' states as DTensors, whole tensors' on their owner only (what
        `optim.memory.local_state_bytes` counts, and what a sharded checkpoint holds: sharded_state.py)."""
        return self.inner.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        raise TypeError("an FSDPOptimizer loads one process's state dict with load_full_state_dict, or this rank's "
                        "part of one with load_local_state_dict")

    def load_local_state_dict(self, state_dict: dict) -> None:
        """Load this rank's part of a state dict (as `state_dict` returns it); the model's weights first."""
        self.inner.load_state_dict(state_dict)
        self.param_groups = self.inner.param_groups  # loading replaced the inner group dicts
        self.refresh()

    def load_full_state_dict(self, state_dict: dict) -> None:
        """Load one process's state dict (a single-file checkpoint's), given whole on every rank; the model's
        weights first."""
        self.load_local_state_dict(fsdp_state.scattered(self, state_dict))

    def eval(self) -> None:
        """Schedule-Free's move of the weights to its average x (the trainer calls it around evaluation)."""
        self.inner.eval()
        self._drop_gathered()

    def train(self) -> None:
        """Back to the training point y after evaluation."""
        self.inner.train()
        self._drop_gathered()

    def _drop_gathered(self) -> None:
        """FSDP2 keeps the root's gathered weights after a forward without backward (an evaluation): once the
        shards are rewritten, those copies are stale, and the next forward must gather again."""
        for module in self._fsdp_modules:
            module.reshard()

    def __getattr__(self, name: str):
        """Hooks the inner optimizer implements (set_horizon, update_hessian, hessian_every, ...) are reached
        through the wrapper."""
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)
