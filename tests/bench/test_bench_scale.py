"""The scale benchmark's machinery (benchmarks/scale) at a tiny scale: worker processes claiming through the real
claim, heartbeat, requeue and tell code, one of them killed, run every planned trial exactly once; the audit names
each kind of duplicated or lost trial; the claim probe counts a claim's statements, and only its own thread's, and
finds a claim's statements the same whatever the number of studies already done."""

from __future__ import annotations

import dataclasses
import threading

import optuna
import pytest
from optuna.trial import TrialState

from benchmarks.scale import pool, suites
from benchmarks.scale.audit import audit
from benchmarks.scale.fake_trainer import TrialTimes, synthetic_loss
from benchmarks.scale.probe import StatementCounter
from optbench.bench import plan
from optbench.bench.storage import open_storage
from optbench.bench.suite import run_key
from optbench.bench.tell import tell
from optbench.errors import UserError

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'study.db'}"


def unpruned(trials: int, studies: int):
    """The synthetic suite with neither pruning nor grid extension (every pair claims the same way), and a grace of
    4 s: a killed worker's trial is requeued soon, and a live one's heartbeat (dated to the second by SQLite, beating
    every second) keeps 2 s of margin on a loaded machine."""
    suite = suites.synthetic(trials, studies, grace_s=4)
    return dataclasses.replace(suite, tuning=dataclasses.replace(suite.tuning, prune=False, extend=0))


@pytest.mark.slow
@pytest.mark.xdist_group("processes")
def test_a_killed_workers_trial_is_requeued_and_every_planned_trial_runs_exactly_once(tmp_path, url):
    suite = unpruned(trials=40, studies=4)  # 2 pairs x (17 grid points + 3 final seeds)
    open_storage(url, suite.execution)
    supervised = pool.run(pool.Job(suite, url, tmp_path, TrialTimes(mean_s=0.02)), workers=2, kill_every_s=0.1,
                          max_kills=1, timeout_s=120)  # a trial lost for good would keep the workers waiting
    claims = pool.read_claims(tmp_path)
    found = audit(suite, url, claims)
    assert (found.duplicates, found.lost) == ([], [])
    assert (supervised.kills, supervised.crashes) == (1, 0)
    assert found.requeued == 1  # the killed worker held a trial: failed by its heartbeat, rerun by a copy
    assert found.ended == 40
    handed = [c for c in claims if c["outcome"] == "claim"]
    assert len({(c["study"], c["key"]) for c in handed}) == 40  # the copy ran under the dead trial's run key
    assert all(c["statements"] > 0 and c["seconds"] > c["lock_wait"] + c["lock_held"] for c in handed)
    assert all(c["lock_held"] > 0 for c in handed)


def finish(suite, url) -> optuna.storages.RDBStorage:
    """Claim and tell (synthetic losses) until the suite is done."""
    storage = open_storage(url, suite.execution)
    while (claim := plan.claim_next(suite, storage)) is not plan.DONE:
        loss = synthetic_loss(suite, claim)
        summary = {"status": "completed" if loss is not None else "diverged", "final_val_loss": loss}
        tell(storage, claim, summary)
    return storage


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # Optuna's, on asking outside optimize()
def test_the_audit_names_duplicated_lost_and_stuck_trials(url):
    suite = unpruned(trials=3, studies=2)  # one pair: 2 grid points, 1 final seed
    storage = finish(suite, url)
    clean = audit(suite, url, [])
    assert (clean.duplicates, clean.lost, clean.ended, clean.requeued) == ([], [], 3, 0)

    tune = plan.load_study(suite, storage, "s0", "adamw", "tune")
    hparams, seed = tune.trials[0].user_attrs["hparams"], tune.trials[0].user_attrs["seed"]
    elsewhere = {**hparams, "lr": 0.5}
    # worse than every real trial, so the best configuration, and the final study's plan, stay what they were
    tune.add_trial(optuna.create_trial(value=99.0, user_attrs={"hparams": hparams, "seed": seed}))  # trial 2: 0 again
    tune.add_trial(optuna.create_trial(value=99.0, user_attrs={"hparams": elsewhere, "seed": seed},
                                       system_attrs={"failed_trial": 0}))  # trial 3: a requeue of 0 elsewhere
    stuck = tune.ask()  # trial 4: claimed, never told
    stuck.set_user_attr("hparams", {**hparams, "lr": 0.25})
    stuck.set_user_attr("seed", seed)
    found = audit(suite, url, [{"outcome": "claim", "study": tune.study_name, "number": 1}] * 2)
    name = tune.study_name
    assert found.duplicates == [f"{name} trial 1 was handed to 2 workers",
                                f"{name} trial 3 requeues trial 0 under another run key",
                                f"{name} {run_key(hparams, seed)} ran to an end 2 times (trials 0, 2)"]
    assert found.lost == [f"{name} trial 4 was left RUNNING"]

    storage.set_trial_state_values(stuck._trial_id, TrialState.FAIL)  # as the heartbeat check fails a dead worker's
    found = audit(suite, url, [])
    assert found.requeued == 1
    assert found.lost == [f"{name} {run_key(stuck.user_attrs['hparams'], seed)}: every attempt died with its worker"]


def test_the_audit_asks_the_planner_without_claiming(url):
    suite = unpruned(trials=6, studies=2)
    storage = open_storage(url, suite.execution)
    assert audit(suite, url, []).lost[-1] == "the planner still finds work in the suite"
    assert plan.load_study(suite, storage, "s0", "adamw", "tune").trials == []  # nothing was claimed


def test_the_probe_counts_its_own_threads_statements_and_the_claim_lock_wait(url):
    suite = unpruned(trials=6, studies=2)
    storage = open_storage(url, suite.execution)
    with StatementCounter() as counter:
        with counter.measure() as claim_cost:
            claim = plan.claim_next(suite, storage)
        with counter.measure() as beat_cost:
            beat = threading.Thread(target=storage.record_heartbeat, args=(claim.trial._trial_id,))
            beat.start()
            beat.join()
    assert claim_cost.statements > 10
    assert claim_cost.seconds > claim_cost.lock_wait + claim_cost.lock_held
    assert claim_cost.lock_wait > 0 and claim_cost.lock_held > 0
    assert beat_cost.statements == 0  # a heartbeat thread's statements are not the claim's


def claim_statements(suite, url) -> list[int]:
    storage = open_storage(url, suite.execution)
    counts = []
    with StatementCounter() as counter:
        while True:
            with counter.measure() as cost:
                claim = plan.claim_next(suite, storage)
            counts.append(cost.statements)
            if claim is plan.DONE:
                return counts
            loss = synthetic_loss(suite, claim)
            summary = {"status": "completed" if loss is not None else "diverged", "final_val_loss": loss}
            tell(storage, claim, summary)


def test_a_claims_statements_do_not_grow_with_the_studies_already_done(tmp_path):
    """Every pair is claimed alike (2 grid points; after every pair's tuning, a final seed): past the first pair, a
    claim sends the same statements in a suite of 4 studies as in one of 12, however many studies it skips."""
    few = claim_statements(unpruned(trials=6, studies=4), f"sqlite:///{tmp_path / 'few.db'}")
    many = claim_statements(unpruned(trials=18, studies=12), f"sqlite:///{tmp_path / 'many.db'}")
    assert len(few) == 2 * 3 + 1 and len(many) == 6 * 3 + 1  # 2 tuning claims per pair, then 1 final each, DONE
    tuning_pair, first_final, next_final = few[2:4], few[4], few[5]  # few: the 2nd pair's tuning, both finals
    assert many[2:12] == tuning_pair * 5
    assert many[12] == first_final and many[13:18] == [next_final] * 5
    assert few[-1] == many[-1]


def test_a_shipped_suite_past_its_size_repeats_its_scenarios_under_new_names():
    whole = suites.shipped_subset("s4s-stage1", 192)
    twice = suites.shipped_subset("s4s-stage1", 384)
    names = [s.name for s in whole.scenarios]
    assert len(whole.pairs()) == 96 and len(twice.pairs()) == 192
    assert [s.name for s in twice.scenarios] == names + [f"{n}~2" for n in names]
    assert len({plan.study_name(twice, s.name, e.name, "tune") for s, e in twice.pairs()}) == 192
    first, copy = twice.scenarios[0], twice.scenarios[len(names)]
    assert copy.overrides == first.overrides and copy.ladder == (None if first.ladder is None else f"{first.ladder}~2")
    with pytest.raises(UserError, match="--studies 3074: suite s4s-stage1 repeated 8 times has 768 pairs"):
        suites.shipped_subset("s4s-stage1", 3074)


def test_the_claim_cost_summary_takes_each_counts_median_over_rounds():
    from benchmarks.scale.audit import Audit
    from benchmarks.scale.table import Row, flatness

    def run(studies: int, cpu_ms: float) -> Row:
        claims = [{"outcome": "claim", "seconds": cpu_ms / 1000, "cpu": cpu_ms / 1000, "lock_held": 0.0,
                   "lock_wait": 0.0, "statements": 100}] * 10
        return Row("sqlite", 1, False, 0, 0, studies, 1.0, claims, Audit(), walk_cpu_ms=cpu_ms / 10)
    rounds = [run(24, 30), run(96, 31), run(24, 50), run(96, 40), run(24, 32), run(96, 33)]  # round 2 on a slow spell
    (line,) = flatness(rounds)
    assert line.startswith("sqlite, 1 worker(s), 24 -> 96 studies (median of 3 rounds): claim latency p50 "
                           "32.0 -> 33.0 ms")
    assert "CPU p50 32.0 -> 33.0 ms" in line and "SQL statements per claim 100.0 -> 100.0" in line
