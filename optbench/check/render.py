"""A check report as a rich table for people and as JSON for machines; both carry the same rows."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from optbench.check.result import FAIL, INFO, PASS, Report

STYLES = {PASS: "green", FAIL: "bold red", INFO: "cyan"}


def table(report: Report) -> Table:
    counts = {status: sum(r.outcome.status == status for r in report.results) for status in (PASS, FAIL)}
    title = f"check-optimizer {report.target}: {counts[PASS]} passed, {counts[FAIL]} failed"
    out = Table(title=title)
    for column in ("check", "result", "measured", "note", "s"):
        out.add_column(column, overflow="fold", justify="right" if column == "s" else "left")
    for result in report.results:
        outcome = result.outcome
        # Text, not markup: values and notes quote the optimizer's own messages, brackets included.
        out.add_row(Text(result.check), Text(outcome.status, style=STYLES[outcome.status]), Text(outcome.value),
                    Text(outcome.note), f"{result.seconds:.1f}")
    return out


def write_json(report: Report, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(report.to_dict()), indent=2) + "\n")


def _finite(obj: Any) -> Any:
    """NaN and infinities as strings: strict JSON has no literal for them, and a diverging optimizer makes them."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {key: _finite(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(value) for value in obj]
    return obj
