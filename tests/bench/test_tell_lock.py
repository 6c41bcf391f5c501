"""A worker's tell holds its trial from the transaction's first statement (claim_transaction.trial_transaction):
a claim failing the trial as stale meanwhile waits for the tell and then finds the trial finished, so a result is
never overwritten by a requeue, nor a requeue by a result. On PostgreSQL the tell takes the trial's row lock, not the
suite's claim lock: tells do not queue behind claims."""

from __future__ import annotations

import os
import threading
import time
import uuid
import warnings
from datetime import datetime
from types import SimpleNamespace

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from optbench.bench.claim_transaction import claim_transaction
from optbench.bench.storage import open_storage
from optbench.bench.suite import Execution
from optbench.bench import tell as tell_module
from optbench.bench.tell import tell
from tests.required import missing

optuna.logging.set_verbosity(optuna.logging.WARNING)

POSTGRES = os.environ.get("OPTBENCH_TEST_POSTGRES")
HOLD_S = 0.5
"""How long a transaction is held open while the other side tries its part: long enough for it to have run, had it
not waited."""


def storage_url(backend: str, tmp_path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    if not POSTGRES:
        missing("set OPTBENCH_TEST_POSTGRES=postgresql://USER:PW@HOST/DB (.ci/run starts a local PostgreSQL and "
                "sets it) to test a tell's row lock on PostgreSQL")
    return POSTGRES


def running_claim(url: str) -> tuple[optuna.storages.RDBStorage, SimpleNamespace]:
    """A fresh study (of a suite of its own) with one RUNNING trial, as a claim leaves it."""
    storage = open_storage(url, Execution(heartbeat_s=1, grace_s=60))
    suite = f"tell-lock-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(study_name=f"{suite}/s/adamw/tune", storage=storage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Optuna advises heartbeats with optimize(); ask/tell here
        trial = study.ask()
    storage.record_heartbeat(trial._trial_id)
    return storage, SimpleNamespace(trial=trial, study=study, suite=suite)


def fail_as_stale(storage, claim) -> None:
    """Another worker's claim: its heartbeat dated long ago, then Optuna's stale check, in one claim transaction."""
    with claim_transaction(storage, claim.suite) as (view, connection):
        connection.execute(sa.text("UPDATE trial_heartbeats SET heartbeat = :long_ago WHERE trial_id = :trial"),
                           {"long_ago": datetime(2000, 1, 1), "trial": claim.trial._trial_id})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(optuna.load_study(study_name=claim.study.study_name, storage=view))


def slow_tell(storage, claim, told: threading.Event) -> None:
    """The tell, its transaction held open HOLD_S between its check of the trial's state and its first write."""
    real = tell_module.lost_claim

    def checked_then_held(*args):
        lost = real(*args)
        told.set()
        time.sleep(HOLD_S)
        return lost
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tell_module, "lost_claim", checked_then_held)
        assert tell(storage, claim, {"status": "completed", "final_val_loss": 3.25}) is None


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_claim_failing_a_trial_being_told_waits_and_finds_it_finished(tmp_path, backend):
    storage, claim = running_claim(storage_url(backend, tmp_path))
    told = threading.Event()
    teller = threading.Thread(target=slow_tell, args=(storage, claim, told))
    teller.start()
    assert told.wait(30)
    fail_as_stale(storage, claim)  # while the tell's transaction is open, past its check of the trial's state
    teller.join(30)
    trials = claim.study.get_trials()
    assert [(t.state, t.values) for t in trials] == [(TrialState.COMPLETE, [3.25])]  # not failed, nor requeued


def test_a_tell_on_postgresql_does_not_wait_for_the_suites_claim_lock(tmp_path):
    storage, claim = running_claim(storage_url("postgresql", tmp_path))
    done = threading.Event()
    with claim_transaction(storage, claim.suite):  # another worker's claim, in progress
        teller = threading.Thread(target=lambda: (tell(storage, claim, {"status": "completed",
                                                                        "final_val_loss": 3.0}), done.set()))
        teller.start()
        finished = done.wait(10)
    teller.join(30)
    assert finished, "the tell waited for the claim lock"
    assert claim.study.get_trials()[0].state == TrialState.COMPLETE
