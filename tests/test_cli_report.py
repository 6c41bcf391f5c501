"""`optbench report` from the command line: a results folder (or a suite's name) in, the report's files out;
a bad argument is one line on stderr, exit code 2, no traceback and nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from optbench.bench import layout
from optbench.cli import main
from tests.report.synthetic import curve, write_run, write_suite

REPORT_FILES = ["leaderboard.csv", "report.html", "report.md", "runs.csv"]


def small_bench(out: Path) -> Path:
    """One scenario; adamw on the baseline law and muon worth twice the tokens, two final seeds each."""
    write_suite(out, [{"name": "s", "target_loss": 2.5}], ["adamw", "muon"], seeds=(0, 1))
    for name, scale in (("adamw", 1.0), ("muon", 2.0)):
        for seed in (0, 1):
            write_run(out, "s", name, seed, {"lr": 1e-3}, curve(scale, 0.001 * (2 * seed - 1)),
                      phases=("tune", "final") if seed == 0 else ("final",))
    return out


def snapshot(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_report_of_a_results_folder(tmp_path, capsys):
    out = small_bench(tmp_path / "out")
    assert main(["report", str(out)]) == 0
    report = layout.report_dir(out)
    printed = capsys.readouterr()
    assert printed.err == ""
    assert printed.out == (f"report written to {report / 'report.html'}, {report / 'report.md'} and "
                           f"{report / 'leaderboard.csv'}\n")
    assert sorted(p.name for p in report.iterdir() if p.is_file()) == REPORT_FILES
    assert sorted(p.name for p in (report / "plots").glob("*.png")) == ["loss-s.png", "lr-s.png", "profile.png",
                                                                       "time-s.png"]  # no dynamics recorded
    board = pd.read_csv(report / "leaderboard.csv")
    assert board["optimizer"].tolist() == ["muon", "adamw"] and board["n_final"].tolist() == [2, 2]
    assert board["speedup"].round(2).tolist() == [2.0, 1.0]


def test_report_out_elsewhere_leaves_the_results_folder_alone(tmp_path, capsys):
    out = small_bench(tmp_path / "out")
    before = snapshot(out)
    assert main(["report", str(out), "--out", str(tmp_path / "elsewhere")]) == 0
    assert f"report written to {tmp_path / 'elsewhere' / 'report.html'}" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir() if p.is_file()) == REPORT_FILES
    assert snapshot(out) == before


def test_report_by_suite_name_reads_bench_slash_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    small_bench(tmp_path / "bench" / "tiny")  # `optbench bench tiny` writes here by default
    assert main(["report", "tiny"]) == 0
    assert (tmp_path / "bench" / "tiny" / "report" / "report.html").is_file()
    assert "report written to bench/tiny/report/report.html" in capsys.readouterr().out


def test_report_by_the_name_of_a_users_own_suite(tmp_path, monkeypatch, capsys):
    """`optbench bench mine.yaml` writes bench/mine; `optbench report mine` finds it (README's walk-through)."""
    monkeypatch.chdir(tmp_path)
    small_bench(tmp_path / "bench" / "mine")
    assert main(["report", "mine"]) == 0
    assert "report written to bench/mine/report/report.html" in capsys.readouterr().out


@pytest.mark.parametrize("args, needle", [
    ([], "the following arguments are required: source"),
    (["{out}", "--bogus"], "unrecognized arguments: --bogus"),
    (["no-such-suite"], "unknown suite 'no-such-suite'"),
    (["tiny"], "no results for suite 'tiny' in bench/tiny"),
    (["{tmp}/gone"], "no results folder at {tmp}/gone; give a results folder"),
    (["{empty}"], "is not a bench output folder: {empty}/suite.yaml is missing"),
    (["{no_runs}"], "no runs in {no_runs}/runs"),
], ids=["no-source", "unknown-flag", "unknown-suite", "suite-without-results", "missing-folder",
        "not-a-results-folder", "no-runs"])
def test_bad_argument_is_one_line_exit_2_and_writes_nothing(tmp_path, monkeypatch, capsys, args, needle):
    monkeypatch.chdir(tmp_path)
    folders = {"out": small_bench(tmp_path / "out"), "empty": tmp_path / "empty", "no_runs": tmp_path / "no-runs",
               "tmp": tmp_path}
    folders["empty"].mkdir()
    write_suite(folders["no_runs"], [{"name": "s"}], ["adamw"])
    before = snapshot(tmp_path)
    assert main(["report", *(a.format(**folders) for a in args)]) == 2
    printed = capsys.readouterr()
    assert printed.out == ""
    assert printed.err.startswith("optbench: error: ") and printed.err.count("\n") == 1
    assert needle.format(**folders) in printed.err
    assert snapshot(tmp_path) == before and not list(tmp_path.rglob("report"))


@pytest.mark.xdist_group("processes")
def test_bad_argument_through_the_real_entry_point(tmp_path):
    """The shell's view: exit status 2 and one stderr line from `python -m optbench report`."""
    result = subprocess.run([sys.executable, "-m", "optbench", "report", "nothing-here"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("optbench: error: unknown suite 'nothing-here'; valid: ")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stdout == "" and list(tmp_path.iterdir()) == []
