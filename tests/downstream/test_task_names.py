"""Task names are checked against a cache of lm-eval's own names, one file per lm-eval version, so a typo fails
without indexing lm-eval's ~15k task configs; the index is built (and the file written) only when the file is
missing, unreadable or of another version. lm-eval's TaskManager is replaced by a recorder here: the real index
is exercised by the unknown-task tests of the CLI, the trainer and the bench."""

from __future__ import annotations

import importlib.metadata
import json

import pytest

from optbench.downstream import tasks as tasklib
from optbench.errors import UserError
from tests.downstream.helpers import lm_eval, write_task

LM_EVAL_TASKS = ["arc_easy", "hellaswag", "mmlu", "tiny_mc"]


@pytest.fixture
def indexes(monkeypatch, tmp_path):
    """Each TaskManager built, as (include_path, include_defaults); lm-eval's own tasks are LM_EVAL_TASKS."""
    lm_eval()
    import lm_eval.tasks as library  # a submodule lm-eval's package does not import itself
    built = []

    class RecordingTaskManager:
        def __init__(self, include_path=None, include_defaults=True):
            built.append((include_path, include_defaults))
            local = ["tiny_mc"] if include_path else []
            self.all_tasks = local + (LM_EVAL_TASKS if include_defaults else [])

    monkeypatch.setattr(library, "TaskManager", RecordingTaskManager)
    monkeypatch.setenv("OPTBENCH_CACHE_DIR", str(tmp_path / "cache"))
    tasklib._indexed.cache_clear()  # indexes kept for the process by other tests would hide the recorder
    yield built
    tasklib._indexed.cache_clear()


def cache_file(tmp_path):
    return tmp_path / "cache" / f"lm-eval-tasks-{importlib.metadata.version('lm_eval')}.json"


def test_the_first_check_indexes_and_writes_the_cache_later_ones_read_it(indexes, tmp_path):
    assert tasklib.lm_eval_task_names() == frozenset(LM_EVAL_TASKS)
    assert indexes == [(None, True)]
    assert json.loads(cache_file(tmp_path).read_text())["tasks"] == LM_EVAL_TASKS
    tasklib._indexed.cache_clear()  # a new process
    with pytest.raises(UserError, match="unknown task 'hellaswg' in eval.downstream; valid: hellaswag"):
        tasklib.check_names(["hellaswg"], None, "eval.downstream")
    assert indexes == [(None, True)]


@pytest.mark.parametrize("stale", ['{"lm_eval_version": "0.0.1", "tasks": ["old_task"]}', '{"tasks": ["old_task"]}',
                                   '{"lm_eval_version": "', ""], ids=["other-version", "no-version", "cut", "empty"])
def test_a_cache_of_another_version_or_unreadable_is_rebuilt(indexes, tmp_path, stale):
    cache_file(tmp_path).parent.mkdir(parents=True)
    cache_file(tmp_path).write_text(stale)
    assert tasklib.lm_eval_task_names() == frozenset(LM_EVAL_TASKS)
    assert indexes == [(None, True)]
    assert json.loads(cache_file(tmp_path).read_text())["tasks"] == LM_EVAL_TASKS


def test_a_tasks_dir_defining_every_task_needs_no_lm_eval_names(indexes, tmp_path):
    folder = write_task(tmp_path / "tasks")
    manager = tasklib.task_manager(["tiny_mc"], str(folder), "tasks")
    assert manager.all_tasks == ["tiny_mc"] and indexes == [(str(folder.resolve()), False)]
    assert not cache_file(tmp_path).exists()


def test_a_task_of_lm_eval_beside_a_tasks_dir_runs_with_both(indexes, tmp_path):
    folder = write_task(tmp_path / "tasks")
    manager = tasklib.task_manager(["tiny_mc", "arc_easy"], str(folder), "tasks")
    assert indexes == [(str(folder.resolve()), False), (None, True), (str(folder.resolve()), True)]
    assert set(manager.all_tasks) == {"tiny_mc", *LM_EVAL_TASKS}
    with pytest.raises(UserError, match="unknown task 'tiny_mq' in tasks; valid: tiny_mc"):
        tasklib.check_names(["tiny_mq"], str(folder), "tasks")
    assert len(indexes) == 3  # the names came from the cache and the local index kept for the process
