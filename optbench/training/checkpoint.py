"""Checkpoints: one plain `torch.save` file per saved step with its SHA-256 beside it, written atomically and
loaded without unpickling code.

    checkpoints/step-00000100.pt          torch.save payload: `torch.load(path, weights_only=True)` reads it
    checkpoints/step-00000100.pt.sha256   "<hex>  step-00000100.pt", as `sha256sum -c` reads it

The payload is streamed to a temp file and renamed into place; the checksum file is written last, so it marks a
complete save: a checkpoint without one (a save killed between the two renames) is not used. The digest is
checked before the payload is read, so a truncated or bit-flipped file is detected, and loading uses
`weights_only=True`: a checkpoint holds only tensors and plain Python values. Files of optbench's first format
(a header line `optbench-checkpoint v1 sha256=<hex>` in front of the payload) still load.

Runs under FSDP2 write sharded checkpoints instead, folders every rank writes into (sharded_checkpoint.py):

    checkpoints/step-00000100/            DCP's files, run.pt, and manifest.json with every file's SHA-256

`CheckpointStore` holds both kinds. It keeps the last `run.keep_last` saves plus every `run.keep_every`-th for good;
`CheckpointStore.latest()` returns the newest checkpoint that verifies, warning about each newer one that does
not, so a crash while writing (or a damaged disk block) costs at most the steps since the previous save. A sharded
one comes read whole, as the payload a single file holds (what sampling and export read), or left on disk for the
ranks of an FSDP2 run to read their shards (sharded_state.load_in_place).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from optbench.training import sharded_checkpoint
from optbench.training.integrity import CorruptCheckpoint, file_sha256
from optbench.training.sharded_checkpoint import Sharded
from optbench.training.rundir import write_atomic

DIGEST_SUFFIX = ".sha256"
LEGACY_MAGIC = b"optbench-checkpoint v1 sha256="
PATTERN = re.compile(r"step-(\d{8,})(\.pt)?")


def digest_path(path: Path) -> Path:
    return path.with_name(path.name + DIGEST_SUFFIX)


def save(path: Path, payload: dict[str, Any]) -> Path:
    """Write `payload` to `path` atomically, then its checksum file; returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        hexdigest = file_sha256(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    write_atomic(digest_path(path), f"{hexdigest}  {path.name}\n".encode())
    return path


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and verify one checkpoint file; raises CorruptCheckpoint if it does not verify."""
    path = Path(path)
    with open(path, "rb") as f:
        if f.read(len(LEGACY_MAGIC)) == LEGACY_MAGIC:
            return _load_legacy(path.read_bytes(), map_location)
    sidecar = digest_path(path)
    if not sidecar.is_file():
        raise CorruptCheckpoint(f"no checksum file {sidecar.name} beside it (a save that never finished, or not an "
                                "optbench checkpoint)")
    recorded = sidecar.read_text().split()
    if not recorded or file_sha256(path) != recorded[0]:
        raise CorruptCheckpoint("checksum mismatch (truncated or altered)")
    return _torch_load(path, map_location)


def _load_legacy(data: bytes, map_location: str | torch.device) -> dict[str, Any]:
    header, _, body = data.partition(b"\n")
    if hashlib.sha256(body).hexdigest().encode() != header[len(LEGACY_MAGIC):]:
        raise CorruptCheckpoint("checksum mismatch (truncated or altered)")
    return _torch_load(io.BytesIO(body), map_location)


def _torch_load(source, map_location: str | torch.device) -> dict[str, Any]:
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CorruptCheckpoint("holds objects other than tensors and plain values (refused unread)") from None


def step_of(path: Path) -> int | None:
    """The step of a checkpoint's name: step-N.pt (a file) or step-N (a sharded checkpoint's folder)."""
    match = PATTERN.fullmatch(path.name)
    if match is None or (match.group(2) is None) != path.is_dir():
        return None
    return int(match.group(1))


@dataclass
class CheckpointStore:
    """The checkpoints of one run directory, with retention: the last `keep_last`, and every `keep_every`-th."""

    folder: Path
    keep_last: int = 2
    keep_every: int = 0

    def path(self, step: int) -> Path:
        return self.folder / f"step-{step:08d}.pt"

    def sharded_path(self, step: int) -> Path:
        return self.folder / f"step-{step:08d}"

    def steps(self) -> list[int]:
        """Saved steps, oldest first (only well-named files and folders; those of an interrupted write are hidden)."""
        if not self.folder.is_dir():
            return []
        return sorted({s for p in self.folder.iterdir() if (s := step_of(p)) is not None})

    def save(self, step: int, payload: dict[str, Any]) -> Path:
        path = save(self.path(step), payload)
        self._prune()
        return path

    def save_sharded(self, step: int, tensors: dict[str, Any], run_state: dict[str, Any]) -> Path:
        """Every rank calls it with its tensors (sharded_state.contents); rank 0's run state is kept."""
        path = sharded_checkpoint.save(self.sharded_path(step), step, tensors, run_state)
        if sharded_checkpoint.this_rank() == 0:
            self._prune()
        return path

    def latest(self, map_location: str | torch.device = "cpu",
               whole: bool = True) -> tuple[Path, dict[str, Any] | Sharded] | None:
        """The newest checkpoint that verifies, with its contents; None if there is none. A sharded one comes
        read whole into a single-file payload, or with `whole=False` as a verified `Sharded` for
        sharded_state.load_in_place (its tensors stay on disk)."""
        for step in reversed(self.steps()):
            for path in (self.sharded_path(step), self.path(step)):
                if path.exists():
                    try:
                        return path, read(path, map_location, whole)
                    except (CorruptCheckpoint, OSError, RuntimeError, EOFError) as err:
                        warnings.warn(f"checkpoint {path} is unusable ({err}); trying the previous one",
                                      stacklevel=2)
        return None

    def _prune(self) -> None:
        """Keep the newest `keep_last` (never fewer than one) and the permanent ones."""
        steps = self.steps()
        recent = set(steps[-max(self.keep_last, 1):])
        for step in steps:
            if step not in recent and not (self.keep_every and step % self.keep_every == 0):
                digest_path(self.path(step)).unlink(missing_ok=True)  # first: a .pt without one is unused
                self.path(step).unlink(missing_ok=True)
                folder = self.sharded_path(step)
                if folder.is_dir():
                    (folder / sharded_checkpoint.MANIFEST).unlink(missing_ok=True)  # first, as the digest above
                    shutil.rmtree(folder)


def read(path: Path, map_location: str | torch.device = "cpu", whole: bool = True) -> dict[str, Any] | Sharded:
    """A verified checkpoint, file or sharded folder, as `CheckpointStore.latest` returns it."""
    if path.is_dir():
        opened = sharded_checkpoint.open_checkpoint(path)
        if not whole:
            return opened
        from optbench.training import sharded_state  # DTensor's import (~1 s): only for a sharded checkpoint

        return sharded_state.whole_payload(opened, map_location)
    return load(path, map_location)
