"""`optbench compare RUN_DIR RUN_DIR ... [--out DIR]`: an ad-hoc comparison of run directories, no suite needed.

`write_comparison(paths, out)` writes into `out` (default ./compare):

    compare.md      the config keys the runs differ in outside optim.* (each run's value), the table of runs,
                    loss curves referenced as plots/*.png
    compare.html    the same as one self-contained page (figures embedded, no external resources)
    compare.csv     the table's raw numbers, one row per run, with each run's full path
    plots/          loss-steps.png, loss-tokens.png, loss-time.png: train and val loss of every run

The table has, per run: the optimizer and its hyperparameters that differ from the registry's defaults,
its status, final and best val loss, tokens/s, median step time, optimizer-state bytes, wall time, and
the steps and tokens it needed to reach the best completed run's final val loss (target.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from optbench.compare.config_diff import differing_keys
from optbench.compare.figures import loss_figures
from optbench.compare.render import write_html, write_markdown
from optbench.compare.rundirs import read_runs
from optbench.compare.table import display_table, runs_table
from optbench.compare.target import best_run
from optbench.errors import UserError

__all__ = ["DEFAULT_OUT", "write_comparison"]

DEFAULT_OUT = Path("compare")


def write_comparison(paths: Sequence[Path], out: Path | None = None) -> dict[str, Path]:
    """Compare the run directories at `paths`; return the paths written under the keys markdown, html,
    csv, plots. Every input is checked (a UserError names the first bad one) before anything is written."""
    out = Path(out) if out is not None else DEFAULT_OUT
    runs = read_runs(paths)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder to write the comparison into")
    best = best_run(runs)
    target = best.run.final_loss if best is not None else None
    table = runs_table(runs, target)
    written = {"markdown": out / "compare.md", "html": out / "compare.html", "csv": out / "compare.csv",
               "plots": out / "plots"}
    written["plots"].mkdir(parents=True, exist_ok=True)
    context = {
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "differing": differing_keys(runs),
        "runs_table": display_table(table),
        "target": target,
        "best": best.label if best is not None else None,
        "figures": loss_figures(runs, written["plots"]),
        "paths": [(r.label, str(r.run.path)) for r in runs],
    }
    table.to_csv(written["csv"], index=False)
    write_markdown(written["markdown"], context)
    write_html(written["html"], context)
    return written
