"""The bench's live view: the planned total against the planner's own claims, trial counts by state from the
storage, the ETA, and the line printed where no bar can be drawn."""

from __future__ import annotations

import datetime
import io
import math

import optuna
import pytest
from optuna.distributions import FloatDistribution
from rich.console import Console

from optbench.bench import live, plan
from optbench.bench.storage import open_storage
from optbench.bench.suite import Execution
from tests.bench.test_plan import loss, make_suite, run_to_end

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def storage(tmp_path):
    return open_storage(f"sqlite:///{tmp_path / 'study.db'}", Execution(heartbeat_s=1, grace_s=2))


@pytest.mark.parametrize("method, trials", [("grid", None), ("grid", 5), ("tpe", 6), ("coordinate", 4)])
def test_the_planned_total_is_what_the_planner_runs(storage, method, trials):
    suite = make_suite(method, trials=trials, seeds=(0, 1, 2))
    claims = run_to_end(suite, storage)
    assert live.planned_trials(suite) == len(claims)
    counts = live.count_trials(suite, storage)
    assert (counts.finished, counts.failed, counts.running) == (len(claims), 0, 0)


def test_repeated_studies_multiply_the_tuning_points(storage):
    suite = make_suite("grid", seeds=(0,))
    suite.tuning.studies = 2
    assert live.planned_trials(suite) == 2 * 12 + 1
    assert len(run_to_end(suite, storage)) == 2 * 12 + 1


def add(study, state, seconds=None, **attrs):
    start = datetime.datetime(2026, 1, 1)
    trial = optuna.trial.create_trial(
        state=state, params={"lr": 1e-3}, distributions={"lr": FloatDistribution(1e-4, 1e-1, log=True)},
        value=1.0 if state == optuna.trial.TrialState.COMPLETE else None, user_attrs=attrs)
    trial.datetime_start = start if state != optuna.trial.TrialState.WAITING else None
    trial.datetime_complete = start + datetime.timedelta(seconds=seconds) if seconds is not None else None
    study.add_trial(trial)


def test_trials_are_counted_by_what_became_of_them(storage):
    suite = make_suite("grid")
    state = optuna.trial.TrialState
    tune = plan.load_study(suite, storage, "s", "adamw", "tune")
    add(tune, state.COMPLETE, 10.0)
    add(tune, state.PRUNED, 4.0)
    add(tune, state.FAIL, 6.0, error="RuntimeError: out of memory")  # a crash: its result
    add(tune, state.FAIL, 3.0)  # stopped by a signal and requeued: counted again as its new attempt
    add(tune, state.WAITING)
    final = plan.load_study(suite, storage, "s", "adamw", "final")
    add(final, state.RUNNING)
    other = optuna.create_study(study_name="another-suite/s/adamw/tune", storage=storage)
    add(other, state.COMPLETE, 100.0)  # a study of another suite in the same storage is not counted
    counts = live.count_trials(suite, storage)
    assert (counts.finished, counts.failed, counts.running, counts.done) == (2, 1, 1, 3)
    assert counts.seconds == pytest.approx(20.0)
    line = live.status_line(suite, counts, total=14, workers=2)
    # 11 left (10 queued + the running one) at 20 s / 3 trials each, over 2 workers: 36.7 s
    assert line == "plan-test: 3/14 trials · 1 running · 10 queued · 1 failed · ETA 00:00:36"


def test_eta_is_unknown_before_a_trial_ends_and_the_total_grows_past_the_plan():
    assert math.isnan(live.eta_s(live.Counts(running=2), total=10, workers=2))
    assert live.eta_s(live.Counts(finished=4, seconds=40.0), total=10, workers=3) == pytest.approx(20.0)
    suite = make_suite("grid")
    grown = live.status_line(suite, live.Counts(finished=15, running=1, seconds=15.0), total=14, workers=1)
    assert grown.startswith("plan-test: 15/16 trials · 1 running · 0 queued · ETA 00:00:01")


def test_in_a_log_the_view_prints_its_line_at_the_start_and_the_end(storage):
    suite = make_suite("grid", seeds=(0,))
    text = io.StringIO()
    console = Console(file=text, force_terminal=False, width=200)
    with live.LiveView(suite, storage, workers=1, console=console) as view:
        claim = plan.claim_next(suite, storage)
        claim.study.tell(claim.trial, loss(claim.hparams))
        view.refresh()  # within LOG_EVERY_S of the first line: nothing printed
    lines = text.getvalue().splitlines()
    assert lines[0].startswith("plan-test: 0/13 trials · 0 running · 13 queued · ETA —")
    assert lines[1].startswith("plan-test: 1/13 trials · 0 running · 12 queued") and len(lines) == 2


def test_counting_is_one_query_however_many_studies(storage):
    """The view reads the storage every few seconds beside the workers' claims: one statement, not a load of each
    study (the suite here has 3 optimizers x 2 phases, each with several trials)."""
    import sqlalchemy as sa

    from optbench.bench.suite import OptimizerEntry

    suite = make_suite("grid", seeds=(0,), optimizers=[
        OptimizerEntry(name, search={"lr": {"log": [1e-4, 1e-1], "grid": [1e-3, 1e-2]}}) for name in
        ("adamw", "lion", "sgd")])
    claims = run_to_end(suite, storage, objective=lambda hparams: math.log10(hparams["lr"]) ** 2)
    statements = []

    def record(connection, cursor, statement, *rest):
        statements.append(statement)

    sa.event.listen(storage.engine, "before_cursor_execute", record)
    try:
        counts = live.count_trials(suite, storage)
    finally:
        sa.event.remove(storage.engine, "before_cursor_execute", record)
    assert counts.finished == len(claims) > 3 * 2
    assert len(statements) == 1, statements
