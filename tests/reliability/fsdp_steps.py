"""Every optimizer that `train.parallel=fsdp` runs, stepped under FSDP2 and in one process from the same gradients:

    python -m torch.distributed.run --standalone --nproc_per_node=N -m tests.reliability.fsdp_steps OUT.json [NAME...]

For each optimizer (default: every one FSDP does not refuse) rank 0 writes to OUT.json how far the FSDP2 weights are
from one process's after a few steps; whether its sharded checkpoint, read whole, holds one process's model and
optimizer state dicts; and how far the weights are after a step taken by fresh FSDP2 optimizers loaded from one
process's state dict (a single-file checkpoint) and from the sharded checkpoint (all 0.0 / true: bit for bit).
Every rank holds the one-process reference itself. Gradients come from a seeded generator instead of a backward pass:
FSDP2 reduces real gradients in another order than one process sums its micro-batches, which shows in the last bit
(and SOAP's eigenbases make the most of it); here the optimizers alone are compared.
"""

from __future__ import annotations

import contextlib
import copy
import json
import sys
import tempfile
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from optbench import models, optim
from optbench.config.compose import compose
from optbench.optim.algorithms import mulo
from optbench.optim.functional import sharding
from optbench.training import distributed, fsdp_optimizer, sharded_checkpoint, sharded_state
from optbench.training.fsdp_optimizer import FSDPOptimizer
from optbench.training.fsdp_state import parameter_states
from optbench.training.optimizer_hooks import OptimizerHooks
from optbench.training.shard_exchange import shard_rows
from optbench.training.sharded_checkpoint import Sharded

STEPS = 4
VOCAB = 51
"""Odd: the embedding's shards are uneven at 2 ranks and at 4."""
HPARAMS = {
    # Refreshes and preconditioners due within STEPS, so their whole-tensor work is compared too.
    "soap": {"precondition_frequency": 2},
    "shampoo": {"start_preconditioning_step": 2, "precondition_frequency": 2},
    "galore": {"rank": 4, "update_proj_gap": 2},
    "apollo": {"rank": 4, "update_proj_gap": 2},
    "apollo-mini": {"update_proj_gap": 2},
    "conda": {"update_proj_gap": 2},
}
MODEL = {"mulo": "llama-debug"}
"""muLO takes 2-D hidden matrices only; everything else runs on the MoE, whose experts are 3-D."""


def names(argv: list[str]) -> list[str]:
    return argv or [n for n in optim.names() if optim.get(n).capabilities.fsdp != "refused"]


def config(name: str, weights_dir: Path) -> optim.OptimConfig:
    extra = {"weights": str(mulo.write_random_weights(weights_dir / name))} if name == "mulo" else {}
    return optim.make_config(name, **HPARAMS.get(name, {}), **extra)


def models_for(name: str, world: distributed.World) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(one process's model, an FSDP2-sharded copy of it)."""
    torch.manual_seed(0)
    cfg = compose([f"model={MODEL.get(name, 'moe-debug')}", "model.pad_vocab_multiple=1", "model.n_embd=32"]).model
    reference = models.build(cfg, VOCAB, 16)
    return reference, distributed.replicate(copy.deepcopy(reference), world, "fsdp")


def fsdp_optimizer_for(cfg: optim.OptimConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    return fsdp_optimizer.build(cfg, model, optim.plan(cfg, model))


def step(pairs, generator: torch.Generator) -> None:
    """One step of each (model, optimizer) from the same random gradients (sharded where the model is)."""
    grads = None
    for model, opt in pairs:
        params = [p for p in model.parameters() if p.requires_grad]
        grads = grads or [torch.randn(p.shape, generator=generator) * 0.01 for p in params]
        for p, g in zip(params, grads):
            p.grad = distribute_like(g, p)
        # The one-process reference must not spread its work over the ranks as under DDP (sharding.py): the
        # layout of the results broadcast there differs, and with it the last bit of NorMuon's row norms.
        with contextlib.nullcontext() if isinstance(opt, FSDPOptimizer) else sharding.local_only():
            opt.step()
        opt.zero_grad(set_to_none=True)


def distribute_like(g: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """`g` as `p` holds it: whole, or this rank's rows of it as a DTensor placed like p (every rank has all of g)."""
    if not isinstance(p, DTensor):
        return g.clone()
    rows = shard_rows(g.shape[0], dist.get_world_size())
    start = sum(rows[:dist.get_rank()])
    return DTensor.from_local(g[start:start + rows[dist.get_rank()]].clone(), p.device_mesh, p.placements,
                              run_check=False, shape=g.shape, stride=g.stride())


def weight_diff(reference: torch.nn.Module, sharded: torch.nn.Module) -> float:
    diffs = [(p.full_tensor() - q).abs().max().item() for p, q in zip(sharded.parameters(), reference.parameters())]
    return max(diffs)


def same(a, b) -> bool:
    """Equal state dicts: the same keys, numbers and tensors (bit for bit, wherever they are)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a.cpu(), b.cpu())
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def placement(fsdp_opt: FSDPOptimizer, ref_opt: torch.optim.Optimizer) -> dict:
    """Where the whole tensors' states live: how many ranks hold each (1: its owner alone), and their bytes summed
    over ranks against one process's bytes of the same states."""
    whole = {key: state for key, p, state in parameter_states(fsdp_opt.inner) if fsdp_opt.whole_of(p) is not None}
    counts = torch.tensor([[int(state is not None) for state in whole.values()] + [_bytes(whole.values())]])
    dist.all_reduce(counts)
    one_process = [state for key, _, state in parameter_states(ref_opt) if key in whole]
    return {"ranks_holding_each_whole_state": sorted(set(counts[0, :-1].tolist())),
            "whole_state_bytes": [int(counts[0, -1]), _bytes(one_process)]}


def _bytes(states) -> int:
    return sum(t.numel() * t.element_size() for state in states if state for t in _tensors(state))


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict | list | tuple):
        for v in value.values() if isinstance(value, dict) else value:
            yield from _tensors(v)


def check(name: str, world: distributed.World, weights_dir: Path, checkpoints: Path) -> dict:
    cfg = config(name, weights_dir)
    reference, sharded = models_for(name, world)
    ref_opt, fsdp_opt = optim.build(cfg, reference), fsdp_optimizer_for(cfg, sharded)
    for opt in (ref_opt, fsdp_opt):
        OptimizerHooks(opt, optim.get(name).capabilities).before_training(100)
    generator = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        step([(reference, ref_opt), (sharded, fsdp_opt)], generator)
    result = {"max_weight_diff": weight_diff(reference, sharded), **placement(fsdp_opt, ref_opt)}
    saved = save_sharded(sharded, fsdp_opt, checkpoints / name)
    if world.is_main:
        whole = sharded_state.whole_payload(saved)
        result["model_equal"] = same(reference.state_dict(), whole["model"])
        result["state_equal"] = same(without_empty_states(ref_opt.state_dict()), whole["optimizer"])
    resumed = distributed.replicate(copy.deepcopy(reference), world, "fsdp")
    resumed_opt = fsdp_optimizer_for(cfg, resumed)
    resumed_opt.load_full_state_dict(copy.deepcopy(ref_opt.state_dict()))  # as read from a file: no aliasing
    from_shards = distributed.replicate(fresh_model(name), world, "fsdp")
    from_shards_opt = fsdp_optimizer_for(cfg, from_shards)
    sharded_state.load_in_place(saved, from_shards, from_shards_opt)
    step([(reference, ref_opt), (resumed, resumed_opt), (from_shards, from_shards_opt)], generator)
    result["resumed_diff"] = weight_diff(reference, resumed)
    result["sharded_resumed_diff"] = weight_diff(reference, from_shards)
    result["forward_diff"] = forward_after_evaluation_diff(name, [(reference, ref_opt), (resumed, resumed_opt)])
    return result


def save_sharded(model: torch.nn.Module, opt: torch.optim.Optimizer, path: Path) -> Sharded:
    """The sharded checkpoint a run under FSDP2 writes of `model` and `opt` (every rank writes its part)."""
    payload = {"step": STEPS, "tokens": 0, "rng": [], "extra": {}}
    sharded_checkpoint.save(path, STEPS, *sharded_state.contents(model, opt, payload))
    return sharded_checkpoint.open_checkpoint(path)


def fresh_model(name: str) -> torch.nn.Module:
    """The model built again with other weights: everything a resumed run computes must come from the checkpoint."""
    torch.manual_seed(1)
    cfg = compose([f"model={MODEL.get(name, 'moe-debug')}", "model.pad_vocab_multiple=1", "model.n_embd=32"]).model
    return models.build(cfg, VOCAB, 16)


def without_empty_states(state_dict: dict) -> dict:
    """One process's state dict without the empty per-parameter states, which a sharded checkpoint does not keep
    (sharded_state.py): signSGD keeps nothing per parameter."""
    if "parts" in state_dict:
        return {**state_dict, "parts": {k: without_empty_states(v) for k, v in state_dict["parts"].items()}}
    return {**state_dict, "state": {i: st for i, st in state_dict["state"].items() if st}}


def forward_after_evaluation_diff(name: str, pairs) -> float:
    """How far apart the two models' training forwards are after an evaluation (Schedule-Free's: at its average
    x, then back to y): FSDP2 must not reuse weights it gathered for the evaluation."""
    x = torch.arange(32).remainder(VOCAB).view(2, 16)
    outputs = []
    for model, opt in pairs:
        with torch.no_grad():
            with OptimizerHooks(opt, optim.get(name).capabilities).eval_mode():
                model(x)
            outputs.append(model(x))
    return (outputs[0] - outputs[1]).abs().max().item()


def main(out: str, requested: list[str]) -> int:
    world = distributed.from_environment()
    results = {}
    with distributed.process_group(world), tempfile.TemporaryDirectory() as tmp:
        distributed.init(world, "cpu")
        shared = Path(distributed.gather_objects(world, tmp)[0]) / "checkpoints"  # rank 0's: all write shards there
        for name in names(requested):
            try:
                results[name] = check(name, world, Path(tmp), shared)
            except Exception:  # noqa: BLE001 -- one optimizer's failure is its result; the others still run
                results[name] = {"error": traceback.format_exc(limit=-3)}
    if world.is_main:
        Path(out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
