"""`optbench eval`: a tiny multiple-choice task on local data gives exactly the accuracy (and length-normalised
accuracy) computed here from the model's own log-probabilities, written to the run's downstream.json; bad input is
one line and exit 2 with nothing written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from optbench.config.compose import compose, to_yaml
from tests.downstream.helpers import DOCS, hand_computed, lm_eval, train_run, write_task

pytestmark = pytest.mark.xdist_group("downstream-cli")  # one worker trains the run once


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return train_run(tmp_path_factory.mktemp("eval"))


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory) -> Path:
    return write_task(tmp_path_factory.mktemp("tasks"))


def test_eval_gives_the_hand_computed_accuracy(run_dir, tasks_dir, cli):
    lm_eval()
    result = cli("eval", f"run.dir={run_dir}", "tasks=tiny_mc", f"tasks_dir={tasks_dir}", "batch_size=5")
    assert result.returncode == 0, result.stderr
    record = json.loads((run_dir / "downstream.json").read_text())
    entry = record["tasks"]["tiny_mc"]
    acc, acc_norm = hand_computed(run_dir)
    assert (entry["metrics"]["acc"], entry["metrics"]["acc_norm"]) == (acc, acc_norm)
    assert entry["n_samples"] == entry["n_documents"] == len(DOCS) and entry["num_fewshot"] == 0
    assert entry["version"] == 1.0 and len(entry["hash"]) == 64 and set(entry["stderr"]) == {"acc", "acc_norm"}
    assert record["lm_eval_version"] == lm_eval().__version__ and record["step"] == 40
    assert f"tiny_mc: acc {acc:.4f}" in result.stdout and str(run_dir / "downstream.json") in result.stdout


def test_limit_evaluates_the_first_examples(run_dir, tasks_dir, cli):
    lm_eval()
    result = cli("eval", f"run.dir={run_dir}", "tasks=[tiny_mc]", f"tasks_dir={tasks_dir}", "limit=3")
    assert result.returncode == 0, result.stderr
    entry = json.loads((run_dir / "downstream.json").read_text())["tasks"]["tiny_mc"]
    assert entry["n_samples"] == 3 and entry["metrics"]["acc"] == hand_computed(run_dir, DOCS[:3])[0]


def config_only_run(folder: Path) -> Path:
    """A folder holding a training config but no checkpoint."""
    folder.mkdir()
    (folder / "config.yaml").write_text(to_yaml(compose([])))
    return folder


@pytest.mark.parametrize("args, needle", [
    (["run.dir=/no/such/run", "tasks=tiny_mc"], "run.dir=/no/such/run has no config.yaml"),
    (["run.dir={run}"], "optbench eval needs tasks=NAME"),
    (["tasks=tiny_mc"], "optbench eval needs run.dir=DIR"),
    (["run.dir={run}", "tasks=tiny_mc", "weights=final"], "unknown weights 'final'; valid: averaged, model"),
    (["run.dir={run}", "tasks=tiny_mc", "weights=averaged"], "kept no weight average"),
    (["run.dir={run}", "tasks=tiny_mc", "shots=5"], "Key 'shots' not in 'EvalRequest'; valid keys: run.dir, tasks"),
    (["run.dir={run}", "tasks=tiny_mc", "limit=0"], "limit=0 must be positive"),
    (["run.dir={run}", "tasks=tiny_mc", "limit=, "], "optbench eval: while parsing a block node; valid keys:"),
    (["run.dir={run}", "tasks=tiny_mc", "tasks_dir=/no/such/tasks"], "tasks_dir=/no/such/tasks is not a folder"),
    (["run.dir={config_only}", "tasks=tiny_mc"], "has no usable checkpoint"),
    (["run.dir={not_a_run}", "tasks=tiny_mc"], "its config.yaml is not an optbench training run's (Missing key model)"),
], ids=["no-run-dir", "no-tasks", "no-run", "bad-weights", "no-average", "bad-key", "bad-limit", "bad-yaml",
        "no-tasks-dir", "no-checkpoint", "not-a-training-run"])
def test_bad_input_is_one_line_and_exit_2(run_dir, tasks_dir, tmp_path, cli, args, needle):
    lm_eval()
    (tmp_path / "not-a-run").mkdir()
    (tmp_path / "not-a-run" / "config.yaml").write_text("suite: tiny\n")  # a bench's, say
    paths = {"run": run_dir, "config_only": config_only_run(tmp_path / "config-only"),
             "not_a_run": tmp_path / "not-a-run"}
    args = [arg.format(**paths) for arg in args]
    if not any(arg.startswith("tasks_dir=") for arg in args):
        args.append(f"tasks_dir={tasks_dir}")
    assert_refused(cli, args, needle, list(paths.values()))


@pytest.mark.slow  # indexes lm-eval's own ~15k tasks to know the name is none of them (~10 s)
def test_an_unknown_task_is_named_with_the_closest_ones(run_dir, tasks_dir, cli):
    lm_eval()
    assert_refused(cli, [f"run.dir={run_dir}", "tasks=tiny_mc,hellaswg", f"tasks_dir={tasks_dir}"],
                   "unknown task 'hellaswg' in tasks; valid: hellaswag", [run_dir])


def test_a_task_whose_data_is_missing_is_one_line(run_dir, tmp_path, cli):
    lm_eval()
    tasks = write_task(tmp_path / "tasks")
    (tasks / "tiny_mc.jsonl").unlink()
    assert_refused(cli, [f"run.dir={run_dir}", "tasks=tiny_mc", f"tasks_dir={tasks}"],
                   "a task's data cannot be loaded (", [run_dir])


def test_a_missing_lm_eval_is_one_line_naming_the_extra(run_dir, tasks_dir, cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` raises ImportError
    assert_refused(cli, [f"run.dir={run_dir}", "tasks=tiny_mc", f"tasks_dir={tasks_dir}"],
                   "needs lm-eval, which is not installed: pip install 'optbench[eval]'", [run_dir])


def assert_refused(cli, args: list[str], needle: str, run_dirs: list[Path]) -> None:
    """`optbench eval ARGS` exits 2 with one line holding `needle`, and no run's downstream.json changes (the
    successful tests above may have written one) nor has a temporary file left beside it."""
    before = {folder: _result(folder) for folder in run_dirs}
    result = cli("eval", *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert needle in result.stderr
    for folder in run_dirs:
        assert _result(folder) == before[folder] and not list(folder.glob(".downstream.json*"))


def _result(folder: Path) -> bytes | None:
    path = folder / "downstream.json"
    return path.read_bytes() if path.exists() else None
