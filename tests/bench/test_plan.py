"""Planning without training: claims are told synthetic losses, so the protocols can be checked exactly."""

from __future__ import annotations

import math
import time

import optuna
import pytest
from optuna.trial import TrialState

from optbench.bench import plan
from optbench.bench.storage import open_storage
from optbench.bench.suite import Execution, Final, OptimizerEntry, Scenario, Suite, Tuning, validate
from optbench.optim.search_space import Choice, LogUniform

optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_suite(method="coordinate", trials=None, seeds=(0, 1), optimizers=None, **execution) -> Suite:
    """The method's own points only (extend=0): the walk beyond a grid edge is test_extend.py's."""
    optimizers = optimizers or [OptimizerEntry("adamw", search={
        "lr": {"log": [1e-4, 1e-1], "grid": [1e-3, 3e-3, 1e-2, 3e-2]}, "beta2": {"choice": [0.9, 0.95, 0.99]},
        "weight_decay": None})]
    suite = Suite(name="plan-test", scenarios=[Scenario("s")], optimizers=optimizers,
                  tuning=Tuning(method=method, trials=trials, extend=0), final=Final(seeds=list(seeds)),
                  execution=Execution(**execution))
    validate(suite)
    return suite


def loss(hparams) -> float:
    """A separable bowl with its minimum at lr=1e-2, beta2=0.95 (on the grid)."""
    return (math.log10(hparams["lr"]) + 2) ** 2 + 10 * (hparams["beta2"] - 0.95) ** 2 + 1.0


def run_to_end(suite, storage, limit=200, objective=loss):
    """Claim and tell `objective` until DONE; returns the claims in order."""
    claims = []
    for _ in range(limit):
        claim = plan.claim_next(suite, storage)
        if claim is plan.DONE:
            return claims
        assert isinstance(claim, plan.Claim), claim
        claims.append(claim)
        claim.study.tell(claim.trial, objective(claim.hparams))
    raise AssertionError("planning did not finish")


@pytest.fixture
def storage(tmp_path):
    return open_storage(f"sqlite:///{tmp_path / 'study.db'}", Execution(heartbeat_s=1, grace_s=2))


def test_grid_tries_every_point_once_then_repeats_the_best_over_the_final_seeds(storage):
    suite = make_suite("grid")
    claims = run_to_end(suite, storage)
    tune = [c for c in claims if c.phase == "tune"]
    assert sorted((c.hparams["lr"], c.hparams["beta2"]) for c in tune) == sorted(
        (lr, b) for lr in (1e-3, 3e-3, 1e-2, 3e-2) for b in (0.9, 0.95, 0.99))
    final = [c for c in claims if c.phase == "final"]
    assert [c.seed for c in final] == [0, 1]
    assert all(c.hparams == {"lr": 1e-2, "beta2": 0.95} for c in final)
    assert all(c.seed == 0 for c in tune)


def test_coordinate_descent_walks_one_hyperparameter_at_a_time_from_the_defaults(storage):
    claims = run_to_end(make_suite("coordinate"), storage)
    tune = [c.hparams for c in claims if c.phase == "tune"]
    # AdamW's defaults snapped to the grid: lr 1e-3, beta2 0.95. First the lr line at beta2=0.95 ...
    assert tune[:4] == [{"lr": lr, "beta2": 0.95} for lr in (1e-3, 3e-3, 1e-2, 3e-2)]
    # ... then the beta2 line through the best lr; one more round finds no move, adding no new points.
    assert tune[4:] == [{"lr": 1e-2, "beta2": 0.9}, {"lr": 1e-2, "beta2": 0.99}]
    assert [c.hparams for c in claims if c.phase == "final"] == [{"lr": 1e-2, "beta2": 0.95}] * 2


def test_coordinate_line_replay_moves_only_on_improvement():
    space = {"lr": LogUniform(1e-3, 1e-1, (1e-3, 1e-2, 1e-1)), "b": Choice((1, 2))}
    results = {plan.key_of({"lr": lr, "b": 1}): v for lr, v in ((1e-3, 3.0), (1e-2, 2.0), (1e-1, 2.5))}
    line = plan.coordinate_line(space, {"lr": 1e-3, "b": 1}, results)
    assert line == [{"lr": 1e-2, "b": 1}, {"lr": 1e-2, "b": 2}]
    results[plan.key_of({"lr": 1e-2, "b": 2})] = None  # running
    assert plan.coordinate_line(space, {"lr": 1e-3, "b": 1}, results) is plan.WAIT
    results[plan.key_of({"lr": 1e-2, "b": 2})] = 2.0  # a tie keeps the centre: converged
    assert plan.coordinate_line(space, {"lr": 1e-3, "b": 1}, results) == []


def test_budget_caps_tuning_and_tpe_samples_inside_the_space(storage):
    suite = make_suite("tpe", trials=5, seeds=(3,))
    claims = run_to_end(suite, storage)
    tune = [c for c in claims if c.phase == "tune"]
    assert len(tune) == 5
    assert all(1e-4 <= c.hparams["lr"] <= 1e-1 and c.hparams["beta2"] in (0.9, 0.95, 0.99) for c in tune)
    best = min(tune, key=lambda c: loss(c.hparams)).hparams
    assert [(c.hparams, c.seed) for c in claims if c.phase == "final"] == [(best, 3)]


def test_running_trials_make_others_wait_for_the_line_and_for_the_final_phase(storage):
    suite = make_suite("coordinate", trials=4)
    claims = [plan.claim_next(suite, storage) for _ in range(4)]
    assert all(isinstance(c, plan.Claim) for c in claims)  # the whole lr line runs in parallel
    assert plan.claim_next(suite, storage) is plan.WAIT  # budget spent; the final phase needs their results
    for c in claims:
        c.study.tell(c.trial, loss(c.hparams))
    final = plan.claim_next(suite, storage)
    assert final.phase == "final" and final.hparams == {"lr": 1e-2, "beta2": 0.95}


def test_a_dead_workers_trial_is_requeued_with_its_configuration(storage):
    suite = make_suite("grid", seeds=(0,), heartbeat_s=1, grace_s=2)
    first = plan.claim_next(suite, storage)  # then the worker dies before it trains: no beat but the claim's
    time.sleep(3.5)  # past the 2 s grace (heartbeat times are stored to the second)
    claims = run_to_end(suite, storage)
    trials = first.study.get_trials()
    assert trials[first.trial.number].state == TrialState.FAIL
    retry = claims[0]
    assert (retry.hparams, retry.seed) == (first.hparams, first.seed)
    assert retry.study.get_trials()[retry.trial.number].system_attrs["failed_trial"] == first.trial.number
    assert len([c for c in claims if c.phase == "tune"]) == 12  # the grid, the dead point once more included


def test_a_crashed_trial_counts_as_tried_and_is_not_retried(storage):
    suite = make_suite("grid", seeds=(0,))
    first = plan.claim_next(suite, storage)
    first.trial.set_user_attr("error", "RuntimeError: boom")
    first.study.tell(first.trial, state=TrialState.FAIL)
    claims = run_to_end(suite, storage)
    assert first.hparams not in [c.hparams for c in claims if c.phase == "tune"]
    assert len([c for c in claims if c.phase == "tune"]) == 11


def test_an_optimizer_whose_every_trial_diverged_gets_no_final_runs(storage):
    suite = make_suite("grid", seeds=(0,))
    while isinstance(claim := plan.claim_next(suite, storage), plan.Claim):
        claim.study.tell(claim.trial, math.inf)
    assert claim is plan.DONE
    final = plan.load_study(suite, storage, "s", "adamw", "final")
    assert final.get_trials() == []


def test_repeated_tuning_studies_each_tune_at_their_own_seed_and_the_final_repeats_study_0s_best(storage):
    suite = make_suite("grid", seeds=(5,))
    suite.tuning.studies = 3
    validate(suite)
    claims = run_to_end(suite, storage)
    tune = [c for c in claims if c.phase == "tune"]
    for index in range(3):
        mine = [c for c in tune if c.tuning_study == index]
        assert len(mine) == 12 and {c.seed for c in mine} == {index}  # the whole 4 x 3 grid, at seed 0 + index
        assert {c.study.study_name for c in mine} == {f"plan-test/s/adamw/{plan.tuning_phase(index)}"}
    final = [c for c in claims if c.phase == "final"]
    assert [(c.seed, c.hparams) for c in final] == [(5, {"lr": 1e-2, "beta2": 0.95})]
