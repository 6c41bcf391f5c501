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

EDGE_NOTE = "A starred hyperparameter is at the edge of its tuning grid: its optimum may lie beyond it."


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
              f"![performance profile]({profile['plot']})", "", _md(profile["scores"]), ""]
    lines += ["## Runs by status", "", _md(context["status"]), ""]
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
    lines = [f"## Scenario `{section['name']}`", "", _scenario_line(section), "", f"Speedup: {section['fit']}. {EDGE_NOTE}", ""]
    if section["leaderboard"] is not None:
        lines += [_md(section["leaderboard"]), ""]
    else:
        lines += ["No optimizer has final runs in this scenario.", ""]
    if section["without_final"]:
        lines += [f"Without final runs: {', '.join(section['without_final'])}.", ""]
    if section["pairwise"] is not None:
        lines += ["Welch's t-test p-values between final losses:", "", _md(section["pairwise"]), ""]
    for figure in section["figures"]:
        lines += [f"![{figure['caption']}]({figure['path']})", ""]
    return lines


def _scenario_line(section: dict[str, Any]) -> str:
    target = "none" if section["target"] is None else f"{section['target']:g}"
    ladder = f", ladder `{section['ladder']}`" if section["ladder"] else ""
    return f"Target loss: {target}{ladder}."


def _md(table: pd.DataFrame) -> str:
    return table.to_markdown(index=False)


def _versions(seen: dict[str, int]) -> str:
    return ", ".join(f"{v} ({n})" for v, n in seen.items()) or "—"


def write_html(path: Path, context: dict[str, Any], report_dir: Path) -> None:
    """Render the template with every figure inlined as a data: URI, so the page stands alone."""
    env = Environment(loader=PackageLoader("optbench.report", "templates"),
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    env.filters["data_uri"] = lambda rel: _data_uri(report_dir / rel)
    env.globals["scenario_line"] = _scenario_line
    env.globals["versions"] = _versions
    path.write_text(env.get_template(TEMPLATE).render(**context, edge_note=EDGE_NOTE))


def _data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")
