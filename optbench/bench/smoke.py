"""`optbench bench SUITE --smoke`: minutes on a CPU that show every run of a suite would start and train.

1. Compose: every trial the suite could run (each scenario x each optimizer that runs in it x every point of the
   optimizer's grid; TPE's trials are stood in for by the grid) is composed as a worker composes it, and the
   recipe and tokenizer spec it names are checked. A bad preset, grid value or tokenizer spec is a UserError
   naming the suite, scenario, optimizer and override, before anything trains.
2. Train: each scenario x optimizer at its first grid point, shrunk by `smoke_config` (debug-size model, Tiny
   Shakespeare, a few CPU steps), through the ordinary Trainer into OUT/smoke/<scenario>/<optimizer>/.

Nothing of the real bench is touched: no study database, no OUT/suite.yaml, none of the suite's corpora.
"""

from __future__ import annotations

import math
import re
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optbench.bench import downstream, layout
from optbench.bench.plan import grid
from optbench.bench.smoke_config import STEPS, smoke_config, smoke_tokenizer, smoke_weights
from optbench.bench.suite import OptimizerEntry, Scenario, Suite, load_suite, run_overrides, search_space
from optbench.config.schema import Config
from optbench.errors import UserError


@dataclass
class Trial:
    """One scenario x optimizer: its first grid point's config and how many grid points were composed."""

    scenario: Scenario
    entry: OptimizerEntry
    cfg: Config
    points: int


@dataclass
class Outcome:
    scenario: str
    optimizer: str
    status: str
    loss: float | None
    seconds: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "completed" and self.loss is not None and math.isfinite(self.loss)


def run_smoke(suite_ref: str | Path, out: Path | None = None, echo: Callable[[str], None] = print) -> list[Outcome]:
    """Compose every trial of the suite, then train each scenario x optimizer briefly; `echo` gets one line
    per run as it ends and a summary. Returns the runs' outcomes; a compose failure raises a UserError, a run stopped
    by a signal KeyboardInterrupt."""
    suite = load_suite(suite_ref)
    out = Path(out) if out is not None else layout.smoke_out(suite.name)
    started = time.perf_counter()
    trials = compose_all(suite)
    downstream.check_tasks(suite.downstream)  # the final runs' tasks exist (a smoke run evaluates none)
    echo(f"smoke {suite.name}: composed {sum(t.points for t in trials)} trials of {len(trials)} scenario x "
         f"optimizer pairs in {time.perf_counter() - started:.1f} s; training each for {STEPS} steps on the CPU "
         f"into {out / 'smoke'}")
    notes, outcomes = set(), []
    for trial in trials:
        tokenizer, data_note = smoke_tokenizer(trial.cfg.data)
        optim, optim_note = smoke_weights(trial.cfg.optim, layout.smoke_weights_dir(out, trial.entry.name))
        for note in (data_note, optim_note):
            if note is not None and note not in notes:  # once per suite, before the first run it concerns
                notes.add(note)
                echo(f"{suite.name}: {note}")
        run = layout.smoke_run_dir(out, trial.scenario.name, trial.entry.name)
        outcomes.append(train_one(trial, smoke_config(trial.cfg, run, tokenizer, optim), run))
        echo(describe(outcomes[-1], run))
        if outcomes[-1].status == "interrupted":  # Ctrl-C or SIGTERM stopped that run: stop the smoke too
            raise KeyboardInterrupt
    echo(summary(suite, outcomes, time.perf_counter() - started))
    return outcomes


# ----------------------------------------------------------------------------- compose


def compose_all(suite: Suite) -> list[Trial]:
    """Every grid point of every scenario x optimizer, composed; the first point's config of each pair."""
    trials = []
    for scenario, entry in suite.pairs():
        points = grid(search_space(entry))
        configs = [compose_trial(suite, scenario, entry, point) for point in points]
        trials.append(Trial(scenario, entry, configs[0], len(points)))
    return trials


def compose_trial(suite: Suite, scenario: Scenario, entry: OptimizerEntry, point: dict[str, Any]) -> Config:
    """The trial's config as a worker composes it, its recipe and tokenizer spec checked too."""
    from optbench.config.compose import compose
    from optbench.data.recipes import get_recipe
    from optbench.data.tokenizers import check_spec

    overrides = run_overrides(suite, scenario, entry, point, suite.tuning.seed)
    try:
        cfg = compose(overrides)
        check_spec(cfg.data.tokenizer or get_recipe(cfg.data.name).tokenizer)
    except UserError as err:
        at = ", ".join(f"{k}={v}" for k, v in point.items())
        raise UserError(f"suite {suite.name}, scenario {scenario.name}, optimizer {entry.name} ({at}): "
                        f"{err}{named_overrides(overrides, str(err))}") from None
    return cfg


def named_overrides(overrides: list[str], message: str) -> str:
    """' [override K=V]' for the overrides whose key the message names (the last one of a key: it is the one that
    counts), or '' when it names none."""
    last = {line.split("=", 1)[0].lstrip("+~"): line for line in overrides}
    named = [line for key, line in last.items() if re.search(rf"(?<![\w.]){re.escape(key)}(?![\w.])", message)]
    return f" [override {', '.join(named)}]" if named else ""


# ----------------------------------------------------------------------------- train


def train_one(trial: Trial, cfg: Config, run: Path) -> Outcome:
    """One smoke run in a fresh `run` directory; a crash is its outcome (the other runs still go)."""
    from rich.console import Console

    from optbench.training.trainer import Trainer

    shutil.rmtree(run, ignore_errors=True)  # the smoke's own folder: every smoke run starts afresh
    started = time.perf_counter()
    try:
        trainer = Trainer(cfg, console=Console(stderr=True, quiet=True), observers=(EndAtLastEvaluation(cfg),))
        summary = trainer.train()
    except Exception as err:  # an optimizer that crashes on this model is what the smoke test is for
        run.mkdir(parents=True, exist_ok=True)
        (run / "traceback.txt").write_text(traceback.format_exc())
        first = (str(err).strip().splitlines() or [""])[0][:200]
        return Outcome(trial.scenario.name, trial.entry.name, "failed", None, time.perf_counter() - started,
                       f"{type(err).__name__}: {first}")
    return Outcome(trial.scenario.name, trial.entry.name, summary["status"], summary["final_val_loss"],
                   time.perf_counter() - started)


class EndAtLastEvaluation:
    """Ends a smoke run, completed, once its last step is evaluated, before the trainer's closing checkpoint: a
    smoke run is never resumed, and that checkpoint would be its largest cost (Shampoo's preconditioners for a
    50k-token vocabulary are gigabytes, encoded in memory before they are written)."""

    def __init__(self, cfg: Config):
        self.last_step = cfg.train.steps

    def log(self, record: dict[str, Any]) -> None:
        from optbench.training.trainer import StopTraining

        if "val_loss" in record and record["step"] == self.last_step:
            raise StopTraining("completed")

    def close(self) -> None:
        pass


def describe(outcome: Outcome, run: Path) -> str:
    loss = f"{outcome.loss:.4f}" if outcome.loss is not None else "n/a"
    line = (f"{'ok  ' if outcome.ok else 'FAIL'} {outcome.scenario}/{outcome.optimizer}: {outcome.status}, "
            f"final val loss {loss}, {outcome.seconds:.1f} s")
    return line + (f"; {outcome.error} (see {run / 'traceback.txt'})" if outcome.error else "")


def summary(suite: Suite, outcomes: list[Outcome], seconds: float) -> str:
    failed = [o for o in outcomes if not o.ok]
    head = (f"smoke {suite.name}: {len(outcomes) - len(failed)} of {len(outcomes)} runs completed with a finite "
            f"loss in {seconds:.0f} s")
    if not failed:
        return head
    return head + "; failed: " + ", ".join(f"{o.scenario}/{o.optimizer} ({o.error or o.status})" for o in failed)
