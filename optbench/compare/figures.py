"""The comparison's loss curves: train and val loss of every run against steps, tokens and wall-clock.

One figure per x axis, train loss on the left and val loss on the right, in the report's style
(`report.plots`: object-API figures, one colour per run, log loss axis with plain numbers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from optbench.compare.rundirs import ComparedRun
from optbench.report import plots

AXES = (("steps", "step", "steps"), ("tokens", "tokens", "tokens"), ("time", "time_s", "wall-clock (s)"))
"""(file suffix, metrics.jsonl key, axis label) of each figure's x axis."""


def loss_figures(runs: Sequence[ComparedRun], plots_dir: Path) -> list[dict[str, str]]:
    """Write the three figures into `plots_dir`; their captions and paths relative to its parent."""
    palette = plots.colors([r.label for r in runs])
    figures = []
    for suffix, key, label in AXES:
        path = plots.save(_figure(runs, palette, key, label), plots_dir / f"loss-{suffix}.png")
        figures.append({"caption": f"train and val loss against {label}",
                        "path": path.relative_to(plots_dir.parent).as_posix()})
    return figures


def _figure(runs: Sequence[ComparedRun], palette: dict[str, Any], x_key: str, x_label: str) -> Figure:
    fig = Figure(figsize=(11, 4.2))
    train_ax, val_ax = fig.subplots(1, 2)
    for ax, lines, y_key, title in ((train_ax, "train", "loss", "train loss"),
                                    (val_ax, "evals", "val_loss", "validation loss")):
        for compared in runs:
            xs, ys = _points(getattr(compared.run, lines), x_key, y_key)
            # evals are few and far apart, and a run that stopped at once has a single point: mark those
            marker = "o" if lines == "evals" or len(xs) == 1 else None
            if xs:
                ax.plot(xs, ys, color=palette[compared.label], marker=marker, markersize=3,
                        label=f"{compared.label}: {compared.run.optimizer}")
        _style(ax, x_label, title)
    return fig


def _points(lines: list[dict[str, Any]], x_key: str, y_key: str) -> tuple[list[float], list[float]]:
    """(x, y) of the lines holding both, finite: a diverged run's last loss would flatten the axis."""
    points = sorted((float(line[x_key]), float(line[y_key])) for line in lines
                    if line.get(x_key) is not None and line.get(y_key) is not None
                    and math.isfinite(line[y_key]))
    return [x for x, _ in points], [y for _, y in points]


def _style(ax: Axes, x_label: str, title: str) -> None:
    ax.set_yscale("log")
    # Losses span well under a decade, where log axes' default 10^x labels would show no numbers at all.
    plain = FuncFormatter(lambda y, _: f"{y:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_xlabel(x_label)
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
