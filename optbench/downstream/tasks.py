"""Which lm-evaluation-harness tasks a name can mean: lm-eval's own, and a folder of task YAMLs (`tasks_dir`).

Indexing lm-eval's own ~15k task configs takes seconds, so a `tasks_dir` that defines every requested task is
used alone (it must then be self-contained: its YAMLs may `include` files beside them, not name lm-eval's tasks);
otherwise its tasks are added to lm-eval's, a local name taking precedence. Indexes are kept for the process.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from optbench.errors import UserError, check, closest

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager

INSTALL_HINT = "pip install 'optbench[eval]' (lm-evaluation-harness)"


def require_lm_eval(what: str) -> None:
    """A one-line UserError when lm-eval, an optional extra, is not installed."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise UserError(f"{what} needs lm-eval, which is not installed: {INSTALL_HINT}") from None


def task_manager(tasks: Sequence[str], tasks_dir: str | None, key: str = "tasks") -> TaskManager:
    """The TaskManager that knows every one of `tasks`; a UserError naming the first unknown one (as `key`, the
    option the user set) and the closest known names."""
    check(bool(tasks), f"{key} is empty; name lm-eval tasks, e.g. {key}=hellaswag,arc_easy")
    if tasks_dir is not None:
        check(Path(tasks_dir).is_dir(), f"tasks_dir={tasks_dir} is not a folder (of lm-eval task YAMLs)")
        local = _indexed(str(Path(tasks_dir).resolve()), False)
        if all(task in local.all_tasks for task in tasks):
            return local
    manager = _indexed(str(Path(tasks_dir).resolve()) if tasks_dir else None, True)
    for task in tasks:
        if task not in manager.all_tasks:
            raise UserError(f"unknown task '{task}' in {key}; valid: {', '.join(closest(task, manager.all_tasks))}")
    return manager


@functools.cache
def _indexed(tasks_dir: str | None, with_lm_eval_tasks: bool) -> TaskManager:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=tasks_dir, include_defaults=with_lm_eval_tasks)
