"""Checkpoints: one self-verifying file per saved step, written atomically, loaded without unpickling code.

A file is a header line `optbench-checkpoint v1 sha256=<hex>` followed by a `torch.save` payload;
the digest covers the payload, so a truncated or bit-flipped file is detected before it is read.
Loading uses `weights_only=True`: a checkpoint holds only tensors and plain Python values.

    checkpoints/step-00000100.pt    the last `run.keep_last` saves, plus every `run.keep_every`-th for good

`CheckpointStore.latest()` returns the newest file that verifies, warning about each newer one that
does not, so a crash while writing (or a damaged disk block) costs at most the steps since the
previous save.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from optbench.training.rundir import write_atomic

MAGIC = b"optbench-checkpoint v1 sha256="
PATTERN = re.compile(r"step-(\d{8,})\.pt")


class CorruptCheckpoint(Exception):
    """The file is truncated, altered or not an optbench checkpoint."""


def encode(payload: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    return MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body


def decode(data: bytes, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    header, _, body = data.partition(b"\n")
    if not header.startswith(MAGIC):
        raise CorruptCheckpoint("missing optbench checkpoint header")
    if hashlib.sha256(body).hexdigest().encode() != header[len(MAGIC):]:
        raise CorruptCheckpoint("checksum mismatch (truncated or altered)")
    try:
        return torch.load(io.BytesIO(body), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CorruptCheckpoint("holds objects other than tensors and plain values (refused unread)") from None


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and verify one checkpoint file; raises CorruptCheckpoint if it does not verify."""
    return decode(Path(path).read_bytes(), map_location)


def step_of(path: Path) -> int | None:
    match = PATTERN.fullmatch(path.name)
    return int(match.group(1)) if match else None


@dataclass
class CheckpointStore:
    """The checkpoints of one run directory, with retention: the last `keep_last`, and every `keep_every`-th."""

    folder: Path
    keep_last: int = 2
    keep_every: int = 0

    def path(self, step: int) -> Path:
        return self.folder / f"step-{step:08d}.pt"

    def steps(self) -> list[int]:
        """Saved steps, oldest first (only well-named files; temp files of an interrupted write are ignored)."""
        if not self.folder.is_dir():
            return []
        return sorted(s for p in self.folder.iterdir() if (s := step_of(p)) is not None)

    def save(self, step: int, payload: dict[str, Any]) -> Path:
        path = self.path(step)
        write_atomic(path, encode(payload))
        self._prune()
        return path

    def latest(self, map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that verifies, with its contents; None if there is none."""
        for step in reversed(self.steps()):
            path = self.path(step)
            try:
                return path, load(path, map_location)
            except (CorruptCheckpoint, OSError, RuntimeError, EOFError) as err:
                warnings.warn(f"checkpoint {path} is unusable ({err}); trying the previous one", stacklevel=2)
        return None

    def _prune(self) -> None:
        """Keep the newest `keep_last` (never fewer than one) and the permanent ones."""
        steps = self.steps()
        recent = set(steps[-max(self.keep_last, 1):])
        for step in steps:
            if step not in recent and not (self.keep_every and step % self.keep_every == 0):
                self.path(step).unlink(missing_ok=True)
