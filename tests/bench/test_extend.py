"""Tuning that cannot stop at a grid edge: the outward step of every kind of hyperparameter, the planning that
walks past an edge until the optimum is interior, and the budget and bounds that stop it."""

from __future__ import annotations

import json
import math

import optuna
import pytest

from optbench.bench import plan
from optbench.bench.extend import BOUND, BUDGET, find_edge
from optbench.bench.storage import open_storage
from optbench.bench.suite import Execution, Final, OptimizerEntry, Scenario, Suite, Tuning, validate
from optbench.optim.search_space import Choice, LogUniform, Uniform
from tests.bench.test_plan import run_to_end as run_claims

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize("key, dim, best, side, outward", [
    ("lr", LogUniform(1e-4, 1e-1, (1e-3, 3e-3, 1e-2)), 1e-2, "high", 0.0333),  # the grid's own ratio, 3.33
    ("lr", LogUniform(1e-4, 1e-1, (1e-3, 3e-3, 1e-2)), 1e-3, "low", 3.33e-4),
    ("lr", LogUniform(1e-4, 1e-2), 8e-3, "high", 3.16e-2),  # TPE: a value in the outermost cell of the range
    ("beta2", Choice((0.9, 0.99)), 0.99, "high", 0.999),  # betas step by the ratio of 1 - beta
    ("momentum", Choice((0.9, 0.95)), 0.9, "low", 0.8),
    ("backup.beta2", Choice((0.95, 0.99)), 0.99, "high", 0.998),  # a backup's beta is a beta
    ("beta2", Choice((0.999, 0.9999)), 0.9999, "high", 0.99999),  # rounded in 1 - beta, never up to 1
    ("beta2", Choice((0.98, 0.99)), 0.99, "high", 0.995),
    ("weight_decay", Choice((0.0, 0.01, 0.1)), 0.1, "high", 1.0),
    ("precondition_frequency", Choice((10, 20, 50, 100)), 100, "high", 200),
    ("precondition_frequency", Choice((10, 20, 50, 100)), 10, "low", 5),
    ("decay_rate", Choice((-0.5, -0.8, -1.0)), -1.0, "low", -1.2),  # negative values step by their gap
    ("x", Uniform(0.0, 1.0, (0.25, 0.5)), 0.5, "high", 1.0),  # positive linear points: by their ratio
])
def test_the_outward_step_is_the_grids_own(key, dim, best, side, outward):
    edge = find_edge(key, dim, best, [], steps_left=1)
    assert (edge.side, edge.reason) == (side, None)
    assert edge.outward == pytest.approx(outward, rel=1e-9)


@pytest.mark.parametrize("key, dim, best", [
    ("lr", LogUniform(1e-4, 1e-1, (1e-3, 3e-3, 1e-2)), 3e-3),  # interior
    ("weight_decay", Choice((0.0, 0.01, 0.1)), 0.0),  # the end of its own domain: nothing lies below
    ("nesterov", Choice((True, False)), True),  # categorical
    ("lr", LogUniform(1e-4, 1e-1, (1e-3,)), 1e-3),  # one point is a fixed value, not a range
])
def test_no_edge(key, dim, best):
    assert find_edge(key, dim, best, [], steps_left=3) is None


def test_extension_values_widen_the_ladder_so_the_next_step_starts_from_them():
    dim = LogUniform(1e-4, 1e-1, (1e-3, 1e-2))
    assert find_edge("lr", dim, 1e-1, [1e-1], steps_left=1).outward == pytest.approx(1.0)
    assert find_edge("lr", dim, 1e-2, [1e-1], steps_left=1) is None  # the step beyond was worse: interior


def test_hard_bounds_and_the_budget_stop_an_extension():
    assert find_edge("lr", LogUniform(0.01, 1.0, (0.1, 1.0)), 1.0, [], 5).reason == BOUND  # lr <= 1
    prodigy = LogUniform(0.1, 10.0)  # a multiplier: its range's own top is the ceiling
    assert find_edge("lr", prodigy, 10.0, [], 5).reason == BOUND
    assert find_edge("lr", prodigy, 3.16, [], 5) is None
    assert find_edge("momentum", Choice((0.5, 0.9)), 0.5, [], 5).reason == BOUND  # 1 - 0.5 * 5 < 0
    assert find_edge("lr", LogUniform(1e-4, 1e-1, (1e-3, 1e-2)), 1e-2, [], 0).reason == BUDGET


# ----------------------------------------------------------------------------- planning


def bowl(centre_lr: float, centre_beta2: float = 0.95):
    def loss(hparams) -> float:
        return (math.log10(hparams["lr"] / centre_lr)) ** 2 + 100 * (hparams["beta2"] - centre_beta2) ** 2 + 1.0
    return loss


def make_suite(method="grid", extend=3, trials=None, lr_grid=(1e-5, 1e-4), beta2=(0.9, 0.95, 0.99),
               lr_range=(1e-6, 1e-4)) -> Suite:
    entry = OptimizerEntry("adamw", search={"lr": {"log": list(lr_range), "grid": list(lr_grid)},
                                            "beta2": {"choice": list(beta2)}, "weight_decay": None})
    suite = Suite(name="extend-test", scenarios=[Scenario("s")], optimizers=[entry],
                  tuning=Tuning(method=method, trials=trials, extend=extend), final=Final(seeds=[0]),
                  execution=Execution(heartbeat_s=1, grace_s=2))
    validate(suite)
    return suite


def run_to_end(suite, storage, loss):
    return run_claims(suite, storage, objective=loss)


@pytest.fixture
def storage(tmp_path):
    return open_storage(f"sqlite:///{tmp_path / 'study.db'}", Execution(heartbeat_s=1, grace_s=2))


@pytest.mark.parametrize("method", ["grid", "coordinate", "tpe"])
def test_a_grid_far_below_the_optimum_is_walked_until_the_best_is_interior(storage, method):
    suite = make_suite(method, extend=5, trials=6)
    claims = run_to_end(suite, storage, bowl(1e-2))
    beyond = [c for c in claims if c.extension is not None]
    assert [c.hparams["lr"] for c in beyond if c.extension == "lr"] == pytest.approx([1e-3, 1e-2, 1e-1])
    final = [c for c in claims if c.phase == "final"]
    assert final[0].hparams["lr"] == pytest.approx(1e-2)  # interior: 1e-1 was tried above it and lost
    own = [c for c in claims if c.phase == "tune" and c.extension is None]
    assert len(own) <= 6  # the trial budget counts the method's own points; the walk comes on top
    study = final[0].study.study_name.replace("/final", "/tune")
    recorded = [t.user_attrs.get("extension") for t in optuna.load_study(study_name=study, storage=storage).trials]
    assert recorded.count("lr") == len(beyond)  # the study says which points extended what


def test_every_tuned_hyperparameter_is_extended_not_only_lr(storage):
    suite = make_suite("grid", lr_grid=(1e-3, 1e-2, 1e-1), beta2=(0.9, 0.95), lr_range=(1e-4, 1.0))
    claims = run_to_end(suite, storage, bowl(1e-2, centre_beta2=0.99))
    beyond = [(c.extension, c.hparams["beta2"]) for c in claims if c.extension is not None]
    assert beyond[0] == ("beta2", pytest.approx(0.975))  # 1 - 0.05 * (0.05 / 0.1)
    final = [c for c in claims if c.phase == "final"]
    assert 0.975 <= final[0].hparams["beta2"] < 1


def test_a_hyperparameter_the_method_never_moved_is_not_at_an_edge(storage):
    """Coordinate descent with a budget of 2 sweeps only lr: beta2 stays at adamw's default, 0.95, the bottom of
    its choices here, which is no evidence of an optimum below it; only lr is walked."""
    suite = make_suite("coordinate", trials=2, beta2=(0.95, 0.98, 0.99))
    claims = run_to_end(suite, storage, bowl(1e-2, centre_beta2=0.9))
    assert {c.hparams["beta2"] for c in claims} == {0.95}
    assert {c.extension for c in claims if c.extension} == {"lr"}


def test_the_extension_budget_ends_the_walk(storage):
    claims = run_to_end(make_suite("grid", extend=1), storage, bowl(1e-2))
    assert [c.hparams["lr"] for c in claims if c.extension is not None] == [pytest.approx(1e-3)]
    assert [c for c in claims if c.phase == "final"][0].hparams["lr"] == pytest.approx(1e-3)


def test_no_extension_with_a_zero_budget_or_an_interior_best(storage, tmp_path):
    assert not [c for c in run_to_end(make_suite("grid", extend=0), storage, bowl(1e-2)) if c.extension]
    other = open_storage(f"sqlite:///{tmp_path / 'other.db'}", Execution(heartbeat_s=1, grace_s=2))
    interior = make_suite("grid", lr_grid=(1e-3, 1e-2, 1e-1), lr_range=(1e-4, 1.0))
    assert not [c for c in run_to_end(interior, other, bowl(1e-2)) if c.extension]


def test_the_walk_waits_for_running_trials(storage):
    suite = make_suite("grid")
    claims = [plan.claim_next(suite, storage) for _ in range(6)]  # the whole 2 x 3 grid
    for claim in claims[:-1]:
        claim.study.tell(claim.trial, bowl(1e-2)(claim.hparams))
    assert plan.claim_next(suite, storage) is plan.WAIT  # the best is unknown while the grid's last point runs
    claims[-1].study.tell(claims[-1].trial, bowl(1e-2)(claims[-1].hparams))
    assert plan.claim_next(suite, storage).extension == "lr"


# ----------------------------------------------------------------------------- end to end


def test_a_real_suite_whose_lr_grid_lies_far_below_the_optimum_ends_interior_above_it(tmp_path, corpus):
    """AdamW's grid two decades below a good lr for this model: the bench trains its way up and stops once a
    step further is worse; the report then flags no edge."""
    import yaml

    from optbench.bench import launch
    from optbench.bench.worker import work
    from optbench.report.leaderboard import scenario_result
    from optbench.report.load import load_bench
    from tests.bench.test_bench_run import micro_suite

    path = micro_suite(tmp_path, corpus, grid=(1e-5, 1e-4), seeds=(0,), extend=4)
    spec = yaml.safe_load(path.read_text())
    spec["optimizers"] = spec["optimizers"][:1]
    spec["optimizers"][0]["search"]["lr"]["log"] = [1e-6, 1e-4]
    path.write_text(yaml.safe_dump(spec))
    suite, out, url = launch.prepare(path, tmp_path / "out", None)
    work(suite, out, url, "w0", threads=1)
    bench = load_bench(out)
    tuned = {r.hparams["lr"]: r.final_loss for r in bench.select("s", "adamw", "tune")}
    best = min(tuned, key=tuned.get)
    assert best > 1e-4 and max(tuned) > best  # above the grid, with a worse point tried beyond it
    assert len(tuned) < 2 + 4  # it stopped because the optimum was interior, not because the budget ran out
    row = scenario_result(bench, suite.scenario("s")).table.set_index("optimizer").loc["adamw"]
    assert row["at_grid_edge"] == "" and json.loads(row["hparams"])["lr"] == best
