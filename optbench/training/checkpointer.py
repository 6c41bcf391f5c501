"""What a run's checkpoint holds, and putting it back: the trainer's save and restore, apart from its loop.

    step, tokens        where the run was
    rng                 every rank's random streams (a rank's dropout stream is its own)
    model, optimizer    in train mode, so resuming is exact: a single file (rank 0 writes it) or, under FSDP2, a
                        sharded folder each rank writes its shards of (sharded_state.py)
    extra               the run's wall-clock seconds so far, the telemetry's counts, and where present the
                        weight average and the eval-mode weights of a train/eval-mode optimizer (for sampling)

sharded_state.py is imported where a sharded checkpoint is saved or read: it imports DTensor and DCP (~1 s of every
process's start), which one-process and DDP runs never use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from optbench.training import distributed
from optbench.training.averaging import WeightAverage
from optbench.training.checkpoint import CheckpointStore
from optbench.training.optimizer_hooks import OptimizerHooks
from optbench.training.rng import rng_state, set_rng_state
from optbench.training.sharded_checkpoint import Sharded
from optbench.training.telemetry import Telemetry


@dataclass
class Checkpointer:
    store: CheckpointStore
    world: distributed.World
    sharded: bool
    """Checkpoints are sharded folders, each rank writing and reading its own shards (train.parallel=fsdp)."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    hooks: OptimizerHooks
    averager: WeightAverage | None
    telemetry: Telemetry

    def save(self, step: int, tokens: int, time_s: float) -> None:
        """Every rank takes part (the RNG states are gathered; under FSDP2 each writes its shards)."""
        extra: dict[str, Any] = {"time_s": time_s, "telemetry": self.telemetry.state_dict()}
        if self.hooks.caps.train_eval_modes:
            with self.hooks.eval_mode():
                extra["eval_model"] = {k: v.clone() for k, v in self.model.state_dict().items()}
        if self.averager is not None:
            extra["averaged_model"] = self.averager.state_dict()
        payload = {"step": step, "tokens": tokens, "rng": distributed.gather_objects(self.world, rng_state()),
                   "extra": extra}
        if self.sharded:
            from optbench.training import sharded_state

            self.store.save_sharded(step, *sharded_state.contents(self.model, self.optimizer, payload))
        elif self.world.is_main:
            self.store.save(step, {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                                   **payload})
        distributed.barrier(self.world)

    def restore(self, state: dict[str, Any] | Sharded) -> tuple[int, float]:
        """Put a checkpoint's state back in place; returns its step and the run's wall-clock seconds until then."""
        if isinstance(state, Sharded):
            from optbench.training import sharded_state

            sharded_state.load_in_place(state, self.model, self.optimizer)
            state = state.run_state
        else:
            distributed.load_full_state(self.model, self.optimizer, state["model"], state["optimizer"])
        rngs = state["rng"]
        # Another world size is refused where a rank draws from its stream (resume.check_world_size); elsewhere
        # the streams go unused, and a rank the saving run did not have takes the last one's.
        set_rng_state(rngs[min(self.world.rank, len(rngs) - 1)])
        if self.averager is not None:
            self.averager.load_state_dict(state["extra"]["averaged_model"])
        if "telemetry" in state["extra"]:  # checkpoints from before telemetry start its counts afresh
            self.telemetry.load_state_dict(state["extra"]["telemetry"])
        return state["step"], state["extra"].get("time_s", 0.0)
