"""The bench's live view: one progress line for the whole suite, read from the study storage.

    tiny ━━━━━━━━━━━━━━━━━━━━╸━━━━━━━━━━━━━━  41/64 trials · 2 running · 21 queued · 3 failed · ETA 0:01:12

Counts come from the storage the workers write (the same numbers as `optuna-dashboard`), so the view is right
however many machines work on the suite. The total is planned from the suite (each tuning method's own points
within its budget, per repeated study, plus the final seeds) and grows when tuning walks past a grid edge; the
ETA is the queued and running trials times the mean finished trial's duration, over the workers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import sqlalchemy as sa
from optuna.storages import RDBStorage
from optuna.storages._rdb.models import StudyModel, TrialModel, TrialUserAttributeModel
from optuna.trial import TrialState
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from optbench.bench.plan import grid, study_name, tuning_phase
from optbench.bench.suite import Suite, search_space
from optbench.optim.search_space import grid_points


@dataclass(frozen=True)
class Counts:
    """Trials of the suite by what became of them; `seconds` is the summed duration of finished ones."""

    finished: int = 0
    failed: int = 0
    running: int = 0
    seconds: float = 0.0

    @property
    def done(self) -> int:
        return self.finished + self.failed


def planned_trials(suite: Suite) -> int:
    """The trials the suite will run before any walk past a grid edge: per scenario x optimizer, each tuning
    study's own points (grid: every grid point; TPE and coordinate descent: their trial budget; coordinate
    descent without one: one line per hyperparameter, its lower bound), then the final seeds."""
    total = 0
    for _, entry in suite.pairs():
        space = search_space(entry)
        budget = entry.trials or suite.tuning.trials
        if suite.tuning.method == "grid":
            own = len(grid(space))
        elif budget is not None:
            own = budget
        else:
            own = 1 + sum(len(grid_points(dim)) - 1 for dim in space.values())
        if budget is not None:
            own = min(own, budget)
        total += own * suite.tuning.studies + len(suite.final.seeds)
    return total


def count_trials(suite: Suite, storage: RDBStorage) -> Counts:
    """The suite's trials in `storage` by state. A failed trial counts as done only when it crashed (it carries
    an error); one a stopped worker failed is requeued and is counted again as its new attempt.

    One query, whatever the number of studies: the view refreshes every few seconds beside the workers' claims,
    and loading each study's trials (two round trips a study, every trial's attributes) would make it the
    storage's heaviest client on a large suite."""
    planned = {study_name(suite, scenario.name, entry.name, phase) for scenario, entry in suite.pairs()
               for phase in [tuning_phase(k) for k in range(suite.tuning.studies)] + ["final"]}
    studies, trials, attrs = StudyModel.__table__, TrialModel.__table__, TrialUserAttributeModel.__table__
    crashed = sa.exists().where(attrs.c.trial_id == trials.c.trial_id, attrs.c.key == "error")
    query = (sa.select(studies.c.study_name, trials.c.state, crashed, trials.c.datetime_start,
                       trials.c.datetime_complete)
             .join_from(trials, studies, trials.c.study_id == studies.c.study_id)
             .where(studies.c.study_name.startswith(f"{suite.name}/", autoescape=True),
                    trials.c.state.in_([TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING])))
    finished = failed = running = 0
    seconds = 0.0
    with storage.engine.connect() as connection:
        rows = connection.execute(query).all()
    for name, state, error, start, complete in rows:
        if name not in planned:  # a study of a scenario or optimizer the suite no longer lists
            continue
        if state == TrialState.RUNNING:
            running += 1
            continue
        if state == TrialState.FAIL and not error:
            continue
        finished += state != TrialState.FAIL
        failed += state == TrialState.FAIL
        if start is not None and complete is not None:
            seconds += (complete - start).total_seconds()
    return Counts(finished=finished, failed=failed, running=running, seconds=seconds)


def eta_s(counts: Counts, total: int, workers: int) -> float:
    """Seconds until the suite is done at the mean pace so far; NaN before any trial has finished."""
    if counts.done == 0:
        return math.nan
    remaining = max(total - counts.done, 0)
    return remaining * counts.seconds / counts.done / max(workers, 1)


def status_line(suite: Suite, counts: Counts, total: int, workers: int) -> str:
    """The view as one line of text (for logs, where no live bar is drawn)."""
    total = max(total, counts.done + counts.running)
    queued = total - counts.done - counts.running
    eta = eta_s(counts, total, workers)
    parts = [f"{suite.name}: {counts.done}/{total} trials", f"{counts.running} running", f"{queued} queued"]
    if counts.failed:
        parts.append(f"{counts.failed} failed")
    parts.append("ETA " + ("—" if math.isnan(eta) else time.strftime("%H:%M:%S", time.gmtime(eta))
                           if eta < 86_400 else f"{eta / 86_400:.1f} days"))
    return " · ".join(parts)


class LiveView:
    """Redraws the suite's progress bar (on a terminal) or prints `status_line` every LOG_EVERY_S (in a log) while
    the bench runs; `refresh()` is cheap to call often: it reads the storage at most every REFRESH_S."""

    REFRESH_S = 2.0
    LOG_EVERY_S = 60.0

    def __init__(self, suite: Suite, storage: RDBStorage, workers: int, console: Console):
        self.suite, self.storage, self.workers, self.console = suite, storage, workers, console
        self.planned = planned_trials(suite)
        self.read_at = self.logged_at = -math.inf
        self.bar: Progress | None = None

    def __enter__(self) -> LiveView:
        if self.console.is_terminal:
            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[line]}"),
                                console=self.console, transient=False)
            self.task = self.bar.add_task(self.suite.name, total=self.planned, line="")
            self.bar.start()
        self.refresh()
        return self

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.read_at < self.REFRESH_S:
            return
        self.read_at = now
        counts = count_trials(self.suite, self.storage)
        line = status_line(self.suite, counts, self.planned, self.workers)
        if self.bar is not None:
            total = max(self.planned, counts.done + counts.running)
            self.bar.update(self.task, total=total, completed=counts.done, line=line.split(": ", 1)[1])
        elif force or now - self.logged_at >= self.LOG_EVERY_S:
            self.logged_at = now
            self.console.print(line, highlight=False)

    def __exit__(self, *exc) -> None:
        self.refresh(force=True)
        if self.bar is not None:
            self.bar.stop()
