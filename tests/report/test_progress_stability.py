"""The report's loss-at-k-steps table, loss against time, perplexity and stability, on synthetic benches whose
every number is known (tests/report/synthetic.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from optbench.report import progress, stability, tables, write_report
from optbench.report.leaderboard import scenario_result
from optbench.report.load import load_bench
from tests.report.synthetic import (GRAD_SPIKES, LOSS_SPIKES, MAX_ATTN_LOGIT, NOISE, SCALE, STEP_TIME,
                                    TOKENS_PER_STEP, curve, law, power_law_bench, update_rms, write_run, write_suite)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return load_bench(power_law_bench(tmp_path_factory.mktemp("bench") / "out"))


def test_steps_are_spread_over_the_shared_evaluations_ending_at_the_last():
    assert progress.spread(list(range(1, 11))) == [1, 3, 5, 6, 8, 10]
    assert progress.spread([2, 4, 6]) == [2, 4, 6]
    assert progress.spread(list(range(100)), most=2) == [0, 99]


def test_loss_at_steps_is_the_mean_and_sd_over_seeds(bench):
    table = progress.loss_at_steps(bench, bench.suite.scenario("s")).set_index("optimizer")
    assert list(table.index) == ["adamw", "muon", "lion"]  # suite order; sgd has no final runs
    assert [c for c in table.columns if c.startswith("loss@")] == [f"loss@{k}" for k in (1, 3, 5, 6, 8, 10)]
    for name in table.index:
        for k in (1, 3, 5, 6, 8, 10):
            assert table.loc[name, f"loss@{k}"] == pytest.approx(law(SCALE[name] * k * TOKENS_PER_STEP), abs=1e-12)
            assert table.loc[name, f"sd@{k}"] == pytest.approx(np.std(NOISE, ddof=1), abs=1e-12)
    shown = tables.display_loss_at_steps(progress.loss_at_steps(bench, bench.suite.scenario("s")))
    assert shown.iloc[0]["step 10"] == f"{law(10 * TOKENS_PER_STEP):.4f} ± 0.0020"
    assert list(shown.columns) == ["optimizer", "seeds", *[f"step {k}" for k in (1, 3, 5, 6, 8, 10)]]


def test_loss_at_steps_uses_only_steps_every_final_run_reached(tmp_path):
    write_suite(tmp_path, [{"name": "s"}], ["adamw", "lion"])
    write_run(tmp_path, "s", "adamw", 0, {"lr": 1e-3}, curve(1.0))
    write_run(tmp_path, "s", "lion", 0, {"lr": 1e-4}, curve(1.0)[:4])  # completed after 4 evaluations
    table = progress.loss_at_steps(load_bench(tmp_path), load_bench(tmp_path).suite.scenario("s"))
    assert [c for c in table.columns if c.startswith("loss@")] == ["loss@1", "loss@2", "loss@3", "loss@4"]
    assert math.isnan(table.set_index("optimizer").loc["lion", "sd@4"])  # one seed: no sd


def test_loss_against_time_pairs_each_shared_step_with_the_seeds_mean_time(bench):
    runs = progress.finals_by_optimizer(bench, bench.suite.scenario("s"))["muon"]
    frame = progress.loss_against_time(runs)
    assert frame["step"].tolist() == list(range(1, 11))
    assert frame["seconds"].tolist() == pytest.approx([k * STEP_TIME["muon"] for k in range(1, 11)], abs=1e-9)
    assert frame["mean"].tolist() == pytest.approx([law(2 * k * TOKENS_PER_STEP) for k in range(1, 11)], abs=1e-12)
    assert (frame["max"] - frame["min"]).tolist() == pytest.approx([NOISE[2] - NOISE[0]] * 10, abs=1e-12)


def test_leaderboard_perplexity_is_the_exponential_of_the_mean_final_loss(bench):
    table = scenario_result(bench, bench.suite.scenario("s")).table.set_index("optimizer")
    for name in ("adamw", "muon", "lion"):
        assert table.loc[name, "final_ppl"] == pytest.approx(math.exp(law(SCALE[name] * 10 * TOKENS_PER_STEP)),
                                                             rel=1e-12)


def test_stability_table_counts_spikes_divergence_and_the_largest_logit(bench):
    table = stability.stability_table(bench, bench.suite.scenario("s")).set_index("optimizer")
    assert list(table.index) == ["adamw", "muon", "lion", "sgd"]
    for name in ("adamw", "muon", "lion"):
        assert table.loc[name, "loss_spikes_per_run"] == pytest.approx(np.mean(LOSS_SPIKES[name]))
        assert table.loc[name, "grad_spikes_per_run"] == pytest.approx(np.mean(GRAD_SPIKES[name]))
        assert table.loc[name, "max_attn_logit"] == max(MAX_ATTN_LOGIT[name])
    # muon: 3 tuning runs (seed 0's final one among them), the lr x10 one diverged
    assert (table.loc["muon", "tune_diverged"], table.loc["muon", "tune_ended"]) == (1, 3)
    # lion: 3 completed and 1 pruned ended; the run without summary.json (its worker died) is not counted
    assert (table.loc["lion", "tune_diverged"], table.loc["lion", "tune_ended"]) == (0, 4)
    assert math.isnan(table.loc["sgd", "loss_spikes_per_run"]) and table.loc["sgd", "n_final"] == 0
    shown = tables.display_stability(stability.stability_table(bench, bench.suite.scenario("s"))).set_index("optimizer")
    assert shown.loc["muon", "tuning divergence"] == "33% (1/3)"
    assert shown.loc["sgd", "max attention logit"] == "—"


def test_runs_without_stability_fields_show_unknown_not_zero(tmp_path):
    write_suite(tmp_path, [{"name": "s"}], ["adamw"])
    write_run(tmp_path, "s", "adamw", 0, {"lr": 1e-3}, curve(1.0))
    bench = load_bench(tmp_path)
    row = stability.stability_table(bench, bench.suite.scenario("s")).iloc[0]
    assert math.isnan(row["loss_spikes_per_run"]) and math.isnan(row["max_attn_logit"])


def test_update_rms_per_block_is_the_median_over_the_blocks_parameters(bench):
    run = stability.dynamics_run(bench, bench.suite.scenario("s"), "muon")
    assert run.seed == 0
    table = stability.update_rms_by_layer(run)
    assert list(table.index) == [5, 10] and list(table.columns) == [0, 1]  # the embedding belongs to no block
    for step in (5, 10):
        for layer in (0, 1):
            expected = update_rms("muon", 0, step, layer, "mlp")  # the median of its block's three
            assert table.loc[step, layer] == pytest.approx(expected, rel=1e-12)
    assert stability.dynamics_run(bench, bench.suite.scenario("s"), "lion") is None
    assert [stability.layer_of(n) for n in ("model.layers.12.mlp.w1", "transformer.wte.weight")] == [12, None]


def test_the_report_shows_the_tables_and_figures(tmp_path):
    paths = write_report(power_law_bench(tmp_path / "out"))
    text = paths["markdown"].read_text()
    assert "### Loss at k steps: `s`" in text and "### Stability: `s`" in text
    assert "](plots/time-s.png)" in text and "](plots/update-rms-s.png)" in text
    assert "val perplexity" in text and f"{math.exp(law(2 * 10 * TOKENS_PER_STEP)):.4g}" in text
    assert "33% (1/3)" in text
