"""`optbench compare RUN_DIR ...`: two tiny real runs (adamw against lion) compared; the table holds what their
summary.json and metrics.jsonl say, the pages name the config keys they differ in, the HTML renders in
Chromium, a run that stopped early is shown with its status, and bad input is one line with exit code 2."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

import optbench
from optbench.compare.hparams import non_default_hparams
from optbench.compare.rundirs import short_labels
from optbench.compare.target import to_target
from optbench.report.load import Run
from tests.conftest import tiny_run, write_corpus
from tests.report import browser
from tests.required import missing

QUICK = ["train.steps=20", "eval.every=5", "eval.sample_tokens=0", "train.threads=1"]
"""tiny_run shorter and evaluated more often, without samples (the comparison needs curves, not text), on one
thread: a 32-wide model gains nothing from a second, and on a busy machine threads that wait on each other
made each run ten times slower."""
LION = ["optim=lion", "optim.lr=0.1", "train.seed=3", "schedule.final_lr_frac=1.0"]
"""The second run: another optimizer, and two keys outside optim.* that make the comparison uncontrolled. At this
constant lr lion passes adamw's final loss between two evals and ends above it (here; the test computes whichever
way it goes from the metrics)."""


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """adamw and lion trained once for the module; `stopped` is adamw's run as SIGTERM would have left it
    after step 10 (status interrupted, metrics up to that eval)."""
    root = tmp_path_factory.mktemp("compare-runs")
    corpus = write_corpus(root)
    optbench.train([*tiny_run(root / "adamw", corpus), *QUICK])
    optbench.train([*tiny_run(root / "lion", corpus), *QUICK, *LION])
    stopped = shutil.copytree(root / "adamw" / "run", root / "stopped" / "run")
    lines = [line for line in _metrics(stopped) if line["step"] <= 10]
    (stopped / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    summary = json.loads((stopped / "summary.json").read_text())
    final = [line["val_loss"] for line in lines if "val_loss" in line][-1]
    summary.update(status="interrupted", signal="SIGTERM", steps=10, final_val_loss=final)
    (stopped / "summary.json").write_text(json.dumps(summary))
    return {name: root / name / "run" for name in ("adamw", "lion", "stopped")}


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _by_hand(run_dir: Path, target: float) -> float:
    """Steps to `target`: the first eval at or below it, linearly back towards the eval before."""
    evals = [line for line in _metrics(run_dir) if "val_loss" in line]
    for before, after in zip(evals, evals[1:]):
        if after["val_loss"] <= target < before["val_loss"]:
            fraction = (before["val_loss"] - target) / (before["val_loss"] - after["val_loss"])
            return before["step"] + fraction * (after["step"] - before["step"])
    return math.inf


def test_table_holds_what_the_runs_recorded(runs, cli, tmp_path):
    result = cli("compare", str(runs["adamw"]), str(runs["lion"]))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "comparison written to compare/compare.html and compare/compare.md\n"
    out = tmp_path / "compare"
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["loss-steps.png", "loss-time.png", "loss-tokens.png"]
    table = pd.read_csv(out / "compare.csv").set_index("run")
    assert table.index.tolist() == ["adamw/run", "lion/run"]
    assert table["optimizer"].tolist() == ["adamw", "lion"]
    assert table["hyperparameters"].tolist() == ["defaults", "lr=0.1"]
    for label, run_dir in (("adamw/run", runs["adamw"]), ("lion/run", runs["lion"])):
        summary = _summary(run_dir)
        for key in ("final_val_loss", "best_val_loss", "tokens_per_s", "step_time_s", "optim_state_bytes", "wall_s"):
            assert table.loc[label, key] == pytest.approx(summary[key], rel=1e-12), key
    target, best = min((_summary(runs[name])["final_val_loss"], f"{name}/run") for name in ("adamw", "lion"))
    markdown = (out / "compare.md").read_text()
    assert f"the best run's final val loss, {target:.4f} (`{best}`)" in markdown
    for name in ("adamw", "lion"):
        steps = _by_hand(runs[name], target)
        assert table.loc[f"{name}/run", "steps_to_target"] == pytest.approx(steps)
        assert table.loc[f"{name}/run", "tokens_to_target"] == pytest.approx(steps * 4 * 32)  # batch 4 x 32 tokens
        row = next(line for line in markdown.splitlines() if line.startswith(f"| {name}/run"))
        assert f"| {_summary(runs[name])['final_val_loss']:.4f} " in row
        shown = f"{steps:,.0f}" if steps >= 100 else f"{steps:.3g}"
        assert row.count("not reached") == 2 if math.isinf(steps) else f"| {shown} " in row
    assert markdown.count("](plots/loss-") == 3


def _differing_rows(markdown: str) -> list[list[str]]:
    """The cells of the differing keys' table, which comes right after the "Not a controlled" line."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("**Not a controlled comparison**"))
    rows = []
    for line in lines[start + 4:]:  # the blank line, the header and its rule come first
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_the_keys_the_runs_differ_in_head_both_pages(runs, cli, tmp_path):
    assert cli("compare", str(runs["adamw"]), str(runs["lion"]), "--out", "pages").returncode == 0
    markdown = (tmp_path / "pages" / "compare.md").read_text()
    assert "the runs differ outside the optimizer in 2 config keys:" in markdown
    assert _differing_rows(markdown) == [["schedule.final_lr_frac", "0.1", "1.0"], ["train.seed", "1337", "3"]]
    page = (tmp_path / "pages" / "compare.html").read_text()
    assert page.index("Not a controlled comparison") < page.index("<h2>Runs</h2>")
    assert "<td>schedule.final_lr_frac</td><td>0.1</td><td>1.0</td>" in page
    assert "<td>train.seed</td><td>1337</td><td>3</td>" in page


def test_a_stopped_run_is_shown_with_its_status(runs, cli, tmp_path):
    """The interrupted copy of the adamw run differs from it in nothing but where it was written."""
    result = cli("compare", str(runs["adamw"]), str(runs["stopped"]))
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(tmp_path / "compare" / "compare.csv")
    assert table["status"].tolist() == ["completed", "interrupted"]
    assert table["steps_to_target"].tolist() == [20, math.inf]
    markdown = (tmp_path / "compare" / "compare.md").read_text()
    assert "differ only in the optimizer: a controlled comparison" in markdown
    assert "Not a controlled" not in markdown
    assert "| interrupted " in next(line for line in markdown.splitlines() if line.startswith("| stopped/run"))


def test_the_page_renders_in_chromium_with_its_figures(runs, cli, tmp_path):
    if browser.chromium() is None:
        missing("chromium is not installed (Debian: apt-get install chromium)")
    assert cli("compare", str(runs["adamw"]), str(runs["lion"]), str(runs["stopped"])).returncode == 0
    page = tmp_path / "compare" / "compare.html"
    linked = re.findall(r'(?:src|href)="([^"]*)"', page.read_text())
    assert len(linked) == 3 and all(url.startswith("data:image/png;base64,") for url in linked)
    verdict = browser.check(page)
    assert verdict["loaded"] is True
    assert [img["alt"] for img in verdict["images"]] == [
        "train and val loss against steps", "train and val loss against tokens",
        "train and val loss against wall-clock (s)"]
    assert all(img["ok"] and img["width"] > 500 for img in verdict["images"])
    assert verdict["leaderboards"] == {"compare": 3}


@pytest.mark.parametrize("args, needle", [
    ([], "the following arguments are required: RUN_DIR"),
    (["{adamw}"], "compare needs at least 2 run directories, got 1: {adamw}"),
    (["{adamw}", "{tmp}/gone"], "{tmp}/gone is not a run directory: no such folder"),
    (["{adamw}", "{empty}"], "{empty} is not a run directory: no config.yaml or summary.json; give folders"),
    (["{adamw}", "{half}"], "{half} is not a run directory: no summary.json;"),
    (["{adamw}", "{torn}"], "{torn}/summary.json is not readable: "),
    (["{adamw}", "{adamw}/../run"], "{adamw}/../run is the same run directory as {adamw}; compare needs"),
    (["{adamw}", "{lion}", "--out", "{tmp}/file"], "--out {tmp}/file is a file"),
], ids=["none", "one", "missing", "empty-folder", "no-summary", "torn-summary", "twice", "out-is-a-file"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(runs, cli, tmp_path, args, needle):
    folders = {"adamw": runs["adamw"], "lion": runs["lion"], "tmp": tmp_path, "empty": tmp_path / "empty",
               "half": tmp_path / "half", "torn": tmp_path / "torn"}
    folders["empty"].mkdir()
    shutil.copytree(runs["adamw"], folders["half"], ignore=shutil.ignore_patterns("summary.json", "checkpoints"))
    shutil.copytree(runs["adamw"], folders["torn"], ignore=shutil.ignore_patterns("checkpoints"))
    (folders["torn"] / "summary.json").write_text('{"status": "compl')
    (tmp_path / "file").write_text("")
    before = sorted(tmp_path.rglob("*"))
    result = cli("compare", *(a.format(**folders) for a in args))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("optbench: error: ") and result.stderr.count("\n") == 1
    assert needle.format(**folders) in result.stderr
    assert sorted(tmp_path.rglob("*")) == before


def test_steps_to_target_interpolate_between_evals():
    evals = [{"step": 0, "tokens": 0, "val_loss": 5.0}, {"step": 20, "tokens": 2000, "val_loss": 4.0},
             {"step": 10, "tokens": 1000, "val_loss": 4.5}, {"step": 30, "tokens": 3000, "val_loss": math.nan}]
    run = Run(path=Path("r"), scenario="", optimizer="adamw", hparams={}, seed=0, phases=(), evals=evals)
    assert to_target(run, 4.2) == (pytest.approx(16.0), pytest.approx(1600.0))  # 0.3/0.5 of the way from 10
    assert to_target(run, 6.0) == (0.0, 0.0)  # already there at the first eval
    assert to_target(run, 3.9) == (math.inf, math.inf)


def test_hyperparameters_are_those_off_the_registry_defaults():
    assert non_default_hparams({"name": "adamw", "lr": 0.001, "weight_decay": 0.1, "beta2": 0.99}) == {"beta2": 0.99}
    muon = {"name": "muon", "lr": 0.02, "backup": {"name": "adamw", "lr": 0.01, "weight_decay": 0.0}}
    assert non_default_hparams(muon) == {"backup.lr": 0.01}
    assert non_default_hparams({"name": "gone", "lr": 1.0}) == {"lr": 1.0}


def test_run_labels_are_the_shortest_distinct_path_endings():
    assert short_labels([Path("/x/a/run"), Path("/x/b/run")]) == ["a/run", "b/run"]
    assert short_labels([Path("/x/run-1"), Path("/y/run-2")]) == ["run-1", "run-2"]
    assert short_labels([Path("/x/run"), Path("/y/x/run")]) == ["/x/run", "y/x/run"]
