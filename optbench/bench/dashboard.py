"""`optbench dashboard OUT`: optuna-dashboard on a bench's study storage, to watch a long suite as it runs.

optuna-dashboard (an optional extra) is Optuna's own web UI: it reads the same storage the workers write, so it
shows every study's trials, their values and hyperparameters live, with nothing of optbench's in between. The
studies are named `<suite>/<scenario>/<optimizer>/<phase>`: phase `tune` is the tuning study, `tune-K` the K-th
repeated tuning study (tuning.studies), `final` the best configuration repeated over the final seeds.
"""

from __future__ import annotations

from pathlib import Path

from optbench.bench import layout
from optbench.errors import UserError

STUDY_NAMES = ("studies are <suite>/<scenario>/<optimizer>/<phase>: tune = tuning, tune-K = repeated tuning "
               "study K, final = the final seeds")


def storage_url(out: Path | None, storage: str | None) -> str:
    """The bench's storage: --storage as given, else OUT/study.db, which must exist (an empty one would be
    created silently by SQLAlchemy and show nothing)."""
    if storage:
        return storage
    if out is None:
        raise UserError("optbench dashboard needs a results folder (OUT) or --storage URL")
    database = Path(out) / "study.db"
    if not database.is_file():
        raise UserError(f"no study storage at {database}: run `optbench bench` into {out} first, or pass "
                        "--storage URL (the bench's --storage)")
    return layout.sqlite_url(out)


def serve(url: str, host: str, port: int, echo=print) -> None:
    """Serve optuna-dashboard on `url` until interrupted."""
    try:
        import optuna_dashboard
    except ImportError:
        raise UserError("optbench dashboard needs optuna-dashboard: pip install 'optbench[dashboard]'") from None
    echo(f"optuna-dashboard of {url} at http://{host}:{port} ({STUDY_NAMES}); Ctrl-C stops it", flush=True)
    optuna_dashboard.run_server(url, host=host, port=port)
