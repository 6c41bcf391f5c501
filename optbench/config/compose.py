"""Compose a run's config from YAML groups and command-line overrides with Hydra's compose API.

`compose(["model=llama", "optim.lr=3e-3"])` returns a validated `Config` of dataclasses. Hydra
parses the overrides (group=choice, key=value, lists, interpolations) and OmegaConf checks every
key and type against the dataclasses; this module only registers the schemas and turns Hydra's
multi-line errors into one `UserError` line naming the bad key or value and the closest valid ones.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError

from optbench.config import experiments
from optbench.config.schema import Config
from optbench.errors import UserError, closest

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def _register_schemas() -> None:
    """Make the dataclasses visible to Hydra: the base config and one option per family/optimizer, again whenever
    the registries have grown (a plugin may register after the first compose; its choice must not be unknown)."""
    _store_schemas(_registry_key())


@functools.cache
def _store_schemas(registry: tuple[str, ...]) -> None:
    """Once per state of the registries (`registry`: their names), since the ConfigStore is process-wide."""
    from optbench.models import config_classes as model_classes
    from optbench.optim import config_classes as optim_classes

    store = ConfigStore.instance()
    store.store(name="optbench_base", node=Config)
    for name, cls in model_classes().items():
        store.store(group="model", name=name, node=_schema(cls))
    for name, cls in optim_classes().items():
        store.store(group="optim", name=name, node=_schema(cls))


def _schema(cls: type) -> DictConfig:
    """A dataclass as a Hydra option. A dict field (optim=torch's kwargs) holds keys no dataclass lists, so it is
    left open: in Hydra's struct mode `optim.kwargs.momentum=0.9` would be refused as an unknown key."""
    node = OmegaConf.structured(cls)
    for f in dataclasses.fields(cls):
        if OmegaConf.get_type(node, f.name) is dict:
            OmegaConf.set_struct(node[f.name], False)
    return node


def compose_dict(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The composed, type-checked config as an OmegaConf tree (interpolations resolved).

    Hydra builds the tree from the group choices (`optim=muon`), then sets each `key=value` on it. The first part
    is most of the cost (~0.1 s) and a sweep asks for the same choices thousands of times, so its result is
    cached per set of choices and the values are set on a copy, as Hydra sets them. Anything but plain
    `group=choice` and `key=value` overrides, and any error, takes Hydra's own path, whose messages are the ones
    users see."""
    overrides = experiments.resolve(overrides, CONFIG_DIR)
    fast = _compose_from_cached_choices(tuple(overrides))
    return fast if fast is not None else _hydra_compose(tuple(overrides))


def _hydra_compose(overrides: tuple[str, ...]) -> DictConfig:
    _register_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        try:
            cfg = hydra_compose("config", overrides=list(overrides))
            OmegaConf.resolve(cfg)
        except (HydraException, OmegaConfBaseException) as err:
            raise UserError(_one_line(err)) from None
        return cfg


@functools.lru_cache(maxsize=128)
def _unresolved_choices(choices: tuple[str, ...], registry: tuple[str, ...]) -> DictConfig:
    """The tree Hydra composes from group choices alone, before interpolations are resolved. `registry` (the
    registered config classes) is part of the key: a class registered later changes what a choice means."""
    _register_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return hydra_compose("config", overrides=list(choices))


def _compose_from_cached_choices(overrides: tuple[str, ...]) -> DictConfig | None:
    """The fast path of `compose_dict`, or None where Hydra's own path must run."""
    try:
        parsed = [_parse(line) for line in overrides]
    except HydraException:
        return None
    groups = _group_names()
    choices, values = [], []
    for override, line in zip(parsed, overrides):
        if override.package is not None or override.is_sweep_override() or override.is_delete() \
                or override.is_add() or override.is_force_add():
            return None
        (choices if override.key_or_group in groups else values).append((line, override))
    try:
        cfg = copy.deepcopy(_unresolved_choices(tuple(line for line, _ in choices), _registry_key()))
        for _, override in values:
            OmegaConf.update(cfg, override.key_or_group, override.value(), merge=True)
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException):
        return None
    return cfg


@functools.lru_cache(maxsize=4096)
def _parse(line: str) -> Override:
    """One override as Hydra's grammar reads it, once per process: a bench worker composes the same suite lines for
    every trial, and the grammar's parser is a third of a composition's cost. Overrides are never changed once
    parsed, and OmegaConf copies a value into the tree it is set on."""
    return OverridesParser.create().parse_overrides([line])[0]


@functools.cache
def _group_names() -> frozenset[str]:
    """Config groups: the YAML folders (nested ones as `a/b`) and the groups of registered dataclasses."""
    folders = {str(p.relative_to(CONFIG_DIR)) for p in CONFIG_DIR.rglob("*") if p.is_dir()}
    return frozenset(folders | {"model", "optim"})


def _registry_key() -> tuple[str, ...]:
    from optbench.models import config_classes as model_classes
    from optbench.optim import config_classes as optim_classes

    return (*model_classes(), "|", *optim_classes())


def compose(overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The composed config as validated dataclasses (`__post_init__` checks included)."""
    return to_config(compose_dict(overrides))


def to_config(cfg: DictConfig) -> Config:
    """Turn a composed tree into dataclasses, surfacing value checks as UserErrors."""
    try:
        config = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        user_error = _find_cause(err, UserError)
        if user_error is not None:
            raise user_error from None
        raise UserError(_one_line(err)) from None
    _reject_unknown_keys(cfg, config)
    return config


def _reject_unknown_keys(tree: DictConfig, obj, prefix: str = "") -> None:
    """Keys added with Hydra's `+key=value` pass composition; a dataclass field must exist for each."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key in tree:
        full_key = f"{prefix}{key}"
        if key not in fields:
            valid = [f"{prefix}{name}" for name in fields]
            raise UserError(f"unknown key '{full_key}'; valid: {', '.join(closest(full_key, valid))}")
        value = getattr(obj, key)
        if dataclasses.is_dataclass(value):
            _reject_unknown_keys(tree[key], value, f"{full_key}.")


def to_yaml(cfg: Config) -> str:
    """The full resolved config as YAML (what a run directory stores as config.yaml)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def load_yaml(path: str | Path) -> Config:
    """Read a run's config.yaml back into dataclasses, checked against the schema."""
    _register_schemas()
    raw = OmegaConf.load(path)
    from optbench.models import config_classes as model_classes
    from optbench.optim import config_classes as optim_classes

    schema = OmegaConf.structured(Config)
    schema.model = OmegaConf.structured(model_classes()[raw.model.name])
    schema.optim = OmegaConf.structured(optim_classes()[raw.optim.name])
    try:
        return to_config(OmegaConf.merge(schema, raw))
    except OmegaConfBaseException as err:
        raise UserError(f"{path}: {_one_line(err)}") from None


def group_options(group: str) -> list[str]:
    """The choices of a config group (YAML files and registered dataclasses)."""
    _register_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return GlobalHydra.instance().config_loader().get_group_options(group)


def _find_cause(err: BaseException | None, kind: type[BaseException]) -> BaseException | None:
    while err is not None:
        if isinstance(err, kind):
            return err
        err = err.__cause__ or err.__context__
    return None


def _valid_keys(full_key: str, object_type) -> list[str]:
    """Keys that exist next to `full_key`, spelled in full ('train.steps', ...)."""
    parent = full_key.rpartition(".")[0]
    if not dataclasses.is_dataclass(object_type):
        return []
    return [f"{parent}.{f.name}" if parent else f.name for f in dataclasses.fields(object_type)]


def _one_line(err: BaseException) -> str:
    """Hydra/OmegaConf's multi-line error as one line that names the culprit and valid choices."""
    if isinstance(err, MissingConfigException):
        match = re.search(r"Could not (?:find|load) '([\w-]+)/([^']+)'", str(err))
        if match:
            group, choice = match.groups()
            return f"unknown {group} '{choice}'; valid: {', '.join(closest(choice, group_options(group)))}"
    cause = _find_cause(err, OmegaConfBaseException) or err
    full_key = getattr(cause, "full_key", None)
    text = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    if isinstance(cause, ValidationError) and full_key:
        return f"invalid value for {full_key}: {text}"
    if full_key and re.search(r"Key '[^']+' (?:is )?not in", text):
        valid = closest(full_key, _valid_keys(full_key, getattr(cause, "object_type", None)))
        return f"unknown key '{full_key}'; valid: {', '.join(valid)}"
    if "Error parsing override" in str(err):
        return f"{str(err).splitlines()[0]}: expected group=choice or key=value"
    return str(err).splitlines()[0]
