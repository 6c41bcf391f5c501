"""Leaderboard rows on synthetic benches whose numbers are known in advance (see synthetic.py)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from omegaconf import OmegaConf
from scipy import stats

from optbench.report import measures
from optbench.report.leaderboard import scenario_result
from optbench.report.load import load_bench
from optbench.report.tables import display_leaderboard
from tests.report.synthetic import law, power_law_bench, write_run, write_suite


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return load_bench(power_law_bench(tmp_path_factory.mktemp("bench") / "out"))


@pytest.fixture(scope="module")
def result(bench):
    return scenario_result(bench, bench.suite.scenario("s"))


def rows(result):
    return {row["optimizer"]: row for row in result.table.to_dict("records")}


def test_one_row_per_optimizer_with_final_runs_best_first(result):
    assert result.table["optimizer"].tolist() == ["muon", "adamw", "lion"]
    assert result.table["rank"].tolist() == [1, 2, 3]
    assert result.table["n_final"].tolist() == [3, 3, 3]
    assert result.without_final == ["sgd"]
    assert rows(result)["muon"]["final_loss_mean"] == pytest.approx(law(2e7), abs=1e-12)
    assert rows(result)["muon"]["final_loss_std"] == pytest.approx(0.002, abs=1e-9)
    assert rows(result)["adamw"]["hparams"] == '{"beta2": 0.95, "lr": 0.001}'


def test_within_run_fit_and_speedups(result):
    assert result.fit.source.startswith("within-run")
    assert (result.fit.E, result.fit.A, result.fit.alpha) == pytest.approx((2.0, 50.0, 0.3), abs=1e-3)
    by_name = rows(result)
    assert by_name["muon"]["speedup"] == pytest.approx(2.0, abs=1e-3)
    assert by_name["adamw"]["speedup"] == pytest.approx(1.0, abs=1e-3)
    assert by_name["lion"]["speedup"] == pytest.approx(0.5, abs=1e-3)


def test_steps_and_seconds_to_target(result):
    # L(D) <= 2.5 from D = 4.64e6 tokens: adamw at step 5, muon (2x tokens) at 3, lion (0.5x) at 10.
    by_name = rows(result)
    assert [by_name[n]["steps_to_target"] for n in ("adamw", "muon", "lion")] == [5, 3, 10]
    assert by_name["muon"]["wall_s_to_target"] == pytest.approx(3 * 0.12)
    assert by_name["lion"]["wall_s_to_target"] == pytest.approx(10 * 0.09)


def test_overheads_against_the_baseline(result):
    by_name = rows(result)
    assert by_name["muon"]["step_time_s"] == pytest.approx(0.12)
    assert by_name["muon"]["step_time_ratio"] == pytest.approx(1.2)
    assert by_name["lion"]["step_time_ratio"] == pytest.approx(0.9)
    assert by_name["adamw"]["state_bytes_per_param"] == pytest.approx(8.0)
    assert by_name["muon"]["state_ratio"] == pytest.approx(0.5)
    assert by_name["muon"]["peak_mem_bytes"] == 64 * 2**20


def test_welch_p_values_against_the_baseline(bench, result):
    adamw = measures.final_losses(bench.select("s", "adamw", "final"))
    muon = measures.final_losses(bench.select("s", "muon", "final"))
    by_name = rows(result)
    assert by_name["muon"]["p_value"] == pytest.approx(stats.ttest_ind(muon, adamw, equal_var=False).pvalue)
    assert by_name["muon"]["p_value"] < 0.05
    assert math.isnan(by_name["adamw"]["p_value"])
    assert result.pairwise.loc["muon", "adamw"] == pytest.approx(by_name["muon"]["p_value"])
    assert list(result.pairwise.columns) == ["adamw", "muon", "lion"]


def test_tuning_trials_and_failures_are_counted(result):
    by_name = rows(result)
    assert (by_name["adamw"]["tune_trials"], by_name["adamw"]["diverged"]) == (3, 0)
    assert (by_name["muon"]["tune_trials"], by_name["muon"]["diverged"]) == (3, 1)
    lion = by_name["lion"]
    assert (lion["tune_trials"], lion["pruned"], lion["incomplete"], lion["failed"]) == (5, 1, 1, 0)


def test_display_shows_target_columns_only_with_a_target(result, tmp_path):
    shown = display_leaderboard(result.table, result.fit, has_target=True)
    assert shown.loc[0, "steps to target"] == "3" and shown.loc[0, "speedup (D_eff/D)"] == "2.00×"
    no_target = load_bench(power_law_bench(tmp_path / "out", target=None))
    table = scenario_result(no_target, no_target.suite.scenario("s")).table
    assert table["steps_to_target"].isna().all()
    assert "steps to target" not in display_leaderboard(table, result.fit, has_target=False).columns


def ladder_bench(out, budgets):
    """Scenarios differing in tokens; the baseline's curves are ramps that end on the law at each budget,
    so only the ladder (final losses across scenarios) recovers it."""
    write_suite(out, [{"name": f"d{i}", "ladder": "L", "target_loss": None} for i in range(len(budgets))],
                ["adamw", "muon"], seeds=[0])
    for i, per_step in enumerate(budgets):
        total = 10 * per_step
        for name, scale in (("adamw", 1.0), ("muon", 2.0)):
            ramp = [law(scale * total) + 0.3 * (10 - k) / 10 for k in range(1, 11)]
            write_run(out, f"d{i}", name, 0, {"lr": 1e-3}, ramp, tokens_per_step=per_step)
    return load_bench(out)


def test_a_ladder_of_three_scenarios_gives_the_fit(tmp_path):
    bench = ladder_bench(tmp_path / "out", [100_000, 1_000_000, 10_000_000])
    for scenario in bench.suite.scenarios:
        result = scenario_result(bench, scenario)
        assert result.fit.source.startswith("ladder 'L'")
        assert (result.fit.E, result.fit.A, result.fit.alpha) == pytest.approx((2.0, 50.0, 0.3), abs=1e-3)
        assert rows(result)["muon"]["speedup"] == pytest.approx(2.0, abs=1e-3)


def test_a_ladder_of_two_falls_back_to_the_curve(tmp_path):
    bench = ladder_bench(tmp_path / "out", [100_000, 1_000_000])
    result = scenario_result(bench, bench.suite.scenarios[0])
    assert result.fit.source.startswith("within-run")


def test_a_loss_below_the_fitted_floor_is_shown_as_such(tmp_path):
    out = tmp_path / "out"
    write_suite(out, [{"name": "s"}], ["adamw", "muon"], seeds=[0])
    write_run(out, "s", "adamw", 0, {"lr": 1e-3}, [law(k * 1e6) for k in range(1, 11)])
    write_run(out, "s", "muon", 0, {"lr": 0.02}, [3.0] * 9 + [1.9])
    bench = load_bench(out)
    result = scenario_result(bench, bench.suite.scenario("s"))
    assert math.isinf(rows(result)["muon"]["speedup"])
    shown = display_leaderboard(result.table, result.fit, has_target=False)
    assert shown.loc[0, "speedup (D_eff/D)"].startswith("below fitted floor E=2")


def test_a_best_value_at_the_edge_of_its_grid_is_flagged(tmp_path):
    out = tmp_path / "out"
    write_suite(out, [{"name": "s"}], ["adamw"], seeds=(0,))
    best = {"lr": 1e-2, "beta2": 0.95, "weight_decay": 0.0}
    write_run(out, "s", "adamw", 0, best, [3.0, 2.5], phases=("tune", "final"))
    write_run(out, "s", "adamw", 0, {**best, "lr": 3.16e-3}, [3.0, 2.6], phases=("tune",))
    write_run(out, "s", "adamw", 0, {**best, "beta2": 0.98}, [3.0, 2.6], phases=("tune",))
    result = scenario_result(load_bench(out), load_bench(out).suite.scenario("s"))
    row = rows(result)["adamw"]
    # 1e-2 tops adamw's lr grid and 0.95 is its lowest beta2, neither extended yet; weight decay 0 ends its domain
    assert row["at_grid_edge"] == "lr,beta2"
    shown = display_leaderboard(result.table, result.fit, has_target=False)
    assert shown.loc[0, "best hyperparameters"] == "beta2=0.95*, lr=0.01*, weight_decay=0"


def test_a_value_the_tuning_never_moved_is_not_flagged(tmp_path):
    out = tmp_path / "out"
    write_suite(out, [{"name": "s"}], ["adamw"], seeds=(0,))
    best = {"lr": 3.16e-3, "beta2": 0.95, "weight_decay": 0.0}  # beta2 at the bottom of its choices, never varied
    write_run(out, "s", "adamw", 0, best, [3.0, 2.5], phases=("tune", "final"))
    write_run(out, "s", "adamw", 0, {**best, "lr": 1e-2}, [3.0, 2.6], phases=("tune",))
    write_run(out, "s", "adamw", 0, {**best, "lr": 1e-3}, [3.0, 2.6], phases=("tune",))
    result = scenario_result(load_bench(out), load_bench(out).suite.scenario("s"))
    assert rows(result)["adamw"]["at_grid_edge"] == ""


def extension_run(out, lr, losses, phases=("tune",)):
    run = write_run(out, "s", "adamw", 0, {"lr": lr, "beta2": 0.98, "weight_decay": 0.0}, losses, phases=phases)
    trial = json.loads((run / "trial.json").read_text())
    (run / "trial.json").write_text(json.dumps({**trial, "extension": "lr"}))


def test_an_edge_the_bench_extended_past_is_not_flagged_and_one_it_could_not_is(tmp_path):
    out = tmp_path / "out"
    write_suite(out, [{"name": "s"}], ["adamw"], seeds=(0,))
    write_run(out, "s", "adamw", 0, {"lr": 1e-2, "beta2": 0.98, "weight_decay": 0.0}, [3.0, 2.5],
              phases=("tune",))
    write_run(out, "s", "adamw", 0, {"lr": 3.16e-3, "beta2": 0.98, "weight_decay": 0.0}, [3.0, 2.55],
              phases=("tune",))
    extension_run(out, 3.16e-2, [3.0, 2.4], phases=("tune", "final"))  # better: the walk went on
    extension_run(out, 1e-1, [3.0, 2.6])  # worse: 3.16e-2 is interior
    bench = load_bench(out)
    assert rows(scenario_result(bench, bench.suite.scenario("s")))["adamw"]["at_grid_edge"] == ""
    neighbours = scenario_result(bench, bench.suite.scenario("s")).neighbours.set_index("hparam").loc["lr"]
    assert (neighbours["below_value"], neighbours["above_value"]) == (1e-2, 1e-1)  # the extended grid's steps

    for run in sorted((out / "runs" / "s" / "adamw").glob("*/trial.json")):
        if json.loads(run.read_text())["hparams"]["lr"] == 1e-1:
            shutil.rmtree(run.parent)  # the step beyond was never run: with a budget of 1 it cannot be
    spec = OmegaConf.load(out / "suite.yaml")
    spec.tuning.extend = 1
    (out / "suite.yaml").write_text(OmegaConf.to_yaml(spec))
    bench = load_bench(out)
    assert rows(scenario_result(bench, bench.suite.scenario("s")))["adamw"]["at_grid_edge"] == "lr"


def test_step_time_is_the_trainers_median_timed_step_not_the_logged_throughput(tmp_path):
    """summary.json's step_time_s (forward, backward and update only) is the column; the train lines' throughput
    is only a fallback for runs written before the trainer recorded it."""
    from optbench.report.load import Run
    from optbench.report.measures import median_step_time

    lines = [{"step": s, "tokens": 100 * s, "tokens_per_s": 100 / 0.5} for s in (1, 2, 3)]  # 0.5 s a step
    timed = Run(tmp_path, "s", "adamw", {}, 0, ("final",), summary={"step_time_s": 0.1}, train=lines)
    older = Run(tmp_path, "s", "adamw", {}, 0, ("final",), summary={}, train=lines)
    assert median_step_time([timed]) == pytest.approx(0.1)
    assert median_step_time([older]) == pytest.approx(0.5)
