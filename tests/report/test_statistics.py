"""The "Statistics" section (issue 12, item 6) on a synthetic bench whose right answers are computed here,
independently: t statistics by hand, p-values from scipy's t distribution, power by simulation, tuning
burden and grid neighbours by reading the numbers the bench was built from."""

from __future__ import annotations

import json
import math
import os
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from scipy import stats

from optbench.bench import layout
from optbench.report import statistics, write_report
from optbench.report.leaderboard import scenario_result
from optbench.report.load import load_bench
from tests.report.synthetic import write_run, write_suite

TARGET = 2.5
FINALS = {"adamw": [2.49, 2.47, 2.52, 2.50, 2.46], "muon": [2.40, 2.43, 2.41], "lion": [2.55, 2.50, 2.58]}
BEST = {"adamw": {"lr": 1e-3, "beta2": 0.98}, "muon": {"lr": 0.0949, "momentum": 0.95},
        "lion": {"lr": 1e-4, "beta2": 0.99}}
ADAMW_TUNING = [  # in the order the trials ran: (hparams, final loss or None, status)
    ({"lr": 1e-2, "beta2": 0.98}, 2.70, "completed"),
    ({"lr": 3.16e-3, "beta2": 0.98}, None, "diverged"),
    ({"lr": 3.16e-4, "beta2": 0.98}, 2.55, "completed"),
    ({"lr": 1e-3, "beta2": 0.95}, 2.505, "completed"),
    ({"lr": 1e-3, "beta2": 0.98}, 2.49, "completed"),
    ({"lr": 1e-4, "beta2": 0.98}, 2.60, "completed"),
]
MUON_TUNING = [({"lr": 0.0949, "momentum": 0.95}, 2.45, "completed"),
               ({"lr": 0.03, "momentum": 0.95}, 2.47, "completed")]


def _run(out, name, hparams, loss, status, seed, phases, started):
    losses = [3.0, loss if loss is not None else 3.5]
    path = write_run(out, "t", name, seed, hparams, losses, phases=phases, status=status)
    if loss is None:
        summary = json.loads((path / "summary.json").read_text())
        (path / "summary.json").write_text(json.dumps({**summary, "final_val_loss": None}))
    os.utime(path / "env.json", (started, started))  # the bench writes env.json when the run starts
    return path


def build(out, trial_numbers=False):
    """Tuning runs whose directory names (hashes) do not follow trial order; env.json times do."""
    write_suite(out, [{"name": "t", "target_loss": TARGET}], ["adamw", "muon", "lion"])
    started = 1_700_000_000
    for name, tuning in (("adamw", ADAMW_TUNING), ("muon", MUON_TUNING)):
        for i, (hp, loss, status) in enumerate(tuning):
            path = _run(out, name, hp, loss, status, 0, ("tune",), started + 10 * i)
            if trial_numbers:  # the trial number, where recorded, wins over times: reverse the times
                os.utime(path / "env.json", (started - 10 * i, started - 10 * i))
                trial = json.loads(layout.trial_file(path).read_text())
                layout.trial_file(path).write_text(json.dumps({**trial, "trial": i}))
    for name, losses in FINALS.items():
        for seed, loss in enumerate(losses, start=1):
            _run(out, name, BEST[name], loss, "completed", seed, ("final",), started + 1000 + seed)
    return out


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory):
    return build(tmp_path_factory.mktemp("stats") / "out")


@pytest.fixture(scope="module")
def result(bench_out):
    bench = load_bench(bench_out)
    return scenario_result(bench, bench.suite.scenarios[0])


def _by_optimizer(table):
    return {row["optimizer"]: row for row in table.to_dict("records")}


# ----------------------------------------------------------------------------- (a) target test


def test_target_test_is_the_one_sided_one_sample_t_test(result):
    rows = _by_optimizer(result.table)
    for name, losses in FINALS.items():
        x = np.array(losses)
        t = (x.mean() - TARGET) / (x.std(ddof=1) / math.sqrt(len(x)))  # by hand
        assert rows[name]["t_vs_target"] == pytest.approx(t, rel=1e-10)
        assert rows[name]["p_below_target"] == pytest.approx(stats.t.cdf(t, len(x) - 1), rel=1e-10)
        assert rows[name]["p_below_target"] == pytest.approx(
            stats.ttest_1samp(x, TARGET, alternative="less").pvalue, rel=1e-10)
    # adamw's mean 2.488 is below 2.5 but not beyond seed noise; muon's is; lion's mean is above.
    assert {n: rows[n]["below_target"] for n in FINALS} == {"adamw": False, "muon": True, "lion": False}
    assert result.alpha == statistics.ALPHA == 0.05


def test_target_test_is_undefined_without_spread_or_seeds():
    assert all(math.isnan(v) for v in statistics.target_test([2.4], TARGET))
    assert all(math.isnan(v) for v in statistics.target_test([2.4, 2.4, 2.4], TARGET))


def test_alpha_comes_from_the_suite_when_it_has_one():
    assert statistics.alpha_of(SimpleNamespace(alpha=0.01)) == 0.01
    assert statistics.alpha_of(SimpleNamespace(significance=SimpleNamespace(alpha=0.1))) == 0.1
    assert statistics.alpha_of(SimpleNamespace()) == 0.05


def test_pairwise_one_sided_welch_puts_the_lower_mean_first(result):
    pairs = result.pairs
    assert len(pairs) == 3
    for row in pairs.to_dict("records"):
        a, b = np.array(FINALS[row["better"]]), np.array(FINALS[row["worse"]])
        assert a.mean() < b.mean()
        va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
        t = (a.mean() - b.mean()) / math.sqrt(va + vb)
        df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch–Satterthwaite
        assert row["p_less"] == pytest.approx(stats.t.cdf(t, df), rel=1e-9)
        assert row["gap"] == pytest.approx(b.mean() - a.mean())
        assert row["significant"] == (stats.t.cdf(t, df) < 0.05)
    found = {(r["better"], r["worse"]): r["significant"] for r in pairs.to_dict("records")}
    assert found == {("muon", "adamw"): True, ("adamw", "lion"): False, ("muon", "lion"): True}
    rows = _by_optimizer(result.table)
    assert rows["muon"]["p_below_baseline"] == pytest.approx(
        stats.ttest_ind(FINALS["muon"], FINALS["adamw"], equal_var=False, alternative="less").pvalue)
    assert math.isnan(rows["adamw"]["p_below_baseline"])


# ----------------------------------------------------------------------------- (b) seeds needed


@pytest.mark.parametrize("effect, published", [(0.2, 310), (0.5, 51), (0.8, 21)])
def test_seeds_needed_matches_published_sample_sizes(effect, published):
    """Cohen's / G*Power's n per group, one-tailed two-sample t-test, alpha 0.05, power 0.8."""
    a = np.array([-1.0, 0.0, 1.0])  # sd 1
    assert statistics.seeds_needed(a, a + effect) == published
    assert statistics.seeds_needed(a + effect, a) == published


def test_seeds_needed_has_power_by_simulation(result):
    """Simulate the measured gap and spread: n seeds resolve it with probability >= 0.8, n - 1 do not."""
    rng = np.random.default_rng(0)
    a, b = np.array(FINALS["adamw"]), np.array(FINALS["lion"])
    n = statistics.seeds_needed(a, b)
    row = result.pairs.set_index(["better", "worse"]).loc[("adamw", "lion")]
    assert row["seeds_needed"] == n
    gap, sd = b.mean() - a.mean(), math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    normal = 2 * ((stats.norm.ppf(0.95) + stats.norm.ppf(0.8)) * sd / gap) ** 2
    assert math.ceil(normal) <= n <= math.ceil(normal) + 2

    def power(k, sims=40_000):
        x = rng.normal(0.0, sd, (sims, k))
        y = rng.normal(gap, sd, (sims, k))
        pooled = np.sqrt((x.var(axis=1, ddof=1) + y.var(axis=1, ddof=1)) / 2 * (2 / k))
        t = (x.mean(axis=1) - y.mean(axis=1)) / pooled
        return float(np.mean(stats.t.cdf(t, 2 * k - 2) < 0.05))

    assert power(int(n)) >= 0.79
    assert power(int(n) - 1) < 0.81


def test_seeds_needed_edge_cases():
    assert math.isnan(statistics.seeds_needed([2.4], [2.5, 2.6]))
    assert math.isinf(statistics.seeds_needed([2.4, 2.5], [2.5, 2.4]))
    assert statistics.seeds_needed([2.4, 2.4], [2.5, 2.5]) == 2


# ----------------------------------------------------------------------------- (c) tuning burden


def _expected_burden(tuning):
    losses = [loss for _, loss, _ in tuning]
    best = min(x for x in losses if x is not None)
    return next(i + 1 for i, x in enumerate(losses) if x is not None and x <= best * 1.01), best


def test_tuning_burden_counts_trials_in_trial_order(result):
    burden = _by_optimizer(result.burden)
    trials, best = _expected_burden(ADAMW_TUNING)
    assert (trials, best) == (4, 2.49)  # 2.505 is the first within 1% of 2.49, at the 4th trial
    assert burden["adamw"]["trials_to_1pct"] == trials
    assert burden["adamw"]["best_tune_loss"] == pytest.approx(best)
    assert burden["adamw"]["tune_trials"] == len(ADAMW_TUNING)
    assert burden["muon"]["trials_to_1pct"] == _expected_burden(MUON_TUNING)[0] == 1
    assert "lion" not in burden  # no tuning runs
    rows = _by_optimizer(result.table)
    assert rows["adamw"]["tune_trials_to_1pct"] == 4 and math.isnan(rows["lion"]["tune_trials_to_1pct"])


def test_recorded_trial_numbers_win_over_start_times(tmp_path):
    bench = load_bench(build(tmp_path / "out", trial_numbers=True))
    result = scenario_result(bench, bench.suite.scenarios[0])
    assert _by_optimizer(result.burden)["adamw"]["trials_to_1pct"] == 4


# ----------------------------------------------------------------------------- (d) neighbours


def test_neighbours_one_grid_step_either_side(result):
    table = result.neighbours.set_index(["optimizer", "hparam"])
    lr, beta2 = table.loc[("adamw", "lr")], table.loc[("adamw", "beta2")]
    # adamw's registry grid: lr 1e-4, 3.16e-4, 1e-3, 3.16e-3, 1e-2; beta2 0.95, 0.98, 0.99, 0.999
    assert lr["loss_at_best"] == pytest.approx(2.49)
    assert (lr["below_value"], lr["below_loss"]) == (pytest.approx(3.16e-4), pytest.approx(2.55))
    assert (lr["above_value"], lr["above_note"]) == (pytest.approx(3.16e-3), "diverged")
    assert (beta2["below_value"], beta2["below_loss"]) == (pytest.approx(0.95), pytest.approx(2.505))
    assert (beta2["above_value"], beta2["above_note"]) == (pytest.approx(0.99), "not run")
    muon = table.loc[("muon", "lr")]  # 0.0949 is muon's top lr grid point
    assert (muon["below_value"], muon["below_loss"]) == (pytest.approx(0.03), pytest.approx(2.47))
    assert muon["above_note"] == "edge of grid"
    assert table.loc[("muon", "momentum")]["below_note"] == "not run"


# ----------------------------------------------------------------------------- rendering


def test_statistics_render_in_markdown_html_and_csv(bench_out, tmp_path):
    paths = write_report(bench_out, tmp_path / "report")
    md = paths["markdown"].read_text()
    section = md[md.index("### Statistics: `t`"):md.index("## Performance profile")]
    assert re.search(r"\| muon +\| 2\.4133 ± 0\.0153 \(n=3\) +\| -\d+\.\d\d +\| 0\.\d{4} +\| pass", section)
    assert re.search(r"\| adamw +\| lion +\| 0\.\d{4} .*\| no ", section)
    assert "| adamw       | 6               | 2.4900             | 4 " in section
    assert "0.000316: 2.5500" in section and "0.00316: diverged" in section and "0.99: not run" in section
    assert "edge of grid" in section and "repeated tuning studies" not in section  # one study: no such table
    page = paths["html"].read_text()
    for key in ("target", "pairs", "burden", "neighbours"):
        assert f'class="stats-{key}" data-scenario="t"' in page
    assert not re.search(r'(src|href)="(https?:|//)', page)
    board = pd.read_csv(paths["leaderboard_csv"]).set_index("optimizer")
    assert board.loc["muon", "below_target"] and not board.loc["lion", "below_target"]
    assert board.loc["adamw", "tune_trials_to_1pct"] == 4


# ----------------------------------------------------------------------------- (c) repeated studies


def test_repeated_studies_score_the_median_of_each_studys_best(tmp_path):
    out = tmp_path / "out"
    write_suite(out, [{"name": "s"}], ["adamw"], seeds=(0,))
    spec = OmegaConf.load(layout.suite_file(out))
    spec.tuning.studies = 3
    layout.suite_file(out).write_text(OmegaConf.to_yaml(spec))
    studies = {0: [(1e-3, 2.50), (1e-2, 2.60)], 1: [(1e-3, 2.70), (1e-2, 2.40)], 2: [(1e-3, None), (1e-2, 2.55)]}
    for study, trials in studies.items():
        for lr, loss in trials:
            final = (study, lr) == (0, 1e-3)  # the final run at the tuning seed is this trial's own run
            run = write_run(out, "s", "adamw", study, {"lr": lr}, [3.0, loss or 9.0],
                            phases=("tune", "final") if final else ("tune",), status="completed" if loss else "diverged")
            trial = json.loads(layout.trial_file(run).read_text())
            layout.trial_file(run).write_text(json.dumps({**trial, "study": study}))
    bench = load_bench(out)
    result = scenario_result(bench, bench.suite.scenario("s"))
    row = result.studies.set_index("optimizer").loc["adamw"]
    assert row["bests"] == [2.50, 2.40, 2.55] and row["median_best"] == 2.50
    assert row["spread"] == pytest.approx(0.15)
    assert row["chosen"] == [{"lr": 1e-3}, {"lr": 1e-2}, {"lr": 1e-2}]
    assert row["median_trials_to_1pct"] == 2  # study 0: 1st trial; 1: 2nd; 2: 2nd (the diverged one counts)
    assert len(result.burden) == 1 and result.burden.iloc[0]["tune_trials"] == 2  # burden stays study 0's
    md = write_report(out, tmp_path / "report")["markdown"].read_text()
    assert "AlgoPerf's repeated tuning studies" in md
    assert re.search(r"\| adamw +\| 3 +\| 2\.5000 +\| 0\.1500 +\| 2\.5000, 2\.4000, 2\.5500 +\| lr=0\.001; lr=0\.01; lr=0\.01", md)
