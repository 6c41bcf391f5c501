"""The leaderboard report of a bench output folder: `write_report(OUT)` writes OUT/report/.

    report.md           Markdown tables, figures referenced as plots/*.png; per scenario the loss at k steps,
                        stability (spikes, divergence, attention logits) and a Statistics
                        block (statistics.py: target test, one-sided pairwise tests and seeds needed,
                        tuning burden, grid neighbours of the best hyperparameters)
    report.html         one self-contained page (figures embedded, no external resources)
    leaderboard.csv     every scenario's leaderboard, raw numbers
    runs.csv            every run: scenario, optimizer, phases, seed, hyperparameters, status, loss, ...
    plots/              loss curves (tokens, time), lr sensitivity and update RMS per block per scenario, the
                        performance profile

The report reads only OUT (suite.yaml and runs/); see load.py for what it tolerates there.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from optbench.bench import layout
from optbench.report import downstream, plots, profile, progress, stability, tables
from optbench.report.leaderboard import ScenarioResult, scenario_result
from optbench.report.load import Bench, load_bench
from optbench.report.provenance import provenance
from optbench.report.render import write_html, write_markdown

__all__ = ["write_report"]

LOSS_AT_STEPS_NOTE = ("Validation loss of the final runs at evaluation steps every one of them reached (PyLO's results "
                      "table): mean ± sd over seeds.")
STABILITY_NOTE = ("Loss and grad-norm spikes (above 10× the running median; summary.json) per final run, final runs "
                  "that diverged, the share of tuning trials that diverged (of those completed, diverged or pruned), "
                  "and the largest attention logit of the final runs on the diagnostics' probe batch (diag.every); "
                  "— where runs recorded none.")


def write_report(out_dir: Path, report_dir: Path | None = None) -> dict[str, Path]:
    """Write the report of bench folder `out_dir` into `report_dir` (default OUT/report); return the
    paths written under the keys markdown, html, leaderboard_csv, runs_csv, plots."""
    out_dir = Path(out_dir)
    bench = load_bench(out_dir)
    report_dir = Path(report_dir) if report_dir is not None else layout.report_dir(out_dir)
    plots_dir = report_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    palette = plots.colors([o.name for o in bench.suite.optimizers])

    results = [scenario_result(bench, s) for s in bench.suite.scenarios]
    sections = [_section(bench, result, plots_dir, palette) for result in results]
    steps = steps_matrix(bench, results)
    ratios = profile.ratios(steps)
    profile_png = plots.save(plots.performance_profile(ratios, palette), plots_dir / "profile.png")

    paths = {"leaderboard_csv": report_dir / "leaderboard.csv", "runs_csv": report_dir / "runs.csv",
             "markdown": report_dir / "report.md", "html": report_dir / "report.html", "plots": plots_dir}
    boards = [r.table for r in results if len(r.table)]
    (pd.concat(boards, ignore_index=True) if boards else pd.DataFrame()).to_csv(paths["leaderboard_csv"],
                                                                                 index=False)
    tables.runs_table(bench).to_csv(paths["runs_csv"], index=False)
    context = {
        "provenance": provenance(bench),
        "sections": sections,
        "profile": {"scores": tables.display_scores(profile.scores(ratios), steps),
                    "plot": profile_png.relative_to(report_dir).as_posix(), "tau_max": profile.TAU_MAX},
        "status": status_counts(bench),
    }
    write_markdown(paths["markdown"], context)
    write_html(paths["html"], context, report_dir)
    return paths


def steps_matrix(bench: Bench, results: list[ScenarioResult]) -> pd.DataFrame:
    """Median steps to target of the final runs, scenarios by optimizers; inf where not reached, where the
    scenario has no target, or where the optimizer has no final runs (AlgoPerf counts those as failures).
    An optimizer the suite runs in some scenarios only (its `scenarios` list) is compared within those, on the
    leaderboards, and left out of the profile across scenarios."""
    names = [o.name for o in bench.suite.optimizers if o.scenarios is None]
    steps = pd.DataFrame(math.inf, index=[r.scenario.name for r in results], columns=names, dtype=float)
    for result in results:
        for row in result.table.to_dict("records"):
            if row["optimizer"] in names and not math.isnan(row["steps_to_target"]):
                steps.loc[result.scenario.name, row["optimizer"]] = row["steps_to_target"]
    return steps


def status_counts(bench: Bench) -> pd.DataFrame:
    """How many runs ended how, per scenario and optimizer (crashed workers show as 'missing')."""
    table = pd.DataFrame([{"scenario": r.scenario, "optimizer": r.optimizer, "status": r.status}
                          for r in bench.runs])
    counts = table.groupby(["scenario", "optimizer", "status"]).size().unstack("status", fill_value=0)
    return counts.reset_index().rename_axis(columns=None)


def _section(bench: Bench, result: ScenarioResult, plots_dir: Path, palette: dict[str, Any]) -> dict[str, Any]:
    scenario = result.scenario
    figures = []
    for kind, build, caption in (("loss", plots.loss_curves, "validation loss of the final runs "
                                                            "(mean over seeds, min–max band)"),
                                 ("time", plots.loss_vs_time, "validation loss of the final runs against "
                                                              "wall-clock time"),
                                 ("lr", plots.lr_sensitivity, "learning-rate sensitivity over the tuning runs"),
                                 ("update-rms", plots.update_rms_layers, "update RMS per block over training "
                                                                         "(final runs, diag.every)")):
        fig = build(bench, scenario, palette)
        if fig is not None:
            path = plots.save(fig, plots_dir / plots.plot_name(kind, scenario.name))
            figures.append({"caption": caption, "path": path.relative_to(plots_dir.parent).as_posix()})
    return {
        "name": scenario.name,
        "target": scenario.target_loss,
        "ladder": scenario.ladder,
        "fit": tables.fit_text(result.fit),
        "leaderboard": (downstream.add_columns(tables.display_leaderboard(result.table, result.fit,
                                                                          scenario.target_loss is not None),
                                               bench, scenario.name)
                        if len(result.table) else None),
        "pairwise": tables.display_pairwise(result.pairwise) if len(result.pairwise) > 1 else None,
        "without_final": result.without_final,
        "figures": figures,
        "tables": _progress_and_stability(bench, scenario),
        "statistics": _statistics(result),
    }


def _progress_and_stability(bench: Bench, scenario) -> list[dict[str, Any]]:
    """The scenario's "loss at k steps" and stability tables, each left out where no run gives it a row."""
    shown = []
    at_steps = progress.loss_at_steps(bench, scenario)
    if len(at_steps):
        shown.append({"id": "loss-at-steps", "title": "Loss at k steps", "note": LOSS_AT_STEPS_NOTE,
                      "table": tables.display_loss_at_steps(at_steps)})
    stable = stability.stability_table(bench, scenario)
    if len(stable):
        shown.append({"id": "stability", "title": "Stability", "note": STABILITY_NOTE,
                      "table": tables.display_stability(stable)})
    return shown


def _statistics(result: ScenarioResult) -> dict[str, Any]:
    """The "Statistics" block of a scenario (statistics.py), each table None where it has no rows."""
    target = result.scenario.target_loss
    return {
        "alpha": result.alpha,
        "target": (tables.display_target(result.table, target, result.alpha)
                   if target is not None and len(result.table) else None),
        "pairs": tables.display_pairs(result.pairs, result.alpha) if len(result.pairs) else None,
        "burden": tables.display_burden(result.burden) if len(result.burden) else None,
        "studies": tables.display_studies(result.studies) if len(result.studies) else None,
        "neighbours": tables.display_neighbours(result.neighbours) if len(result.neighbours) else None,
    }
