"""Claiming in the study storage: a study found done is never loaded by a claim again, a claim fingerprints each
optimizer's plan once however many studies it skips, a final study reopens when final.seeds grows, a claim that
fails leaves nothing behind, claimers racing on one storage (SQLite, and PostgreSQL where one is given) each get a
different configuration, every one exactly once, and a claim that waited for the lock on PostgreSQL dates its
trial's first heartbeat when it got the lock."""

from __future__ import annotations

import collections
import math
import os
import threading
import time
import uuid

import optuna
import pytest
from optuna.trial import TrialState

from optbench.bench import plan
from optbench.bench.claim_transaction import claim_transaction
from optbench.bench.storage import open_storage
from optbench.bench.suite import Execution, OptimizerEntry, Scenario, validate
from tests.bench.test_plan import loss, make_suite, run_to_end
from tests.required import missing

optuna.logging.set_verbosity(optuna.logging.WARNING)

POSTGRES = os.environ.get("OPTBENCH_TEST_POSTGRES")
LR_GRID = {"lr": {"log": [1e-4, 1e-1], "grid": [1e-3, 1e-2]}, "beta2": None, "weight_decay": None}


@pytest.fixture
def storage(tmp_path):
    return open_storage(f"sqlite:///{tmp_path / 'study.db'}", Execution(heartbeat_s=1, grace_s=2))


def lr_loss(hparams) -> float:
    return (math.log10(hparams["lr"]) + 2) ** 2 + 1.0


def two_optimizers(seeds=(0,)):
    return make_suite("grid", seeds=seeds, optimizers=[OptimizerEntry("adamw", search=LR_GRID),
                                                       OptimizerEntry("lion", search=LR_GRID)])


@pytest.fixture
def loads(monkeypatch):
    """The names of the studies opened on the storage, in order: every load of a study (optuna.Study,
    optuna.create_study) looks its name up, or tries to create it first."""
    opened: list[str] = []

    def recording(real):
        def method(self, *args, **kwargs):
            opened.append(kwargs.get("study_name") or args[-1])  # the study name is the last argument of both
            return real(self, *args, **kwargs)
        return method
    for name in ("get_study_id_from_name", "create_new_study"):
        monkeypatch.setattr(optuna.storages.RDBStorage, name, recording(getattr(optuna.storages.RDBStorage, name)))
    return opened


def test_a_study_found_done_is_never_loaded_by_a_claim_again(storage, loads):
    suite = two_optimizers()
    opened_by: list[list[str]] = []  # the studies each claim loaded
    claims = []
    while (claim := plan.claim_next(suite, storage)) is not plan.DONE:
        opened_by.append(loads[:])
        loads.clear()
        claims.append(claim)
        claim.study.tell(claim.trial, lr_loss(claim.hparams))
    opened_by.append(loads[:])  # the claim that found the suite done
    loads.clear()
    # Every tuning study before any final study: 2 grid points each, then 1 final seed each.
    assert [(c.entry.name, c.phase) for c in claims] == [("adamw", "tune")] * 2 + [("lion", "tune")] * 2 + [
        ("adamw", "final"), ("lion", "final")]
    # A study is loaded by the claims that take its trials and by the one that finds it done, and never after.
    for name in {name for opened in opened_by for name in opened}:
        claims_loading = [k for k, opened in enumerate(opened_by) if name in opened]
        taken = [k for k, c in enumerate(claims) if c.study.study_name == name]
        assert claims_loading == taken + [taken[-1] + 1], name
    for _ in range(3):
        assert plan.claim_next(suite, storage) is plan.DONE
    assert loads == []  # a finished suite is one query of the index


def test_a_claim_fingerprints_each_optimizer_once_however_many_studies_it_skips(storage, monkeypatch):
    """A claim compares the mark of every study it skips with that study's plan. Fingerprinting the plan afresh for
    each study made a claim late in s4s-stage1 (192 studies) cost twice an early one (benchmarks/bench_scale.py
    --suite); every scenario's studies of an optimizer share its plan, so once per optimizer and phase will do."""
    one_point = {"lr": {"log": [1e-4, 1e-1], "grid": [1e-2]}, "beta2": None, "weight_decay": None}
    suite = make_suite("grid", seeds=(0,), optimizers=[OptimizerEntry("adamw", search=one_point),
                                                       OptimizerEntry("lion", search=one_point)])
    suite.scenarios = [Scenario(f"s{i}") for i in range(5)]
    assert len(run_to_end(suite, storage, objective=lr_loss)) == 5 * 2 * 2  # per pair: its grid point, its seed
    computed = []
    real = plan.fingerprint

    def counting(suite, entry, phase):
        computed.append((entry.name, phase))
        return real(suite, entry, phase)
    monkeypatch.setattr(plan, "fingerprint", counting)
    assert plan.claim_next(suite, storage) is plan.DONE  # after comparing each of the 20 studies' marks
    assert sorted(computed) == [("adamw", "final"), ("adamw", "tune"), ("lion", "final"), ("lion", "tune")]


def test_a_final_study_reopens_when_the_final_seeds_grow(storage):
    run_to_end(two_optimizers(seeds=(0,)), storage, objective=lr_loss)
    claims = run_to_end(two_optimizers(seeds=(0, 1)), storage, objective=lr_loss)
    assert [(c.entry.name, c.phase, c.seed) for c in claims] == [("adamw", "final", 1), ("lion", "final", 1)]


def test_a_claim_that_fails_leaves_nothing_behind(storage):
    suite = two_optimizers()

    def stamp(claim):
        raise OSError("disk full (injected)")
    with pytest.raises(OSError):
        plan.claim_next(suite, storage, stamp)
    assert plan.load_study(suite, storage, "s", "adamw", "tune").get_trials() == []  # neither enqueued nor running
    claim = plan.claim_next(suite, storage, lambda claim: {"worker": "w1"})
    assert (claim.trial.number, claim.hparams, claim.trial.user_attrs["worker"]) == (0, {"lr": 1e-3}, "w1")


def claim_concurrently(suite, url: str, claimers: int = 4) -> list[tuple[str, str, int]]:
    """Claimers on their own storages (their own connections), each claiming and telling until DONE; every
    (study, configuration, seed) any of them claimed, with repeats."""
    claimed, errors = [], []
    open_storage(url, suite.execution)  # the tables, made once, as the bench makes them before any worker starts
    start = threading.Barrier(claimers, timeout=60)

    def claimer() -> None:
        try:
            storage = open_storage(url, suite.execution)
            start.wait()
            while (claim := plan.claim_next(suite, storage)) is not plan.DONE:
                if claim is plan.WAIT:
                    time.sleep(0.01)
                    continue
                claimed.append((claim.study.study_name, plan.key_of(claim.hparams), claim.seed))
                claim.study.tell(claim.trial, loss(claim.hparams))
        except Exception as err:  # a claimer's failure fails the test, not just its thread
            errors.append(err)
    threads = [threading.Thread(target=claimer) for _ in range(claimers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return claimed


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_claimers_racing_on_one_storage_claim_every_configuration_exactly_once(tmp_path, backend):
    if backend == "postgresql" and not POSTGRES:
        missing("set OPTBENCH_TEST_POSTGRES=postgresql://USER:PW@HOST/DB (.ci/run starts a local PostgreSQL and "
                "sets it) to race claimers on PostgreSQL")
    url = POSTGRES if backend == "postgresql" else f"sqlite:///{tmp_path / 'study.db'}"
    suite = make_suite("grid", seeds=(0, 1))
    suite.name = f"race-{uuid.uuid4().hex[:8]}"  # studies of earlier runs stay in a shared database
    validate(suite)
    claimed = claim_concurrently(suite, url)
    repeated = [key for key, n in collections.Counter(claimed).items() if n > 1]
    assert not repeated
    assert len([c for c in claimed if c[0].endswith("/tune")]) == 12  # the whole 4 x 3 grid
    assert sorted(seed for name, _, seed in claimed if name.endswith("/final")) == [0, 1]


def test_a_claim_that_waited_for_the_lock_records_its_trials_first_heartbeat_as_it_gets_it():
    """PostgreSQL's CURRENT_TIMESTAMP is its transaction's start, and Optuna dates heartbeats, and judges them stale,
    by it. A claim whose transaction began before a long wait for the claim lock dated its trial's first heartbeat
    to the start of the wait: past grace_s, the next claim failed the live trial as a dead worker's and requeued it,
    and the worker crashed telling it (32 workers of benchmarks/bench_scale.py). (SQLite dates each statement.)"""
    if not POSTGRES:
        missing("set OPTBENCH_TEST_POSTGRES=postgresql://USER:PW@HOST/DB (.ci/run starts a local PostgreSQL and "
                "sets it) to date heartbeats after a wait for the claim lock on PostgreSQL")
    suite = make_suite("grid", seeds=(0,), heartbeat_s=1, grace_s=2)
    suite.name = f"late-{uuid.uuid4().hex[:8]}"
    storage = open_storage(POSTGRES, suite.execution)
    holding, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        with claim_transaction(open_storage(POSTGRES, suite.execution), suite.name):
            holding.set()
            release.wait(timeout=30)
    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    holding.wait(timeout=30)
    threading.Timer(3.0, release.set).start()  # the first claim waits longer than grace_s
    first = plan.claim_next(suite, storage)
    holder.join()
    second = plan.claim_next(suite, storage)  # at once: the first trial's worker is alive
    assert first.study.get_trials()[first.trial.number].state == TrialState.RUNNING
    assert second.hparams != first.hparams
