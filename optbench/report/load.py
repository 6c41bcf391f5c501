"""Reading a bench output folder (OUT/suite.yaml and OUT/runs/...) into plain Python objects.

This is the only module of the report that touches the file system for input; everything downstream
works on `Bench` and `Run`. A run whose worker crashed can lack summary.json or metrics.jsonl, or end in
a torn line: such runs are kept (so they are counted) with whatever could be read.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optbench.bench import layout
from optbench.bench.suite import Suite, load_suite
from optbench.errors import UserError
from optbench.training.rundir import read_metrics

MISSING = "missing"
"""The status of a run without a readable summary.json (its worker died before writing one)."""


@dataclass
class Run:
    """One run directory with its trial description, summary and metrics."""

    path: Path
    scenario: str
    optimizer: str
    hparams: dict[str, Any]
    seed: int
    phases: tuple[str, ...]
    summary: dict[str, Any] = field(default_factory=dict)
    evals: list[dict[str, Any]] = field(default_factory=list)
    train: list[dict[str, Any]] = field(default_factory=list)
    dynamics: list[dict[str, Any]] = field(default_factory=list)
    """The run's `kind: dynamics` records (diag.every): per-parameter update statistics and attention telemetry."""
    env: dict[str, Any] = field(default_factory=dict)
    trial: int | None = None
    """The tuning trial's number where trial.json records one (`trial` or `number`); None otherwise."""
    extension: str | None = None
    """The hyperparameter this tuning point extended beyond its grid (bench/extend.py); None otherwise."""
    study: int = 0
    """Which repeated tuning study (tuning.studies) a tuning run belongs to."""

    @property
    def status(self) -> str:
        return self.summary.get("status") or MISSING

    @property
    def final_loss(self) -> float:
        """The final val loss of a completed run; NaN otherwise (a diverged run's last eval is not a result)."""
        loss = self.summary.get("final_val_loss")
        if self.status != "completed" or loss is None or not math.isfinite(loss):
            return math.nan
        return float(loss)

    @property
    def tokens(self) -> float:
        tokens = self.summary.get("tokens")
        return math.nan if tokens is None else float(tokens)

    def value(self, key: str) -> float:
        """A numeric summary field, NaN when absent (e.g. peak memory on CPU)."""
        value = self.summary.get(key)
        return math.nan if value is None else float(value)


@dataclass
class Bench:
    """A suite and every run found under OUT/runs."""

    out: Path
    suite: Suite
    runs: list[Run]
    skipped: list[str]
    """Run directories that could not be used, each with why (no trial.json, unknown scenario, ...)."""

    def select(self, scenario: str, optimizer: str | None = None, phase: str | None = None,
               study: int | None = 0) -> list[Run]:
        """Runs of a scenario (an optimizer's, a phase's); tuning runs of one tuning study (None: of all)."""
        return [r for r in self.runs if r.scenario == scenario
                and (optimizer is None or r.optimizer == optimizer)
                and (phase is None or phase in r.phases)
                and (phase != "tune" or study is None or r.study == study)]


def load_bench(out: Path) -> Bench:
    """Read OUT; a UserError names what is missing when there is no suite or no run at all."""
    out = Path(out)
    suite_path = layout.suite_file(out)
    if not suite_path.is_file():
        raise UserError(f"{out} is not a bench output folder: {suite_path} is missing")
    suite = load_suite(suite_path)
    candidates = sorted(p.parent for p in layout.runs_dir(out).glob("*/*/*/trial.json"))
    if not candidates:
        raise UserError(f"no runs in {layout.runs_dir(out)}: run `optbench bench` for suite {suite.name} first")
    runs, skipped = [], []
    scenarios = {s.name for s in suite.scenarios}
    optimizers = {o.name for o in suite.optimizers}
    for path in candidates:
        run = _read_run(path)
        if run is None:
            skipped.append(f"{path}: unreadable trial.json")
        elif run.scenario not in scenarios or run.optimizer not in optimizers:
            skipped.append(f"{path}: {run.scenario}/{run.optimizer} is not in suite {suite.name}")
        else:
            runs.append(run)
    if not runs:
        raise UserError(f"no run in {layout.runs_dir(out)} belongs to suite {suite.name}: {skipped[0]}")
    return Bench(out=out, suite=suite, runs=runs, skipped=skipped)


def _read_run(path: Path) -> Run | None:
    trial = _read_json(layout.trial_file(path))
    if not isinstance(trial, dict) or "scenario" not in trial or "optimizer" not in trial:
        return None
    try:
        lines = read_metrics(path)
    except OSError:
        lines = []
    return Run(path=path, scenario=str(trial["scenario"]), optimizer=str(trial["optimizer"]),
               hparams=dict(trial.get("hparams") or {}), seed=int(trial.get("seed", -1)),
               phases=tuple(trial.get("phases") or ()),
               summary=_read_json(path / "summary.json") or {},
               evals=[line for line in lines if "val_loss" in line],
               train=[line for line in lines if "val_loss" not in line and line.get("kind", "train") == "train"],
               dynamics=[line for line in lines if line.get("kind") == "dynamics"],
               env=_read_json(path / "env.json") or {}, trial=_trial_number(trial), extension=trial.get("extension"),
               study=int(trial.get("study", 0)))


def _trial_number(trial: dict[str, Any]) -> int | None:
    for key in ("trial", "number"):
        value = trial.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
