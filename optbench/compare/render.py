"""Writing the comparison as compare.md and as one self-contained compare.html (figures as data: URIs).

Both take one context with the tables already formatted as text, so the two pages show the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

from optbench.report.render import data_uri, markdown_table

TEMPLATE = "compare.html.j2"
UNCONTROLLED = "Not a controlled comparison"
IGNORED_NOTE = ("Not compared: optim.* (the optimizers, in the table below) and the keys that change how a run "
                "executes or logs rather than what it computes (run.*, train.threads, train.compile, data.root, "
                "data.mirror, data.num_proc).")


def differing_line(differing: pd.DataFrame) -> str:
    """The sentence before the differing keys' table; where there are any, UNCONTROLLED goes before it."""
    if differing.empty:
        return "The runs' configs differ only in the optimizer: a controlled comparison."
    return f"the runs differ outside the optimizer in {len(differing)} config key{'s' if len(differing) != 1 else ''}:"


def target_line(context: dict[str, Any], code: Callable[[str], str] = str) -> str:
    """What "to target" means in this comparison, or why there is no target; `code` marks up the run's label."""
    if context["target"] is None:
        return "No run completed, so there is no target loss to measure steps and tokens to."
    return (f"Target: the best run's final val loss, {context['target']:.4f} ({code(context['best'])}). Steps and "
            "tokens to it are interpolated linearly between the first eval at or below it and the eval before.")


def write_markdown(path: Path, context: dict[str, Any]) -> None:
    differing = context["differing"]
    lines = [f"# optbench compare: {len(context['runs_table'])} runs", "", f"Generated {context['generated']}.", ""]
    if differing.empty:
        lines += [differing_line(differing), ""]
    else:
        lines += [f"**{UNCONTROLLED}**: {differing_line(differing)}", "", markdown_table(differing, numparse=False), ""]
    lines += [IGNORED_NOTE, "", "## Runs", "", target_line(context, lambda label: f"`{label}`"), "",
              markdown_table(context["runs_table"], numparse=False), "", "## Loss curves", ""]
    for figure in context["figures"]:
        lines += [f"![{figure['caption']}]({figure['path']})", ""]
    lines += ["## Run directories", ""] + [f"- `{label}`: `{run_dir}`" for label, run_dir in context["paths"]]
    path.write_text("\n".join(lines) + "\n")


def write_html(path: Path, context: dict[str, Any]) -> None:
    """Render the template with every figure inlined, so the page stands alone."""
    env = Environment(loader=PackageLoader("optbench.compare", "templates"),
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    env.filters["data_uri"] = lambda rel: data_uri(path.parent / rel)
    html = env.get_template(TEMPLATE).render(**context, target_line=target_line(context), uncontrolled=UNCONTROLLED,
                                             differing_line=differing_line(context["differing"]),
                                             ignored_note=IGNORED_NOTE)
    path.write_text(html)


