"""Sharded checkpoints: one torch.distributed.checkpoint (DCP) folder per saved step, written by every rank.

    checkpoints/step-00000100/
        __0_0.distcp, __1_0.distcp, ...   each rank's tensors (its shards; a replicated tensor once), DCP's files
        .metadata                         DCP's index: every tensor's shape, dtype and where its pieces lie
        run.pt                            rank 0's `torch.save` of the rest: step, every rank's RNG state, ...
        manifest.json                     format, version, step, world size and the SHA-256 of every file above

Every rank writes into `.step-00000100.partial/`; once all have finished, each hashes the files it wrote, rank 0
writes run.pt and, last, manifest.json, and renames the folder into place. A folder without a manifest that
verifies (a save killed half-way, a damaged file) is never read. What the tensors are, and how a run of another
world size reads them, is sharded_state.py's part; this module knows folders, digests and DCP.

DCP stores values other than tensors pickled and unpickles them with any class allowed; here they are read as
`torch.load(weights_only=True)` reads a single-file checkpoint: tensors and plain Python values only.

DCP is imported inside the functions that use it: it imports DTensor and the torch compiler (~1 s), which every
process that never touches a sharded checkpoint (one-process runs, DDP, bench workers, the CLI) would pay at start.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from optbench.training.integrity import CorruptCheckpoint, file_sha256
from optbench.training.rundir import write_atomic

FORMAT = "optbench-dcp"
VERSION = 1
MANIFEST = "manifest.json"
RUN_STATE = "run.pt"
DCP_INDEX = ".metadata"
KeyPath = tuple[str | int, ...]
"""Where a value sits in the nested dict that was saved: keys, and list indices as ints (DCP's planner data)."""


@dataclass(frozen=True)
class Sharded:
    """A sharded checkpoint that verified: its folder, manifest, and the run state rank 0 wrote beside the shards."""

    path: Path
    manifest: dict[str, Any]
    run_state: dict[str, Any]

    @property
    def world_size(self) -> int:
        return self.manifest["world_size"]


def is_sharded(path: Path) -> bool:
    """Whether `path` is meant as a sharded checkpoint (whether or not it verifies)."""
    return path.is_dir() and ((path / MANIFEST).exists() or (path / DCP_INDEX).exists())


def save(path: Path, step: int, tensors: dict[str, Any], run_state: dict[str, Any]) -> Path:
    """Write the sharded checkpoint `path`. Every rank calls it with its own `tensors` (nested dicts of DTensors,
    which DCP writes shard by shard, of plain tensors, written once, and of plain values) and `run_state`, of which
    rank 0's is written."""
    import torch.distributed.checkpoint as dcp

    rank, size = this_rank(), _world_size()
    partial = path.with_name(f".{path.name}.partial")
    if rank == 0:
        shutil.rmtree(partial, ignore_errors=True)  # a save of this step that was killed before
    _barrier()
    with _alone_is_meant():
        dcp.save(tensors, storage_writer=dcp.FileSystemWriter(partial), no_dist=not dist.is_initialized())
    _barrier()  # every rank's files are complete
    # DCP names each rank's files __RANK_*; each rank hashes its own (the bytes are still in its page cache)
    digests = _gathered({p.name: file_sha256(p) for p in partial.glob(f"__{rank}_*")})
    if rank == 0:
        _save_run_state(partial / RUN_STATE, run_state)
        files = {name: digest for part in digests for name, digest in part.items()}
        files.update({p.name: file_sha256(p) for p in sorted(partial.iterdir()) if p.name not in files})
        manifest = {"format": FORMAT, "version": VERSION, "step": step, "world_size": size, "files": files}
        write_atomic(partial / MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
        _move_into_place(partial, path)
    _barrier()
    return path


def _save_run_state(path: Path, run_state: dict[str, Any]) -> None:
    with open(path, "wb") as f:
        torch.save(run_state, f)
        f.flush()
        os.fsync(f.fileno())


def _move_into_place(partial: Path, path: Path) -> None:
    """Rename the finished folder to `path`; one already there (the same step saved again) is set aside first,
    so a crash in between leaves the older checkpoints usable. Leftovers of killed saves are removed."""
    replaced = path.with_name(f".{path.name}.replaced")
    shutil.rmtree(replaced, ignore_errors=True)
    if path.exists():
        os.replace(path, replaced)
    os.replace(partial, path)
    _fsync_dir(path.parent)
    shutil.rmtree(replaced, ignore_errors=True)
    for stale in path.parent.glob(".step-*.partial"):
        shutil.rmtree(stale, ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def verify(path: Path) -> dict[str, Any]:
    """The manifest of `path` once every file it lists matches its digest; CorruptCheckpoint otherwise."""
    manifest_file = path / MANIFEST
    if not manifest_file.is_file():
        raise CorruptCheckpoint(f"no {MANIFEST} in it (a save that never finished, or not an optbench checkpoint)")
    try:
        manifest = json.loads(manifest_file.read_text())
    except (ValueError, UnicodeDecodeError):
        raise CorruptCheckpoint(f"{MANIFEST} is not JSON (truncated or altered)") from None
    if not isinstance(manifest, dict) or (manifest.get("format"), manifest.get("version")) != (FORMAT, VERSION):
        found = (manifest.get("format"), manifest.get("version")) if isinstance(manifest, dict) else manifest
        raise CorruptCheckpoint(f"{MANIFEST} names format {found}; this optbench reads ({FORMAT!r}, {VERSION})")
    files = manifest.get("files")
    if not isinstance(files, dict) or not {DCP_INDEX, RUN_STATE} <= files.keys():
        raise CorruptCheckpoint(f"{MANIFEST} does not list {DCP_INDEX} and {RUN_STATE}")
    for name, digest in sorted(files.items()):
        file = path / name
        if Path(name).name != name or not file.is_file():
            raise CorruptCheckpoint(f"{name}, listed in {MANIFEST}, is missing")
        if file_sha256(file) != digest:
            raise CorruptCheckpoint(f"checksum mismatch in {name} (truncated or altered)")
    return manifest


def open_checkpoint(path: Path) -> Sharded:
    """The verified checkpoint at `path`, its run state read (the tensors stay on disk until `read`)."""
    manifest = verify(path)
    try:
        run_state = torch.load(path / RUN_STATE, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CorruptCheckpoint(f"{RUN_STATE} holds objects other than tensors and plain values (refused "
                                "unread)") from None
    return Sharded(path, manifest, run_state)


def index(path: Path) -> dict[str, tuple[KeyPath, Any]]:
    """DCP key -> (where it sits in the saved nested dict, its storage metadata: shape and dtype, or bytes)."""
    from torch.distributed.checkpoint import FileSystemReader

    metadata = FileSystemReader(path).read_metadata()
    paths = metadata.planner_data or {}
    return {key: (tuple(paths.get(key, (key,))), entry) for key, entry in metadata.state_dict_metadata.items()}


def is_tensor(entry: Any) -> bool:
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    return not isinstance(entry, BytesStorageMetadata)


def _plain_values_planner():
    """DCP's planner, over a flat dict of DCP keys, reading non-tensor values as `weights_only=True` does."""
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    class PlainValuesPlanner(DefaultLoadPlanner):
        def __init__(self) -> None:
            super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)

        def load_bytes(self, read_item, value) -> None:
            self.state_dict[read_item.dest_index.fqn] = torch.load(value, weights_only=True)

    return PlainValuesPlanner()


def read(path: Path, destinations: dict[str, Any], collective: bool) -> None:
    """Fill `destinations` (DCP key -> a tensor to read into, or None for a plain value) from `path`. `collective`:
    every rank of the process group reads at once, each its own keys and shards (a DTensor reads its rows only);
    otherwise this process reads alone."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        with _alone_is_meant():
            dcp.load(destinations, storage_reader=dcp.FileSystemReader(path), planner=_plain_values_planner(),
                     no_dist=not collective)
    except CheckpointException as err:  # DCP gathers each rank's failure into one
        if any(isinstance(exc, pickle.UnpicklingError) for exc, _ in err.failures.values()):
            raise CorruptCheckpoint("holds objects other than tensors and plain values (refused unread)") from None
        raise


@contextlib.contextmanager
def _alone_is_meant() -> Iterator[None]:
    """DCP warns at every call made without a process group; here one process reading or writing alone is meant."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def read_whole(path: Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Everything in the shards, whole and on `device`, as the nested dict the ranks saved (one process reads all)."""
    entries = index(path)
    destinations = {key: torch.empty(entry.size, dtype=entry.properties.dtype, device=device)
                    if is_tensor(entry) else None for key, (_, entry) in entries.items()}
    read(path, destinations, collective=False)
    return nest({entries[key][0]: value for key, value in destinations.items()})


def nest(values: dict[KeyPath, Any]) -> dict[str, Any]:
    """The nested dict of {where: value}; ints in a path were list indices."""
    root: dict = {}
    for where, value in values.items():
        node = root
        for key in where[:-1]:
            node = node.setdefault(key, {})
        node[where[-1]] = value
    return _lists_restored(root)


def _lists_restored(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    items = {key: _lists_restored(value) for key, value in node.items()}
    if items and all(isinstance(key, int) for key in items):
        return [items[i] for i in range(len(items))]
    return items


def this_rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _gathered(obj: Any) -> list[Any]:
    """`obj` of every rank, on rank 0 (elsewhere: [])."""
    if not dist.is_initialized():
        return [obj]
    received = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, received, dst=0)
    return received or []
