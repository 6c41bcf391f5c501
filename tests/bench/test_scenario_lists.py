"""An optimizer may run in some scenarios only (`optimizers[].scenarios`), as Schedule-Free AdamW runs without a
schedule in its paper: the bench trains it there and nowhere else, the others are not made to run there, and the
report compares it within those scenarios and leaves it out of the profile across scenarios."""

from __future__ import annotations

import yaml
from omegaconf import OmegaConf

import pytest

from optbench.bench import launch, layout
from optbench.bench.suite import load_suite
from optbench.bench.worker import work
from optbench.errors import UserError
from optbench.report import write_report
from tests.bench.test_bench_run import micro_suite, run_dirs


def restricted_suite(tmp_path, corpus):
    path = micro_suite(tmp_path, corpus, steps=10, grid=(1e-3,), seeds=(0,))
    spec = yaml.safe_load(path.read_text())
    spec["scenarios"] = [{"name": "cosine", "target_loss": 3.5},
                         {"name": "constant", "overrides": {"schedule": "constant"}, "target_loss": 3.5}]
    spec["optimizers"][1]["scenarios"] = ["constant"]  # lion, for the test's sake, only without a schedule
    path.write_text(yaml.safe_dump(spec))
    return path


def test_the_bench_runs_an_optimizer_only_in_its_scenarios_and_the_report_says_so(tmp_path, corpus):
    suite, out, url = launch.prepare(restricted_suite(tmp_path, corpus), tmp_path / "out", None)
    assert [(s.name, o.name) for s, o in suite.pairs()] == [("cosine", "adamw"), ("constant", "adamw"),
                                                            ("constant", "lion")]
    work(suite, out, url, "w0", threads=1)
    trained = sorted({(run.parts[-3], run.parts[-2]) for run in run_dirs(out)})
    assert trained == [("constant", "adamw"), ("constant", "lion"), ("cosine", "adamw")]
    assert {(row["scenario"], row["optimizer"]) for row in launch.progress(suite, url)} == set(trained)

    write_report(out)
    report = (out / "report" / "report.md").read_text()
    cosine, constant = report.split("## Scenario `cosine`")[1].split("## Scenario `constant`")
    assert "lion" not in cosine  # not even as a missing row: it never runs there
    constant, profile = constant.split("## Performance profile across scenarios")
    assert "| lion" in constant
    assert "lion" not in profile.split("## Runs by status")[0]


@pytest.mark.parametrize("change, message", [
    (lambda spec: spec["optimizers"][1].update(scenarios=["cosin"]),
     "unknown optimizers.lion.scenarios 'cosin'; valid: cosine"),
    (lambda spec: spec["optimizers"][0].update(scenarios=["constant"]),
     "the baseline adamw must run in every scenario"),
    (lambda spec: spec["optimizers"][1].update(scenarios=[]), "optimizers.lion.scenarios is empty"),
])
def test_a_bad_scenario_list_is_refused(tmp_path, corpus, change, message):
    path = restricted_suite(tmp_path, corpus)
    spec = yaml.safe_load(path.read_text())
    change(spec)
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(UserError, match=message):
        load_suite(path)


def test_results_written_before_the_field_existed_are_the_same_protocol(tmp_path, corpus):
    """A suite.yaml of an earlier version (no `scenarios` key under its optimizers) is not a changed protocol."""
    path = micro_suite(tmp_path, corpus, steps=10, grid=(1e-3,), seeds=(0,))
    suite, out, _ = launch.prepare(path, tmp_path / "out", None)
    saved = OmegaConf.to_container(OmegaConf.load(layout.suite_file(out)))
    for entry in saved["optimizers"]:
        entry.pop("scenarios")
    layout.suite_file(out).write_text(yaml.safe_dump(saved))
    launch.check_compatible(suite, out)
