"""Where a run continues from, and the refusal to continue a run under a different config.

A run directory's config.yaml is the contract for its checkpoints: resuming it with anything but
run-control keys changed (where it logs, how it checkpoints, threads, where data is cached) would
mix two experiments in one curve, so that is refused with the differing keys named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from optbench.config.compose import to_yaml
from optbench.config.schema import Config
from optbench.errors import UserError
from optbench.training import checkpoint, device, sharded_checkpoint
from optbench.training.sharded_checkpoint import Sharded

RUN_CONTROL = ("run.", "diag.", "train.threads", "train.compile", "data.root", "data.mirror", "data.num_proc")
"""Keys that change how a run is executed or logged, not what it computes (diag.* only measures it)."""


def find(cfg: Config, run_dir: Path, store: checkpoint.CheckpointStore, map_location: torch.device,
         sharded: bool = False) -> tuple[Path, dict[str, Any] | Sharded] | None:
    """The verified checkpoint to continue from per `run.resume` (auto | never | PATH), or None to start. A sharded
    checkpoint comes read whole, or with `sharded` (an FSDP2 run, which reads its own shards) as a `Sharded`."""
    resume = cfg.run.resume
    if resume not in ("auto", "never"):
        path = Path(resume)
        if path.is_dir() and not sharded_checkpoint.is_sharded(path):
            raise UserError(f"run.resume={resume} is a folder; give a checkpoint (a run's checkpoints/step-*.pt "
                            f"or step-*/), or run.dir={resume} run.resume=auto to continue the run there")
        if not path.exists():
            raise UserError(f"run.resume={resume}: no such checkpoint; valid: auto, never, PATH")
        try:
            return path, checkpoint.read(path, map_location, whole=not sharded)
        except (checkpoint.CorruptCheckpoint, OSError, RuntimeError, EOFError) as err:
            # the same failures CheckpointStore.latest() skips past; torch's own messages can run to many lines
            reason = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
            raise UserError(f"run.resume={resume} is not a usable checkpoint: {reason}") from None
    found = store.latest(map_location, whole=not sharded) if resume == "auto" else None
    if found is not None:
        check_same_config(run_dir, cfg)
        return found
    if run_dir.exists() and any(run_dir.iterdir()):
        if resume == "never":
            raise UserError(f"run.dir={run_dir} already holds a run, and run.resume=never starts one only in an "
                            "empty folder; choose another run.dir, or run.resume=auto to continue it")
        raise UserError(f"run.dir={run_dir} already holds a run without a usable checkpoint to resume; "
                        "choose another run.dir")
    return None


def check_world_size(cfg: Config, found: tuple[Path, dict[str, Any] | Sharded], world_size: int) -> None:
    """Refuse to continue on another number of ranks where that changes the numbers: with dropout, each rank draws
    its masks from its own random stream. Everything else carries over: a step's batches are a function of the
    step alone (data/loader.py), and the optimizer's state is one process's (sharded_state.py)."""
    path, state = found
    saved = len((state.run_state if isinstance(state, Sharded) else state)["rng"])
    if saved != world_size and cfg.model.dropout > 0:
        raise UserError(f"model.dropout={cfg.model.dropout} draws each rank's masks from its own random stream, so "
                        f"{path} (saved at world size {saved}) resumes at world size {saved} only, not {world_size}; "
                        f"run it with torchrun --nproc_per_node={saved}")


def saved_weight_dtypes(state: dict[str, Any] | Sharded) -> set[torch.dtype]:
    """The dtypes of a checkpoint's floating-point weights (a sharded one's from its index, without reading them)."""
    if isinstance(state, Sharded):
        entries = sharded_checkpoint.index(state.path).values()
        tensors = [entry for where, entry in entries if where[0] == "model" and sharded_checkpoint.is_tensor(entry)]
        return {entry.properties.dtype for entry in tensors if entry.properties.dtype.is_floating_point}
    return {t.dtype for t in state["model"].values() if t.is_floating_point()}


def check_precision(found: tuple[Path, dict[str, Any] | Sharded], dtype: torch.dtype, name: str) -> None:
    """Refuse to continue float32 weights in float64 or the other way: that is another run, not this one resumed
    (and the optimizer's state keeps the dtypes it was saved in, optim/state_dtypes.py)."""
    path, state = found
    weights = device.param_dtype(dtype)
    saved = saved_weight_dtypes(state)
    if saved and saved != {weights}:
        held = ", ".join(sorted(str(d).removeprefix("torch.") for d in saved))
        valid = "float64" if saved == {torch.float64} else "auto, float32, bfloat16, float16"
        raise UserError(f"train.dtype={name} trains {str(weights).removeprefix('torch.')} weights, but {path} holds "
                        f"{held} weights; valid to resume it: train.dtype={valid}")


def check_same_config(run_dir: Path, cfg: Config) -> None:
    stored_file = run_dir / "config.yaml"
    if not stored_file.is_file():
        return
    stored, now = _flat(OmegaConf.load(stored_file)), _flat(OmegaConf.create(to_yaml(cfg)))
    changed = [key for key in sorted(stored.keys() | now.keys())
               if not key.startswith(RUN_CONTROL) and stored.get(key) != now.get(key)]
    if changed:
        diffs = "; ".join(f"{k}: {stored.get(k)!r} in the run, {now.get(k)!r} now" for k in changed[:5])
        more = f" (and {len(changed) - 5} more)" if len(changed) > 5 else ""
        raise UserError(f"run.dir={run_dir} was trained with a different config ({diffs}{more}); "
                        "resume with the run's own settings or choose another run.dir")


def _flat(node) -> dict[str, Any]:
    """dotted key -> value, interpolations left unresolved (both sides are compared as written)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}{k}.", v)
        else:
            out[prefix[:-1]] = value

    walk("", OmegaConf.to_container(node, resolve=False))
    return out
