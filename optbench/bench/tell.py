"""Telling the study a trial's result, only while the worker still holds the trial's claim.

Every tell runs in one transaction that holds the trial from its start (claim_transaction.trial_transaction: SQLite's
write lock, PostgreSQL's lock on the trial's row) and first reads the trial's state: a claim failing stale trials and
a tell cannot interleave, so a trial is either told by its worker or failed as stale and rerun by its copy, never
both (a dropped result, not a duplicate). Optuna's own tell reads the state and writes the result in separate
statements, and on SQLite a claim could fail the trial in between and be overwritten. A trial found no longer
RUNNING is not told: `Lost` says when it was failed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

from optbench.bench.claim_transaction import trial_transaction
from optbench.bench.heartbeat import Lost, lost_claim
from optbench.bench.plan import Claim
from optbench.bench.storage import requeue

Record = Callable[[optuna.Study, optuna.Trial], None]
"""What a tell writes, given the claim's study and trial as seen by the tell's transaction."""


def held(storage: optuna.storages.RDBStorage, claim: Claim, record: Record) -> Lost | None:
    """Run `record` in one transaction holding the trial on `storage` (the claim's) if the trial is still this
    worker's; else, without it, Lost."""
    with trial_transaction(storage, claim.trial._trial_id) as view:
        lost = lost_claim(view, claim.trial._trial_id)
        if lost is not None:
            return lost
        study = optuna.Study(study_name=claim.study.study_name, storage=view, sampler=claim.study.sampler,
                             pruner=claim.study.pruner)
        record(study, optuna.Trial(study, claim.trial._trial_id))
    return None


def tell(storage: optuna.storages.RDBStorage, claim: Claim, summary: dict[str, Any],
         attrs: dict[str, Any] | None = None) -> Lost | None:
    """The run's result: its loss (inf when diverged), pruned, or, for a run stopped by a signal, failed and requeued
    at once with the same configuration. `attrs` are set on the trial with it."""
    status = summary["status"]

    def record(study: optuna.Study, trial: optuna.Trial) -> None:
        for key, value in {**(attrs or {}), "status": status}.items():
            trial.set_user_attr(key, value)
        if status == "pruned":
            study.tell(trial, state=TrialState.PRUNED)
        elif status == "interrupted":  # stopped by a signal, not by its result
            study.tell(trial, state=TrialState.FAIL)
            requeue()(study, study._storage.get_trial(trial._trial_id))
        else:
            loss = summary["final_val_loss"]
            diverged = status == "diverged" or loss is None or not math.isfinite(loss)
            study.tell(trial, math.inf if diverged else loss)

    return held(storage, claim, record)


def tell_crash(storage: optuna.storages.RDBStorage, claim: Claim, error: str,
               write_record: Callable[[], None]) -> Lost | None:
    """A crash is the trial's result: `error` recorded, `write_record()` (the run directory's failed summary) run
    while the claim is known to be held, and the trial failed, never requeued."""

    def record(study: optuna.Study, trial: optuna.Trial) -> None:
        trial.set_user_attr("error", error)
        write_record()
        study.tell(trial, state=TrialState.FAIL)

    return held(storage, claim, record)
