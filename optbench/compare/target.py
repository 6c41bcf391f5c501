"""Steps and tokens a run needed to reach a target val loss, read off its eval curve.

The crossing is the first eval at or below the target, as `report.measures.reach_target` finds it; here
it is then interpolated linearly from the eval before it, since evals are far apart in short runs and the
comparison should not round every run up to its next eval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from optbench.compare.rundirs import ComparedRun
from optbench.report.load import Run


def best_run(runs: Sequence[ComparedRun]) -> ComparedRun | None:
    """The completed run with the lowest final val loss; None when no run completed."""
    finished = [r for r in runs if math.isfinite(r.run.final_loss)]
    return min(finished, key=lambda r: r.run.final_loss) if finished else None


def to_target(run: Run, target: float) -> tuple[float, float]:
    """(steps, tokens) at which the val loss first reaches `target`, interpolated between the eval that
    reaches it and the one before; (inf, inf) when no eval does."""
    previous: dict[str, Any] | None = None
    for e in _finite_evals(run):
        if e["val_loss"] <= target:
            if previous is None:
                return float(e["step"]), float(e["tokens"])
            # previous is above the target and e at or below it, so the fraction lies in (0, 1]
            fraction = (previous["val_loss"] - target) / (previous["val_loss"] - e["val_loss"])
            return (_between(previous["step"], e["step"], fraction),
                    _between(previous["tokens"], e["tokens"], fraction))
        previous = e
    return math.inf, math.inf


def _finite_evals(run: Run) -> list[dict[str, Any]]:
    evals = [e for e in run.evals if e.get("val_loss") is not None and math.isfinite(e["val_loss"])]
    return sorted(evals, key=lambda e: e["step"])


def _between(a: float, b: float, fraction: float) -> float:
    return float(a + fraction * (b - a))
