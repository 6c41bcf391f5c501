"""A suite's downstream set: each completed final run is evaluated on the suite's lm-eval tasks once, tuning runs
never; the report shows the means; bad settings fail before the bench writes anything."""

from __future__ import annotations

import json

import pytest
import yaml

from optbench.bench import downstream, launch, layout
from optbench.bench.worker import work
from optbench.errors import UserError
from optbench.report import write_report
from tests.bench.test_bench_run import micro_suite, run_dirs
from tests.downstream.helpers import lm_eval, write_task


def with_downstream(path, **spec):
    suite = yaml.safe_load(path.read_text())
    suite["optimizers"] = suite["optimizers"][:1]  # adamw: 2 grid points, then the best over seeds 0 and 1
    suite["downstream"] = spec
    path.write_text(yaml.safe_dump(suite))
    return path


def test_final_runs_are_evaluated_once_and_tuning_runs_never(tmp_path, corpus):
    lm_eval()
    tasks = write_task(tmp_path / "tasks")
    path = with_downstream(micro_suite(tmp_path, corpus, steps=10), tasks=["tiny_mc"], tasks_dir=str(tasks))
    suite, out, url = launch.prepare(path, tmp_path / "out", None)
    assert work(suite, out, url, "w0", threads=1) == 2 + 2
    evaluated = {}
    for run in run_dirs(out):
        phases = json.loads(layout.trial_file(run).read_text())["phases"]
        evaluated[tuple(phases)] = (run / "downstream.json").exists()
    assert evaluated == {("tune",): False, ("tune", "final"): True, ("final",): True}
    final = next(r for r in run_dirs(out) if (r / "downstream.json").exists())
    record = json.loads((final / "downstream.json").read_text())
    assert set(record["tasks"]) == {"tiny_mc"} and record["tasks"]["tiny_mc"]["n_samples"] == 8
    before = (final / "downstream.json").stat().st_mtime_ns
    assert downstream.evaluate_final(suite.downstream, final) is None
    assert (final / "downstream.json").stat().st_mtime_ns == before  # evaluated once
    text = write_report(out)["markdown"].read_text()
    assert "tiny_mc acc" in text


def test_a_failing_evaluation_is_recorded_and_the_training_result_stands(tmp_path, corpus):
    lm_eval()
    tasks = write_task(tmp_path / "tasks")
    path = with_downstream(micro_suite(tmp_path, corpus, steps=10, seeds=(0,)), tasks=["tiny_mc"],
                           tasks_dir=str(tasks))
    suite, out, url = launch.prepare(path, tmp_path / "out", None)
    (tasks / "tiny_mc.jsonl").unlink()  # the task's data is gone by the time the final run ends
    assert work(suite, out, url, "w0", threads=1) == 2 + 1
    import optuna

    final = optuna.load_study(study_name="micro/s/adamw/final", storage=url).get_trials()[0]
    assert final.state.name == "COMPLETE" and final.value is not None
    assert "tiny_mc" in final.user_attrs["downstream_error"]
    assert not any((r / "downstream.json").exists() for r in run_dirs(out))


@pytest.mark.parametrize("spec, needle", [({"tasks": ["tiny_mc"], "limit": 0}, "downstream.limit=0 must be positive"),
                                          ({"tasks": ["tiny_mc"], "num_fewshot": -1}, "downstream.num_fewshot=-1"),
                                          ({"tasks": ["tiny_mc"], "tasks_dir": "/nowhere"}, "is not a folder")])
def test_bad_downstream_settings_fail_before_anything_is_written(tmp_path, corpus, spec, needle):
    path = with_downstream(micro_suite(tmp_path, corpus), **spec)
    with pytest.raises(UserError, match=needle):
        launch.prepare(path, tmp_path / "out", None)
    assert not (tmp_path / "out").exists()


def test_unknown_tasks_fail_before_anything_is_written(tmp_path, corpus):
    lm_eval()
    tasks = write_task(tmp_path / "tasks")
    path = with_downstream(micro_suite(tmp_path, corpus), tasks=["tiny_mc", "tiny_mcq"], tasks_dir=str(tasks))
    with pytest.raises(UserError, match="tiny_mcq"):
        launch.prepare(path, tmp_path / "out", None)
    assert not (tmp_path / "out").exists()
