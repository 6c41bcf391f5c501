"""eval.downstream: the tasks run on the final checkpoint when training completes, into the run's downstream.json;
their names (and the lm-eval extra) are checked before the run directory exists."""

from __future__ import annotations

import json
import sys

import pytest

from optbench.errors import UserError
from tests.downstream.helpers import DOCS, hand_computed, lm_eval, train_run, write_task


def test_eval_downstream_writes_downstream_json_when_training_completes(tmp_path):
    lm_eval()
    tasks = write_task(tmp_path / "tasks")
    run_dir = train_run(tmp_path, "eval.downstream=[tiny_mc]", f"eval.downstream_tasks_dir={tasks}",
                        "eval.downstream_limit=5")
    record = json.loads((run_dir / "downstream.json").read_text())
    entry = record["tasks"]["tiny_mc"]
    assert record["step"] == 40 and record["limit"] == 5 and entry["n_samples"] == 5
    assert (entry["metrics"]["acc"], entry["metrics"]["acc_norm"]) == hand_computed(run_dir, DOCS[:5])
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


def test_a_failed_downstream_evaluation_says_the_run_itself_completed(tmp_path):
    lm_eval()
    tasks = write_task(tmp_path / "tasks")
    (tasks / "tiny_mc.jsonl").unlink()  # found by name before the run, missing when its data is read
    with pytest.raises(UserError, match=r"training completed in .*, but eval.downstream failed: a task's data cannot "
                                        r"be loaded .*; once fixed, run `optbench eval run.dir=.* tasks=tiny_mc`"):
        train_run(tmp_path, "eval.downstream=[tiny_mc]", f"eval.downstream_tasks_dir={tasks}")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"
    assert not (tmp_path / "run" / "downstream.json").exists()


@pytest.mark.parametrize("overrides, needle", [
    (["eval.downstream_tasks_dir=/no/such/tasks"], "tasks_dir=/no/such/tasks is not a folder"),
    (["eval.downstream_limit=0"], "eval.downstream_limit=0 must be positive"),
], ids=["no-tasks-dir", "bad-limit"])
def test_bad_downstream_settings_fail_before_the_run_directory_exists(tmp_path, overrides, needle):
    lm_eval()
    with pytest.raises(UserError, match=needle):
        train_run(tmp_path, "eval.downstream=[tiny_mc]", *overrides)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # indexes lm-eval's own ~15k tasks to know the name is none of them (~10 s)
def test_an_unknown_downstream_task_fails_before_the_run_directory_exists(tmp_path):
    lm_eval()
    tasks = write_task(tmp_path / "tasks")
    with pytest.raises(UserError, match="unknown task 'tiny_mq' in eval.downstream; valid: tiny_mc"):
        train_run(tmp_path, "eval.downstream=[tiny_mq]", f"eval.downstream_tasks_dir={tasks}")
    assert not (tmp_path / "run").exists()


def test_a_missing_lm_eval_fails_before_the_run_directory_exists(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` raises ImportError
    with pytest.raises(UserError, match=r"eval.downstream needs lm-eval, which is not installed: pip install"):
        train_run(tmp_path, "eval.downstream=[hellaswag]")
    assert not (tmp_path / "run").exists()
