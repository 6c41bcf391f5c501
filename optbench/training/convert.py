"""`optbench checkpoint convert RUN_DIR|CHECKPOINT_DIR [--out FILE]`: a sharded checkpoint as one file.

The result is the single-file checkpoint one process writes (checkpoint.py: a `torch.save` file and its `.sha256`),
the step of a run directory's newest sharded checkpoint that verifies, or of the one named: for copying a run's
weights elsewhere, loading them with plain `torch.load(weights_only=True)`, or resuming in one process. `optbench
sample`, `export` and `eval` read a run's sharded checkpoints as they are (each read whole).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from optbench.errors import UserError, check
from optbench.training import checkpoint, sharded_checkpoint, sharded_state


@dataclass(frozen=True)
class Converted:
    source: Path
    out: Path
    step: int
    world_size: int


def convert(source: Path, out: Path | None = None) -> Converted:
    """Write the sharded checkpoint `source` (or a run directory's newest one) to `out` (default: beside it, as
    step-N.pt, the name a single-file checkpoint of that step has)."""
    opened = _sharded(source)
    out = out if out is not None else opened.path.with_name(opened.path.name + ".pt")
    check(not out.is_dir(), f"--out {out} is a folder; give the file to write, e.g. {out / (opened.path.name + '.pt')}")
    checkpoint.save(out, sharded_state.whole_payload(opened))
    return Converted(opened.path, out, opened.manifest["step"], opened.world_size)


def _sharded(source: Path) -> sharded_checkpoint.Sharded:
    if sharded_checkpoint.is_sharded(source):
        try:
            return sharded_checkpoint.open_checkpoint(source)
        except (checkpoint.CorruptCheckpoint, OSError) as err:
            raise UserError(f"{source} is not a usable sharded checkpoint: {err}") from None
    store = checkpoint.CheckpointStore(source / "checkpoints")
    check(source.is_dir() and bool(store.steps()),
          f"{source} is neither a sharded checkpoint (a folder checkpoints/step-N/) nor a run directory with one")
    unusable = []
    for step in reversed(store.steps()):
        path = store.sharded_path(step)
        if path.is_dir():
            try:
                opened = sharded_checkpoint.open_checkpoint(path)
            except (checkpoint.CorruptCheckpoint, OSError) as err:
                unusable.append(f"{path.name}: {err}")
                continue
            for reason in unusable:  # as CheckpointStore.latest does: the newer ones are reported, not used
                warnings.warn(f"checkpoint {reason}; converting {path.name}", stacklevel=2)
            return opened
    raise UserError(f"{source} holds no usable sharded checkpoint"
                    + (f" ({'; '.join(unusable)})" if unusable else " (its checkpoints are single files)"))
