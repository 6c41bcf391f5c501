"""The config keys outside the optimizer in which compared runs differ: what makes a comparison uncontrolled.

Keys that change how a run executes or is logged, not what it computes, are left out (the same list
that resuming a run ignores: run.*, threads, compile, data locations), as is optim.*, the thing compared.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pandas as pd

from optbench.compare.hparams import flatten
from optbench.compare.rundirs import ComparedRun
from optbench.training.resume import RUN_CONTROL

IGNORED = ("optim.", *RUN_CONTROL)
ABSENT = "(absent)"
"""A key one run's config lacks, e.g. a run from an older optbench."""


def differing_keys(runs: Sequence[ComparedRun]) -> pd.DataFrame:
    """One row per differing key (sorted): the key, then each run's value under its label."""
    flat = [flatten(r.config) for r in runs]
    keys = sorted({key for config in flat for key in config if not key.startswith(IGNORED)})
    rows = []
    for key in keys:
        values = [config.get(key, ABSENT) for config in flat]
        if any(value != values[0] for value in values[1:]):
            rows.append({"key": key, **{r.label: _text(v) for r, v in zip(runs, values)}})
    return pd.DataFrame(rows, columns=["key", *(r.label for r in runs)])


def _text(value: object) -> str:
    # JSON's spelling (null, true, [1, 2]) reads as config.yaml does, where Python's would say None and True
    return value if isinstance(value, str) else json.dumps(value)
