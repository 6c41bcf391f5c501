"""The run directory contract that every other tool reads.

    config.yaml     the full resolved config
    env.json        how to reproduce: command line, git commit and dirty flag, library versions, host
    metrics.jsonl   one JSON object per line; every line has step, tokens, time_s
    summary.json    status (completed | diverged | failed | interrupted | pruned | running) and final figures
    checkpoints/    model + optimizer + progress, written atomically
"""

from __future__ import annotations

import copy
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

STATUSES = ("running", "completed", "diverged", "failed", "interrupted", "pruned")
LIBRARIES = ("optbench", "torch", "numpy", "hydra-core", "omegaconf", "datasets", "tiktoken", "tokenizers",
             "schedulefree", "prodigyopt", "optuna")


def default_dir(model: str, optim: str, root: str = "runs") -> Path:
    """runs/<date>-<time>-<model>-<optim>: sortable, readable, unique to the second."""
    return Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{model}-{optim}"


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All records of a run's metrics.jsonl; a line torn by a kill in mid-write (only the last can be) is left out."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [record for line in path.read_text().splitlines() if (record := _record(line)) is not None]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment() -> dict[str, Any]:
    """What produced a run: enough to reproduce it or to explain a difference between two runs."""
    return copy.deepcopy(_process_environment())


@functools.cache
def _process_environment() -> dict[str, Any]:
    """Looked up once per process (two git commands and a dozen package lookups: tens of milliseconds, which a bench
    worker would otherwise spend on every trial). The code a process runs is what it imported: a commit or an edit
    made while it runs does not change it."""
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "argv": sys.argv,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": platform.node(),
        "versions": versions,
    }


def truncate_metrics(run_dir: Path, step: int) -> None:
    """On resume, drop lines logged after the checkpoint's step so no step appears twice."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if (s := _step(line)) is not None and s <= step]
    write_atomic(path, "".join(line + "\n" for line in kept).encode())


def _step(line: str) -> int | None:
    """A metrics line's step; None for a torn line."""
    record = _record(line)
    return record.get("step") if record is not None else None


def _record(line: str) -> dict | None:
    """A metrics line as a dict; None for a line torn by a kill in mid-write."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
