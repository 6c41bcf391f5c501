"""Writing the assembled report as Markdown and as one self-contained HTML page.

Both take the same context (provenance, one section per scenario, the profile, run status counts) with
tables already formatted as strings, so the two files always show the same numbers.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

TEMPLATE = "report.html.j2"

STATS_NOTES = {
    "target": "modded-nanogpt's rule for reaching the target: a one-sample t-test over seeds of H1: mean final "
              "loss < target: t = (mean − target)/(s/√n), p = P(T ≤ t) with n − 1 degrees of freedom; pass when "
              "p < α={alpha:g}.",
    "pairs": "One-sided Welch t-test of H1: the better optimizer's mean final loss is below the worse one's. Seeds "
             "needed: per optimizer, for a one-sided two-sample t-test at α={alpha:g} to detect the measured gap "
             "with power 0.8, the sd being √((s₁² + s₂²)/2) (exact, noncentral t).",
    "burden": "Tuning burden: tuning trials, in the order they were run, until the first whose final loss is within "
              "1% of the best tuning loss (diverged and failed trials count), in tuning study 0.",
    "studies": "AlgoPerf's repeated tuning studies (tuning.studies): independent tuning studies, each at its own "
               "seed; an optimizer's score is the median over studies of each study's best tuning loss (a study "
               "with no finite loss counts as infinite), with its spread and each study's choice.",
    "neighbours": "Sensitivity of the chosen hyperparameters (Marin's ablation): the tuning loss one grid step "
                  "either side of the best value, the others held at best, as value: loss.",
}


STATS_KEYS = ("target", "pairs", "burden", "studies", "neighbours")


def stats_notes(alpha: float) -> dict[str, str]:
    return {k: v.format(alpha=alpha) for k, v in STATS_NOTES.items()}


EDGE_NOTE = ("A starred hyperparameter's best value is at the edge of what was tried, and the bench could not extend "
             "beyond it (a hard bound, or the suite's tuning.extend budget): its optimum may lie further out.")


def write_markdown(path: Path, context: dict[str, Any]) -> None:
    path.write_text("\n".join(markdown_lines(context)) + "\n")


def markdown_lines(context: dict[str, Any]) -> list[str]:
    prov = context["provenance"]
    lines = [f"# optbench report: {prov['suite']}", ""]
    if prov["description"]:
        lines += [prov["description"], ""]
    lines += [f"Baseline: **{prov['baseline']}**. {prov['runs']} runs read from `{prov['out']}`. "
              f"Generated {prov['generated']}.", ""]
    for section in context["sections"]:
        lines += _markdown_section(section)
    profile = context["profile"]
    lines += ["## Performance profile across scenarios", "",
              f"Steps to each scenario's target relative to the fastest optimizer; the score is the area "
              f"under ρ(τ) over [1, {profile['tau_max']:g}], normalised to 1.", "",
              f"![performance profile]({profile['plot']})", "", markdown_table(profile["scores"]), ""]
    lines += ["## Runs by status", "", markdown_table(context["status"]), ""]
    lines += ["## Provenance", "", "| git commit | runs |", "|---|---|"]
    lines += [f"| `{commit}` | {n} |" for commit, n in prov["commits"].items()]
    lines += ["", "| library | versions (runs) |", "|---|---|"]
    lines += [f"| {lib} | {_versions(seen)} |" for lib, seen in prov["versions"].items()]
    if prov["runs_without_env"]:
        lines += ["", f"{prov['runs_without_env']} runs have no env.json."]
    if prov["skipped"]:
        lines += ["", "Skipped run directories:", ""] + [f"- `{s}`" for s in prov["skipped"]]
    return lines


def _markdown_section(section: dict[str, Any]) -> list[str]:
    lines = [f"## Scenario `{section['name']}`", "", _scenario_line(section), "",
             f"Speedup: {section['fit']}. {EDGE_NOTE}", ""]
    if section["leaderboard"] is not None:
        lines += [markdown_table(section["leaderboard"]), ""]
    else:
        lines += ["No optimizer has final runs in this scenario.", ""]
    if section["without_final"]:
        lines += [f"Without final runs: {', '.join(section['without_final'])}.", ""]
    if section["pairwise"] is not None:
        lines += ["Welch's t-test p-values between final losses:", "", markdown_table(section["pairwise"]), ""]
    for figure in section["figures"]:
        lines += [f"![{figure['caption']}]({figure['path']})", ""]
    for shown in section["tables"]:
        lines += [f"### {shown['title']}: `{section['name']}`", "", shown["note"], "",
                  markdown_table(shown["table"], numparse=False), ""]
    stats = section["statistics"]
    notes = stats_notes(stats["alpha"])
    lines += [f"### Statistics: `{section['name']}`", ""]
    for key in STATS_KEYS:
        if stats[key] is not None:
            lines += [notes[key], "", markdown_table(stats[key], numparse=False), ""]
    return lines


def _scenario_line(section: dict[str, Any]) -> str:
    target = "none" if section["target"] is None else f"{section['target']:g}"
    ladder = f", ladder `{section['ladder']}`" if section["ladder"] else ""
    return f"Target loss: {target}{ladder}."


def markdown_table(table: pd.DataFrame, numparse: bool = True) -> str:
    """A Markdown table; numparse=False keeps formatted numbers as written (2.4870 stays 2.4870)."""
    return table.to_markdown(index=False, disable_numparse=not numparse)


def _versions(seen: dict[str, int]) -> str:
    return ", ".join(f"{v} ({n})" for v, n in seen.items()) or "—"


def write_html(path: Path, context: dict[str, Any], report_dir: Path) -> None:
    """Render the template with every figure inlined as a data: URI, so the page stands alone."""
    env = Environment(loader=PackageLoader("optbench.report", "templates"),
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    env.filters["data_uri"] = lambda rel: data_uri(report_dir / rel)
    env.globals["scenario_line"] = _scenario_line
    env.globals["versions"] = _versions
    env.globals["stats_notes"] = stats_notes
    path.write_text(env.get_template(TEMPLATE).render(**context, edge_note=EDGE_NOTE, stats_keys=STATS_KEYS))


def data_uri(png: Path) -> str:
    """A PNG inlined as a data: URI, so a page stands alone."""
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")
