"""Where the results came from: the suite, the code versions and libraries the runs recorded, and when
the report was generated. Mixed commits or versions across runs are shown, not hidden."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from typing import Any

from optbench.report.load import Bench

LIBRARIES = ("optbench", "torch", "optuna")


def provenance(bench: Bench) -> dict[str, Any]:
    commits: Counter[str] = Counter()
    versions: dict[str, Counter[str]] = {lib: Counter() for lib in LIBRARIES}
    for run in bench.runs:
        if not run.env:
            continue
        commit = run.env.get("git_commit") or "unknown"
        commits[f"{commit} (dirty)" if run.env.get("git_dirty") else commit] += 1
        for lib in LIBRARIES:
            versions[lib][str((run.env.get("versions") or {}).get(lib) or "unknown")] += 1
    return {
        "suite": bench.suite.name,
        "description": bench.suite.description,
        "baseline": bench.suite.baseline,
        "out": str(bench.out),
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "runs": len(bench.runs),
        "runs_without_env": sum(1 for r in bench.runs if not r.env),
        "commits": dict(commits.most_common()),
        "versions": {lib: dict(c.most_common()) for lib, c in versions.items()},
        "skipped": list(bench.skipped),
    }
