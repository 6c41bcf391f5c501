"""Which lm-evaluation-harness tasks a name can mean: lm-eval's own, and a folder of task YAMLs (`tasks_dir`).

Indexing lm-eval's own ~15k task configs takes ~10 s, and a typo in a task name should fail in well under that:
the names of lm-eval's own tasks are kept in a cache file per installed lm-eval (`lm-eval-tasks-<version>.json`
in `$OPTBENCH_CACHE_DIR`, by default `$XDG_CACHE_HOME/optbench` or `~/.cache/optbench`), so checking names
costs a file read after the first time. Building the TaskManager that runs them still indexes, once per process. A `tasks_dir` that
defines every requested task is used alone (it must then be self-contained: its YAMLs may `include` files
beside them, not name lm-eval's tasks); otherwise its tasks are added to lm-eval's, a local name taking
precedence.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from optbench.errors import UserError, check, closest
from optbench.training.rundir import write_atomic

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager

INSTALL_HINT = "pip install 'optbench[eval]' (lm-evaluation-harness)"


def require_lm_eval(what: str) -> None:
    """A one-line UserError when lm-eval, an optional extra, is not installed."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise UserError(f"{what} needs lm-eval, which is not installed: {INSTALL_HINT}") from None


def check_names(tasks: Sequence[str], tasks_dir: str | None, key: str = "tasks") -> bool:
    """A UserError naming the first of `tasks` that is neither in `tasks_dir` nor lm-eval's (as `key`, the option
    the user set) and the closest known names; returns whether `tasks_dir` alone defines them all."""
    check(bool(tasks), f"{key} is empty; name lm-eval tasks, e.g. {key}=hellaswag,arc_easy")
    local: frozenset[str] = frozenset()
    if tasks_dir is not None:
        check(Path(tasks_dir).is_dir(), f"tasks_dir={tasks_dir} is not a folder (of lm-eval task YAMLs)")
        local = frozenset(_indexed(_resolved(tasks_dir), False).all_tasks)
        if all(task in local for task in tasks):
            return True
    known = local | lm_eval_task_names()
    for task in tasks:
        if task not in known:
            raise UserError(f"unknown task '{task}' in {key}; valid: {', '.join(closest(task, known))}")
    return False


def task_manager(tasks: Sequence[str], tasks_dir: str | None, key: str = "tasks") -> TaskManager:
    """The TaskManager that knows every one of `tasks` (their names checked first, as `check_names` does)."""
    if check_names(tasks, tasks_dir, key):
        return _indexed(_resolved(tasks_dir), False)
    return _indexed(_resolved(tasks_dir) if tasks_dir else None, True)


def lm_eval_task_names() -> frozenset[str]:
    """The names (tasks, groups, tags) of the installed lm-eval's own tasks, from the cache file when it has one."""
    version = importlib.metadata.version("lm_eval")
    path = cache_dir() / f"lm-eval-tasks-{version}.json"
    try:
        record = json.loads(path.read_text())
        if record["lm_eval_version"] == version:
            return frozenset(record["tasks"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no cache yet, or an unreadable one: index again and rewrite it
    names = sorted(_indexed(None, True).all_tasks)
    write_atomic(path, json.dumps({"lm_eval_version": version, "tasks": names}).encode())
    return frozenset(names)


def cache_dir() -> Path:
    if folder := os.environ.get("OPTBENCH_CACHE_DIR"):
        return Path(folder)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "optbench"


def _resolved(tasks_dir: str) -> str:
    return str(Path(tasks_dir).resolve())


@functools.cache
def _indexed(tasks_dir: str | None, with_lm_eval_tasks: bool) -> TaskManager:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=tasks_dir, include_defaults=with_lm_eval_tasks)
