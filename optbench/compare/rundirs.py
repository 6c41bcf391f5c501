"""Reading the run directories given to `optbench compare` into the report's `Run`, with each run's config.

Every path is checked before anything is written: a folder without config.yaml and summary.json is not a
run directory, and a comparison needs two different runs. A run that diverged, was interrupted or is still
running is read like any other; its status travels with it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from optbench.compare.hparams import non_default_hparams
from optbench.errors import UserError
from optbench.report.load import Run
from optbench.training.rundir import read_metrics

REQUIRED = ("config.yaml", "summary.json")


@dataclass
class ComparedRun:
    """One run directory: what the report's measures read (`run`), its config, and a short unique label."""

    run: Run
    config: dict[str, Any]
    label: str


def read_runs(paths: Sequence[Path]) -> list[ComparedRun]:
    """The runs at `paths`, in the order given; a UserError names the first path that is not usable."""
    if len(paths) < 2:
        raise UserError(f"compare needs at least 2 run directories, got {len(paths)}: "
                        f"{' '.join(map(str, paths)) or 'none'}")
    resolved = [Path(p).resolve() for p in paths]
    for given, path in zip(paths, resolved):
        _check_run_dir(given, path)
    for j, path in enumerate(resolved):
        if path in resolved[:j]:
            raise UserError(f"{paths[j]} is the same run directory as {paths[resolved.index(path)]}; "
                            "compare needs different runs")
    labels = short_labels(resolved)
    return [_read(given, path, label) for given, path, label in zip(paths, resolved, labels)]


def short_labels(paths: Sequence[Path]) -> list[str]:
    """The fewest trailing path parts that tell the runs apart (runs are often all called `run`)."""
    for depth in range(1, max(len(p.parts) for p in paths) + 1):
        labels = ["/".join(p.parts[-depth:]) if depth < len(p.parts) else str(p) for p in paths]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


def _check_run_dir(given: Path, path: Path) -> None:
    if not path.is_dir():
        raise UserError(f"{given} is not a run directory: no such folder; give folders written by `optbench train`")
    absent = [name for name in REQUIRED if not (path / name).is_file()]
    if absent:
        raise UserError(f"{given} is not a run directory: no {' or '.join(absent)}; "
                        "give folders written by `optbench train`")


def _read(given: Path, path: Path, label: str) -> ComparedRun:
    config = _load(given, path / "config.yaml", yaml.safe_load)
    summary = _load(given, path / "summary.json", json.loads)
    optim = config.get("optim") or {}
    lines = read_metrics(path)
    env = path / "env.json"
    run = Run(path=path, scenario="", optimizer=str(optim.get("name", "?")), hparams=non_default_hparams(optim),
              seed=int((config.get("train") or {}).get("seed", -1)), phases=(), summary=summary,
              evals=[line for line in lines if "val_loss" in line],
              train=[line for line in lines if "val_loss" not in line and line.get("kind", "train") == "train"],
              env=_load(given, env, json.loads) if env.is_file() else {})
    return ComparedRun(run=run, config=config, label=label)


def _load(given: Path, file: Path, parse) -> dict[str, Any]:
    """A run file parsed into a mapping; anything else (a torn or hand-edited file) is a UserError naming it."""
    try:
        value = parse(file.read_text())
    except (OSError, ValueError, yaml.YAMLError) as err:
        reason = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise UserError(f"{given}/{file.name} is not readable: {reason}") from None
    if not isinstance(value, dict):
        raise UserError(f"{given}/{file.name} is not a run's {file.name}: it holds no mapping")
    return value
