"""The frozen protocol: what a bench's results were produced under, written once into OUT/suite.yaml.

A suite file names optimizers and, for some hyperparameters, ranges; the rest (the other search ranges, every
default, the grid a log range expands to) comes from the registry, which changes as optbench changes. When a bench
starts, each optimizer's protocol is resolved in full and written beside the suite: planning, the workers and the
report then read only that, so editing an optimizer's defaults between two runs into the same folder cannot
change a study half-way. A later run into the folder is compared with it, and refused with the keys that differ.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from omegaconf import OmegaConf

from optbench.bench.suite import (OptimizerEntry, Suite, entry_config, hyperparameters, is_frozen, search_space,
                                  to_yaml)
from optbench.optim.search_space import Choice, Dimension, LogUniform, grid_points


def freeze(suite: Suite) -> Suite:
    """The suite with every optimizer's search space and defaults resolved (entries already frozen are kept)."""
    return dataclasses.replace(suite, optimizers=[freeze_entry(entry) for entry in suite.optimizers])


def freeze_entry(entry: OptimizerEntry) -> OptimizerEntry:
    if is_frozen(entry):
        return entry
    return dataclasses.replace(entry, space={key: dimension_spec(dim) for key, dim in search_space(entry).items()},
                               defaults=hyperparameters(entry_config(entry)))


def thawed(entry: OptimizerEntry) -> OptimizerEntry:
    """The entry as the suite file wrote it: frozen again, it gives what the registry says now."""
    return dataclasses.replace(entry, space=None, defaults=None)


def dimension_spec(dim: Dimension) -> dict[str, Any]:
    """A dimension in the suite's own syntax, its grid written out (so the half-decade rule is frozen too)."""
    if isinstance(dim, Choice):
        return {"choice": list(dim.values)}
    kind = "log" if isinstance(dim, LogUniform) else "uniform"
    return {kind: [dim.low, dim.high], "grid": list(grid_points(dim))}


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two plain mappings, each as 'key: old -> new'."""
    found = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            found += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: {a} -> {b}")
    return found


def as_plain(suite: Suite) -> dict[str, Any]:
    """The suite as OUT/suite.yaml holds it, in plain containers (tuples and lists compare alike)."""
    return OmegaConf.to_container(OmegaConf.create(to_yaml(suite)))


def as_plain_entry(entry: OptimizerEntry) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(entry))
