"""`experiment=NAME` (a shipped recipe in configs/experiment/) or `experiment=PATH` (a user's own YAML file).

Hydra's `experiment` group is optional, so it skips a name it cannot find: a typo would silently run the
defaults. A name must therefore be a shipped one. A path to a file is read and stored as an option of the group
(a global package, as the shipped recipes are, with its own `defaults:` overrides), under a name made from its
content, so an edited file is a new option and never a stale cached one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from optbench.errors import UserError, closest

GROUP = "experiment"
FILE_PREFIX = "file-"


def resolve(overrides: list[str] | tuple[str, ...], config_dir: Path) -> list[str]:
    """The overrides with any `experiment=PATH` replaced by the name its file was stored under."""
    known = sorted(p.stem for p in (config_dir / GROUP).glob("*.yaml"))
    resolved = []
    for line in overrides:
        key, sep, value = line.partition("=")
        if sep and key.lstrip("+") == GROUP and value not in ("", "null") and value not in known:
            if not _looks_like_path(value):
                raise UserError(f"unknown experiment '{value}'; valid: {', '.join(closest(value, known))} "
                                "or a path to a .yaml file")
            line = f"{key}={store_file(Path(value))}"
        resolved.append(line)
    return resolved


def _looks_like_path(value: str) -> bool:
    return value.endswith((".yaml", ".yml")) or "/" in value


def store_file(path: Path) -> str:
    """Store the experiment file as an option of the group; its option name."""
    if not path.is_file():
        raise UserError(f"experiment file {path} does not exist")
    text = path.read_text()
    try:
        node = OmegaConf.create(text)  # its YAML loader reads 1e-3 as a number, as Hydra does
    except (yaml.YAMLError, OmegaConfBaseException) as err:
        raise UserError(f"experiment file {path}: {' '.join(str(err).split())}") from None
    if not isinstance(node, DictConfig):
        raise UserError(f"experiment file {path} must hold a mapping of config keys, as configs/experiment/*.yaml do")
    name = FILE_PREFIX + hashlib.sha256(text.encode()).hexdigest()[:16]
    ConfigStore.instance().store(group=GROUP, name=name, node=node, package="_global_")
    return name
