"""write_report end to end: the files, their columns, the HTML's shape, and damaged bench folders."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from optbench.bench import layout
from optbench.errors import UserError
from optbench.report import write_report
from tests.report.synthetic import curve, power_law_bench, write_run, write_suite

LEADERBOARD_COLUMNS = ["scenario", "rank", "optimizer", "n_final", "final_loss_mean", "final_loss_std", "final_ppl", "hparams", "at_grid_edge",
                       "tokens", "speedup", "steps_to_target", "wall_s_to_target", "step_time_s",
                       "step_time_ratio", "state_bytes_per_param", "state_ratio", "peak_mem_bytes", "p_value",
                       "tune_trials", "diverged", "pruned", "failed", "incomplete", "t_vs_target", "p_below_target",
                       "below_target", "p_below_baseline", "seeds_vs_baseline", "tune_trials_to_1pct"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = power_law_bench(tmp_path_factory.mktemp("bench") / "out")
    return out, write_report(out)


def test_every_output_is_written_in_the_default_folder(report):
    out, paths = report
    assert set(paths) == {"markdown", "html", "leaderboard_csv", "runs_csv", "plots"}
    assert all(p.parent == layout.report_dir(out) for p in paths.values())
    assert sorted(p.name for p in paths["plots"].glob("*.png")) == ["loss-s.png", "lr-s.png", "profile.png", "time-s.png",
                                                                        "update-rms-s.png"]
    assert all(p.stat().st_size > 5_000 for p in paths["plots"].glob("*.png"))


def test_leaderboard_csv(report):
    board = pd.read_csv(report[1]["leaderboard_csv"])
    assert list(board.columns) == LEADERBOARD_COLUMNS
    assert board["optimizer"].tolist() == ["muon", "adamw", "lion"]
    assert board["speedup"].round(3).tolist() == [2.0, 1.0, 0.5]


def test_runs_csv_has_every_run_with_flat_hyperparameters(report):
    out, paths = report
    runs = pd.read_csv(paths["runs_csv"])
    assert len(runs) == len(list(layout.runs_dir(out).glob("*/*/*/trial.json"))) == 18
    assert list(runs.columns) == ["scenario", "optimizer", "phases", "seed", "hp_beta2", "hp_lr", "hp_momentum",
                                  "status", "final_val_loss", "tokens", "wall_s", "run_dir"]
    assert runs["status"].value_counts().to_dict() == {"completed": 15, "diverged": 1, "pruned": 1, "missing": 1}
    assert set(runs["phases"]) == {"tune", "final", "tune+final"}


def test_html_is_self_contained_with_one_row_per_optimizer(report):
    page = report[1]["html"].read_text()
    assert not re.search(r'(src|href)="(https?:|//)', page)
    assert page.count('src="data:image/png;base64,') == 5
    board = re.search(r'<table class="leaderboard" data-scenario="s">.*?<tbody>(.*?)</tbody>', page, re.DOTALL)
    assert board.group(1).count("<tr>") == 3
    assert "E = 2, A = 50, α = 0.3" in page
    assert 'class="pairwise"' in page and "abc123" in page


def test_markdown_references_the_plots(report):
    text = report[1]["markdown"].read_text()
    assert "](plots/loss-s.png)" in text and "](plots/lr-s.png)" in text and "](plots/profile.png)" in text
    assert "| muon" in text and "2.00×" in text and "Without final runs: sgd." in text


def test_report_dir_can_be_elsewhere(tmp_path):
    out = power_law_bench(tmp_path / "out")
    paths = write_report(out, tmp_path / "elsewhere")
    assert paths["html"] == tmp_path / "elsewhere" / "report.html" and paths["html"].is_file()
    assert not layout.report_dir(out).exists()


def test_a_folder_without_suite_or_runs_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="suite.yaml is missing"):
        write_report(tmp_path)
    write_suite(tmp_path, [{"name": "s"}], ["adamw"])
    with pytest.raises(UserError, match="no runs in"):
        write_report(tmp_path)


def test_crashed_and_failed_runs_are_counted_not_fatal(tmp_path):
    out = tmp_path / "out"
    write_suite(out, [{"name": "s", "target_loss": 2.5}, {"name": "empty"}], ["adamw", "muon"])
    for seed in (0, 1, 2):
        write_run(out, "s", "adamw", seed, {"lr": 1e-3}, curve(1.0, 0.001 * seed))
    write_run(out, "s", "muon", 0, {"lr": 0.02}, curve(2.0), status="failed")
    crashed = write_run(out, "s", "muon", 1, {"lr": 0.02}, curve(2.0), summary=False)
    with (crashed / "metrics.jsonl").open("a") as f:
        f.write('{"val_loss": 2.3, "step"')   # a line torn by the kill
    write_run(out, "s", "muon", 2, {"lr": 0.02}, [], summary=False, metrics=False)
    write_run(out, "s", "muon", 0, {"lr": 0.2}, curve(2.0)[:2], phases=("tune",), status="failed")
    (layout.run_dir(out, "s", "muon", "broken") / "trial.json").parent.mkdir(parents=True)
    (layout.run_dir(out, "s", "muon", "broken") / "trial.json").write_text("{not json")

    paths = write_report(out)
    board = pd.read_csv(paths["leaderboard_csv"])
    muon = board[board["optimizer"] == "muon"].iloc[0]
    assert (muon["n_final"], muon["failed"], muon["tune_trials"]) == (0, 1, 1)
    assert board["optimizer"].tolist() == ["adamw", "muon"]
    runs = pd.read_csv(paths["runs_csv"])
    assert runs["status"].value_counts().to_dict() == {"completed": 3, "missing": 2, "failed": 2}
    page = paths["html"].read_text()
    assert "broken: unreadable trial.json" in page
    assert "No optimizer has final runs in this scenario." in page


def test_scenario_names_become_safe_file_names(tmp_path):
    out = tmp_path / "out"
    write_suite(out, [{"name": "a b:c"}], ["adamw"], seeds=[0])
    write_run(out, "a b:c", "adamw", 0, {"lr": 1e-3}, curve(1.0), phases=("tune", "final"))
    paths = write_report(out)
    assert (paths["plots"] / "loss-a_b_c.png").is_file()
    assert json.loads(pd.read_csv(paths["leaderboard_csv"])["hparams"][0]) == {"lr": 1e-3}


def test_runs_of_another_suite_only_are_a_user_error(tmp_path):
    write_suite(tmp_path, [{"name": "s"}], ["adamw"])
    write_run(tmp_path, "gone", "adamw", 0, {"lr": 1e-3}, curve(1.0))
    with pytest.raises(UserError, match="gone/adamw is not in suite synthetic"):
        write_report(tmp_path)
