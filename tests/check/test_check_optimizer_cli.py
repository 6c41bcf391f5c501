"""`optbench check-optimizer`: deliberately broken optimizers fail exactly the check that names their fault (exit
1); bad input is one line and exit 2; --json carries the table's rows.

The optimizers are in tests/check/optimizers.py, reached as `package.module:Class` through optim=torch as a
user's own would be.
"""

import json

import pytest

from tests.check.optimizers import MODULE


def check(cli, tmp_path, target: str, *overrides: str) -> tuple:
    out = tmp_path / "check.json"
    result = cli("check-optimizer", f"{MODULE}:{target}", "optim.lr=0.1", *overrides, "--json", str(out))
    return result, json.loads(out.read_text())


@pytest.mark.parametrize("target, failing, named", [
    ("ObjectInState", "state-round-trip", "state.0.record holds a StepRecord"),
    ("IgnoresLr", "lr-zero", "parameters moved at lr 0"),
])
def test_a_broken_optimizer_fails_exactly_its_check(cli, tmp_path, target, failing, named):
    from optbench.check import NAMES

    result, report = check(cli, tmp_path, target)
    assert result.returncode == 1, result.stderr
    assert report["failures"] == [failing]
    assert f"check-optimizer {MODULE}:{target}: " in result.stdout and " 1 failed" in result.stdout
    assert named in result.stdout
    rows = {row["check"]: row for row in report["checks"]}
    assert list(rows) == list(NAMES) and report["config"]["target"] == f"{MODULE}:{target}"
    assert rows[failing]["status"] == "fail" and named in rows[failing]["value"]
    assert all(row["status"] in ("pass", "info") for name, row in rows.items() if name != failing)


def test_only_runs_the_checks_named(cli, tmp_path):
    out = tmp_path / "sub" / "sgd.json"
    result = cli("check-optimizer", "sgd", "optim.momentum=0.95", "--only", "lr-zero", "--only", "state-bytes",
                 "--json", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert [row["check"] for row in report["checks"]] == ["lr-zero", "state-bytes"]
    assert report["config"]["momentum"] == 0.95
    assert report["checks"][1]["measured"]["bytes_per_parameter"] == 4.0  # one momentum buffer in fp32


@pytest.mark.parametrize("args, needle", [
    (["adamww"], "unknown optimizer 'adamww'; valid: adamw"),
    (["adamw", "optim.lr_typo=1"], "optim.lr_typo"),
    (["adamw", "optim.beta2=1.0"], "optim.beta2=1.0 must be in [0, 1)"),
    (["adamw", "train.steps=3"], "only optim.* overrides, got 'train.steps=3'"),
    (["no_such_module:Opt"], "cannot import no_such_module"),
    (["torch.optim:AdamWW"], "valid: AdamW"),
    (["adamw", "--only", "lr-zeros"], "unknown check 'lr-zeros'; valid: lr-zero"),
])
def test_bad_input_is_one_line_exit_2(cli, args, needle):
    result = cli("check-optimizer", *args)
    assert result.returncode == 2, result.stdout
    assert result.stderr.count("\n") == 1 and needle in result.stderr
    assert result.stdout == ""
