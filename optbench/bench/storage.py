"""The Optuna storage of a suite: SQLite in the output folder by default, any SQLAlchemy URL otherwise
(postgresql://user:pass@host/db for workers on many machines; `pip install optbench[postgres]`).

Heartbeats are on, so a trial whose worker died is noticed (no heartbeat for `grace_s`), failed, and
requeued with the same configuration by Optuna's RetryHeartbeatStaleTrialCallback, up to `max_retries` times.
Beside Optuna's tables, the storage holds the claim index (claim_index.py).
"""

from __future__ import annotations

import warnings

import optuna
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from optbench.bench import claim_index
from optbench.bench.claim_transaction import check_dialect
from optbench.bench.suite import Execution
from optbench.errors import UserError

SQLITE_TIMEOUT_S = 120
"""Workers write to one SQLite file; waiting this long for its lock beats failing under contention."""


def open_storage(url: str, execution: Execution) -> optuna.storages.RDBStorage:
    engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else {}
    try:
        check_dialect(url)
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.8; we rely on them
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=execution.heartbeat_s,
                grace_period=execution.grace_s, heartbeat_stale_trial_callback=requeue(execution.max_retries))
            claim_index.create(storage.engine)
            return storage
    except (ArgumentError, NoSuchModuleError, OperationalError, ImportError, ValueError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"--storage {url}: cannot open the study database ({first}); valid: "
                        "sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DB") from None


def requeue(max_retries: int | None = None):
    """Optuna's callback that adds a waiting copy (same parameters and user attributes) of a failed trial."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retries)
