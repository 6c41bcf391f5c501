"""Plugins: Python files or importable modules that register optimizers or model families through the API the
built-ins use: `from optbench.optim import register, OptimizerSpec, OptimConfig, Capabilities`, and
`optbench.models.register`.

Loaded, in this order: the `optbench.plugins` entry points of installed packages (each names a module), the
OPTBENCH_PLUGINS environment variable (os.pathsep-separated), `optbench --plugin PATH|MODULE` (repeatable), and a
suite's `plugins:` list (bench/suite.py), which the bench writes into OUT/suite.yaml with every other plugin it
had, so that each worker, local or on Slurm, loads them all again. A reference ending in .py or holding a path
separator is a file; anything else is a module name.

A plugin runs once per process however often it is named (by the environment and a flag, by path and by module
name): it is known by its resolved file. One that fails to import, or registers a name already taken, is a
UserError naming it, and what it registered before failing is taken back.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Iterable
from importlib.metadata import entry_points
from pathlib import Path

from optbench.errors import UserError, check

ENV_VAR = "OPTBENCH_PLUGINS"
ENTRY_POINT_GROUP = "optbench.plugins"

_LOADED: dict[str, str] = {}
"""Each plugin loaded in this process, by identity (its resolved file, else its module name) -> the reference it
was loaded by, in load order."""


# ----------------------------------------------------------------------------- what to load


def load_configured(flags: Iterable[str] = ()) -> None:
    """What every command loads first: installed entry points, then OPTBENCH_PLUGINS, then --plugin flags."""
    for ref in [*installed(), *from_environment(), *flags]:
        load(ref)


def installed() -> list[str]:
    """The modules named by installed packages' `optbench.plugins` entry points."""
    modules = []
    for point in entry_points(group=ENTRY_POINT_GROUP):
        check(not point.attr, f"entry point {point.name} = '{point.value}' of group {ENTRY_POINT_GROUP} must name a "
                              "module (importing it registers), not an attribute")
        modules.append(point.module)
    return modules


def from_environment() -> list[str]:
    return [ref for ref in os.environ.get(ENV_VAR, "").split(os.pathsep) if ref.strip()]


def loaded() -> list[str]:
    """The references of every plugin loaded so far (files as absolute paths), in load order."""
    return list(_LOADED.values())


# ----------------------------------------------------------------------------- loading


def load(ref: str, base: Path | None = None) -> str:
    """Run one plugin unless it already ran; returns its reference resolved (a file's absolute path; a relative one is
    taken from `base`, else the working directory)."""
    ref = resolve(ref, base)
    origin = _origin(ref)
    identity = str(origin) if origin is not None else ref
    if identity not in _LOADED:
        _run(ref)
        _LOADED[identity] = ref
    return ref


def is_file(ref: str) -> bool:
    return ref.endswith(".py") or "/" in ref or os.sep in ref


def resolve(ref: str, base: Path | None = None) -> str:
    if not is_file(ref):
        return ref
    path = Path(ref).expanduser()
    path = path if path.is_absolute() else (base or Path.cwd()) / path
    check(path.is_file(), f"plugin {ref}: no such file ({path})")
    return str(path.resolve())


def _origin(ref: str) -> Path | None:
    """The file a plugin's code is in (a package's __init__.py); None for a module with no file of its own."""
    if is_file(ref):
        return Path(ref)
    try:
        spec = importlib.util.find_spec(ref)
    except (ImportError, ValueError) as err:  # a missing parent package, or a name that is no module name
        raise UserError(f"plugin {ref}: {type(err).__name__}: {err}") from None
    check(spec is not None, f"plugin {ref}: no module named '{ref}' (nor a file: a path ends in .py)")
    return Path(spec.origin).resolve() if spec.origin and Path(spec.origin).is_file() else None


def _run(ref: str) -> None:
    """Import the plugin. Whatever it raises is the plugin's problem, reported in one line naming it; what it had
    registered by then is taken back, so fixing the file and loading it again works."""
    from optbench.models.registry import MODELS
    from optbench.optim.registry import OPTIMIZERS

    before = (set(OPTIMIZERS), set(MODELS))
    try:
        _import_file(Path(ref)) if is_file(ref) else importlib.import_module(ref)
    except Exception as err:
        for registry, names in zip((OPTIMIZERS, MODELS), before):
            for name in set(registry) - names:
                del registry[name]
        message = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
        raise UserError(f"plugin {ref}: {type(err).__name__}: {message}") from None


def _import_file(path: Path) -> None:
    """Run a file as a module of its own, under a name unique to its path. It is put in sys.modules first: dataclasses
    and OmegaConf look a class's module up there to read its annotations."""
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
    name = f"optbench_plugin_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


# ----------------------------------------------------------------------------- a suite's plugins


def digests(refs: Iterable[str]) -> dict[str, str]:
    """Each plugin's SHA-256 (of its file; a module's own file), for the suite as run to record."""
    found = {}
    for ref in refs:
        origin = _origin(ref)
        if origin is not None:
            found[ref] = hashlib.sha256(origin.read_bytes()).hexdigest()
    return found


def load_pinned(refs: Iterable[str], pinned: dict[str, str], suite_path: Path) -> tuple[list[str], dict[str, str]]:
    """A suite's plugins: files resolved from the suite's folder, each checked against the SHA-256 the suite recorded
    when it ran (`pinned`: a worker must not run a plugin edited since), then loaded. Returns the references resolved
    and their SHA-256 now."""
    resolved = [resolve(ref, suite_path.parent) for ref in refs]
    now = digests(resolved)
    for ref, recorded in pinned.items():
        if ref in now and now[ref] != recorded:
            raise UserError(f"plugin {ref} changed since the suite in {suite_path} ran with it (SHA-256 "
                            f"{recorded[:12]}..., now {now[ref][:12]}...); restore it, or run the suite into another "
                            "--out")
    for ref in resolved:
        load(ref)
    return resolved, now
