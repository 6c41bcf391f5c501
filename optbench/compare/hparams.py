"""An optimizer's hyperparameters that a run changed from the registry's defaults.

A run's config.yaml holds every optim.* key, defaults included; a comparison shows only what was chosen,
so two runs of one optimizer read as `lr=0.003` against `defaults` rather than as two long lists.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from optbench.optim import OPTIMIZERS


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys (optim.backup.lr); lists and scalars are values."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def non_default_hparams(optim: Mapping[str, Any]) -> dict[str, Any]:
    """The run's optim.* values (dotted below optim, e.g. backup.lr) that differ from its optimizer's
    registry defaults. An optimizer this version does not know has no defaults: all its values show."""
    spec = OPTIMIZERS.get(str(optim.get("name")))
    defaults = flatten(dataclasses.asdict(spec.config_cls())) if spec is not None else {}
    return {key: value for key, value in flatten(optim).items()
            if key != "name" and (key not in defaults or defaults[key] != value)}
