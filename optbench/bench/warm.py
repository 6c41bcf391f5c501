"""What a worker keeps warm between trials: the prepared datasets, each with its tokenizer.

A worker is one process for many trials, so the library, the composed group choices (config/compose.py) and
torch's compiled kernels stay loaded by themselves; the prepared data is kept here. The key is the whole data
config, every field of it, so two trials share a dataset only where a fresh process would have opened the very
same one; a trial in a warm worker computes exactly what it computes alone (the trainer's random streams are
its own, seeded from its config).
"""

from __future__ import annotations

import dataclasses
import json

from optbench import data as datalib
from optbench.config.schema import DataConfig


class Warm:
    def __init__(self) -> None:
        self._data: dict[str, datalib.Prepared] = {}

    def data(self, cfg: DataConfig) -> datalib.Prepared:
        """cfg's prepared dataset, opened (or prepared) on first use."""
        key = data_key(cfg)
        if key not in self._data:
            self._data[key] = datalib.load(cfg, progress=False)
        return self._data[key]


def data_key(cfg: DataConfig) -> str:
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
