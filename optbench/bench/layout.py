"""Where a suite's results live; `optbench report` reads only this folder.

    OUT/suite.yaml                      the suite as run (registry search spaces filled in)
    OUT/study.db                        the Optuna storage (SQLite; or a PostgreSQL URL given instead), with the
                                        claim index; claims are serialised in it (bench/claim_transaction.py)
    OUT/workers/<id>.log                each worker's output
    OUT/runs/<scenario>/<optimizer>/seed<S>-<hash>/
                                        ordinary run directories, each with a trial.json:
                                        {suite, scenario, optimizer, hparams, seed, phases, overrides}
    OUT/report/                         report.md, report.html, leaderboard.csv, runs.csv, plots/

`optbench bench SUITE --smoke` writes only OUT/smoke/<scenario>/<optimizer>/ (one short run directory each) and
OUT/smoke-weights/<optimizer>/ (random meta-weights for a learned optimizer whose own are not offline), with OUT
defaulting to bench/<suite>-smoke, so a smoke test never mixes with the suite's results.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_ROOT = Path("bench")


def default_out(suite_name: str) -> Path:
    """bench/<suite>: where `optbench bench SUITE` writes and `optbench report SUITE` reads."""
    return DEFAULT_ROOT / suite_name


def smoke_out(suite_name: str) -> Path:
    """bench/<suite>-smoke: where `optbench bench SUITE --smoke` writes by default."""
    return DEFAULT_ROOT / f"{suite_name}-smoke"


def smoke_run_dir(out: Path, scenario: str, optimizer: str) -> Path:
    return Path(out) / "smoke" / scenario / optimizer


def smoke_weights_dir(out: Path, optimizer: str) -> Path:
    return Path(out) / "smoke-weights" / optimizer


def suite_file(out: Path) -> Path:
    return Path(out) / "suite.yaml"


def sqlite_url(out: Path) -> str:
    return f"sqlite:///{(Path(out) / 'study.db').resolve()}"


def runs_dir(out: Path) -> Path:
    return Path(out) / "runs"


def run_dir(out: Path, scenario: str, optimizer: str, key: str) -> Path:
    return runs_dir(out) / scenario / optimizer / key


def trial_file(run: Path) -> Path:
    return Path(run) / "trial.json"


def report_dir(out: Path) -> Path:
    return Path(out) / "report"


def worker_log(out: Path, worker: str) -> Path:
    return Path(out) / "workers" / f"{worker}.log"
