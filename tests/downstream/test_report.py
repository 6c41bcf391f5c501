"""The bench report's downstream columns: per optimizer, each task metric of its completed final runs'
downstream.json, averaged over those runs; tuning-only runs do not count, and a bench without the files keeps
its leaderboard as it was."""

from __future__ import annotations

import json
import re
from pathlib import Path

from optbench.bench import layout
from optbench.bench.suite import run_key
from optbench.report import write_report
from tests.report.synthetic import FINAL_HP, power_law_bench


def write_downstream(out: Path, optimizer: str, seed: int, acc: float, hparams: dict | None = None) -> None:
    run = layout.run_dir(out, "s", optimizer, run_key(hparams or FINAL_HP[optimizer], seed))
    entry = {"metrics": {"acc": acc, "acc_norm": acc + 0.1}, "stderr": {"acc": 0.01, "acc_norm": 0.01},
             "n_samples": 100}
    (run / "downstream.json").write_text(json.dumps({"lm_eval_version": "0.4.13", "tasks": {"hellaswag": entry}}))


def test_final_runs_downstream_metrics_are_averaged_over_seeds(tmp_path):
    out = power_law_bench(tmp_path / "out")
    for seed, acc in enumerate((0.25, 0.30, 0.35)):
        write_downstream(out, "adamw", seed, acc)
    write_downstream(out, "muon", 0, 0.40)
    write_downstream(out, "muon", 2, 0.50)
    write_downstream(out, "adamw", 0, 0.99, {**FINAL_HP["adamw"], "lr": 1e-4})  # a tuning run: not on the board
    paths = write_report(out)
    markdown = paths["markdown"].read_text()
    table = [[cell.strip() for cell in line.strip(" |").split("|")] for line in markdown.splitlines()
             if line.startswith("|")]
    header = next(cells for cells in table if "optimizer" in cells)
    assert header[-3:] == ["tuning trials", "hellaswag acc", "hellaswag acc_norm"]
    rows = {cells[1]: cells[-2:] for cells in table if len(cells) == len(header) and cells[1] in FINAL_HP}
    assert rows == {"adamw": ["0.3000 (n=3)", "0.4000 (n=3)"], "muon": ["0.4500 (n=2)", "0.5500 (n=2)"],
                    "lion": ["—", "—"]}
    page = paths["html"].read_text()
    board = re.search(r'<table class="leaderboard" data-scenario="s">(.*?)</table>', page, re.DOTALL).group(1)
    assert "hellaswag acc_norm" in board and "0.4500 (n=2)" in board


def test_a_bench_without_downstream_results_has_no_downstream_columns(tmp_path):
    markdown = write_report(power_law_bench(tmp_path / "out"))["markdown"].read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("|") and "optimizer" in line)
    assert "hellaswag" not in markdown and header.rstrip(" |").endswith("tuning trials")
