"""Suite files: the controlled-variable protocol and every mistake reported in one line before any run."""

from __future__ import annotations


import pytest
import yaml

from optbench.bench.suite import load_suite, parse_dimension, run_key, run_overrides, search_space
from optbench.errors import UserError
from optbench.optim.search_space import Choice, LogUniform

VALID = {
    "name": "t",
    "base": ["model=gpt2", "train.steps=10"],
    "scenarios": [{"name": "a", "overrides": {"train.batch_size": 4}, "target_loss": 3.0}],
    "optimizers": [{"name": "adamw"}, {"name": "muon", "fixed": {"momentum": 0.9},
                                       "search": {"lr": {"log": [0.01, 0.1], "grid": [0.02, 0.05]}}}],
    "tuning": {"method": "grid", "trials": 4},
    "final": {"seeds": [0, 1]},
}


def write(tmp_path, **changes):
    suite = {**VALID, **changes}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def test_a_valid_suite_loads_with_registry_ranges_and_its_replacements(tmp_path):
    suite = load_suite(write(tmp_path))
    muon = suite.optimizer("muon")
    space = search_space(muon)
    assert space["lr"] == LogUniform(0.01, 0.1, (0.02, 0.05))
    assert "momentum" not in space  # held fixed, so not searched
    assert isinstance(space["weight_decay"], Choice)  # the registry's range, untouched
    overrides = run_overrides(suite, suite.scenarios[0], muon, {"lr": 0.02}, seed=7)
    assert overrides == ["model=gpt2", "train.steps=10", "optim=muon", "train.batch_size=4", "optim.momentum=0.9",
                         "optim.lr=0.02", "train.seed=7", "train.data_seed=7"]


@pytest.mark.parametrize("changes, message", [
    ({"optimizers": [{"name": "adamq"}]}, "unknown optimizer 'adamq'; valid: radam, nadam, adamw"),
    ({"optimizers": [{"name": "adamw", "fixed": {"momentum": 0.9}}]}, "optimizer adamw has no hyperparameter 'momentum'"),
    ({"scenarios": [{"name": "a", "overrides": {"optim.lr": 0.1}}]}, "a scenario fixes everything but the optimizer"),
    ({"scenarios": [{"name": "a", "overrides": {"train.seed": 3}}]}, "sets train.seed, which the bench sets"),
    ({"base": ["optim.weight_decay=0.1"]}, "optimizer settings belong under optimizers[].fixed"),
    ({"tuning": {"method": "random"}}, "unknown tuning.method 'random'"),
    ({"tuning": {"method": "tpe", "trials": None}}, "tuning.method=tpe needs a trial budget"),
    ({"baseline": "lion"}, "baseline 'lion' is not among the suite's optimizers"),
    ({"scenarios": [{"name": "a"}, {"name": "a"}]}, "scenario names repeated in the suite: a"),
    ({"optimizers": [{"name": "adamw", "search": {"lr": {"log": [0.1, 0.01]}}}]}, "must be [low, high] with low < high"),
    ({"optimizers": [{"name": "adamw", "search": {"lr": {"log": [1e-4, 1e-2], "grid": [0.5]}}}]}, "outside"),
    ({"optimizers": [{"name": "adamw", "search": {"lr": {"between": [1, 2]}}}]}, "must be one of {log: [lo, hi]}"),
    ({"final": {"seeds": []}}, "final.seeds must name at least one seed"),
    ({"tuning": {"trials": "many"}}, "tuning.trials"),
    ({"execution": {"nproc_per_trial": 0}}, "execution.nproc_per_trial=0 must be at least 1"),
    ({"execution": {"nproc_per_trial": 2}, "tuning": {"prune": True}},
     "tuning.prune reads a trial's evaluations in its worker, which a trial on execution.nproc_per_trial=2 ranks"),
    ({"execution": {"nproc_per_trial": 2, "gpus": [3, 3]}},
     "execution.gpus=[3, 3] has fewer GPUs than the 2 ranks of a trial"),
])
def test_mistakes_are_one_line_user_errors(tmp_path, changes, message):
    with pytest.raises(UserError) as err:
        load_suite(write(tmp_path, **changes))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_suite_names_the_shipped_ones():
    with pytest.raises(UserError, match=r"unknown suite 'tiyn'; valid: tiny"):
        load_suite("tiyn")


def test_parse_dimension_kinds():
    assert parse_dimension("x", {"choice": [1, 2]}) == Choice((1, 2))
    assert parse_dimension("x", {"uniform": [0.0, 1.0], "grid": [0.5]}).grid == (0.5,)


def test_run_key_is_a_pure_function_of_hyperparameters_and_seed():
    assert run_key({"lr": 0.1, "b": 2}, 0) == run_key({"b": 2, "lr": 0.1}, 0)
    assert run_key({"lr": 0.1}, 0) != run_key({"lr": 0.1}, 1) != run_key({"lr": 0.2}, 1)
    assert run_key({"lr": 0.1}, 3).startswith("seed3-")


def test_cli_bad_suite_exits_2_in_one_line_and_writes_nothing(tmp_path, cli):
    path = write(tmp_path, optimizers=[{"name": "adamw", "fixed": {"beta9": 0.9}}])
    out = tmp_path / "results"
    proc = cli("bench", str(path), "--out", str(out))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "optbench: error: optimizer adamw has no hyperparameter 'beta9'; valid: beta2, beta1"]
    assert not out.exists()


def test_a_bad_value_in_a_scenario_fails_before_anything_is_written(tmp_path, cli):
    path = write(tmp_path, scenarios=[{"name": "a", "overrides": {"train.batch_size": -1}}])
    out = tmp_path / "results"
    proc = cli("bench", str(path), "--out", str(out))
    assert proc.returncode == 2
    assert proc.stderr.strip() == "optbench: error: train.batch_size=-1 must be positive"
    assert not out.exists()


def test_rerunning_into_results_of_a_different_protocol_is_refused(tmp_path):
    from optbench.bench.launch import check_compatible
    from optbench.bench import layout
    from optbench.bench.suite import to_yaml

    out = tmp_path / "results"
    out.mkdir()
    layout.suite_file(out).write_text(to_yaml(load_suite(write(tmp_path))))
    check_compatible(load_suite(write(tmp_path, final={"seeds": [0, 1, 2]})), out)  # more seeds: fine
    added = VALID["optimizers"] + [{"name": "lion"}]
    check_compatible(load_suite(write(tmp_path, optimizers=added)), out)  # another optimizer: fine
    with pytest.raises(UserError, match="with a different scenarios"):
        check_compatible(load_suite(write(tmp_path, scenarios=[{"name": "b"}])), out)
    with pytest.raises(UserError, match=r"tuned optimizer adamw under another protocol \(trials: None -> 2\)"):
        check_compatible(load_suite(write(tmp_path, optimizers=[{"name": "adamw", "trials": 2}, VALID["optimizers"][1]])), out)
    with pytest.raises(UserError, match="final.seeds may only grow"):
        check_compatible(load_suite(write(tmp_path, final={"seeds": [5]})), out)



def test_a_grid_value_outside_the_optimizers_own_range_is_refused_up_front(tmp_path):
    from optbench.bench.launch import check_runs

    suite = load_suite(write(tmp_path, optimizers=[{"name": "adamw", "search": {"beta2": {"choice": [0.95, 1.5]}}}]))
    with pytest.raises(UserError, match=r"optim.beta2=1.5 must be in \[0, 1\)"):
        check_runs(suite)


def test_a_matrix_optimizers_backup_is_set_by_dotted_name(tmp_path):
    from optbench.config.compose import compose

    muon = {"name": "muon", "fixed": {"backup.lr": 0.004}, "search": {"backup.beta2": {"choice": [0.9, 0.99]}}}
    suite = load_suite(write(tmp_path, optimizers=[{"name": "adamw"}, muon]))
    entry = suite.optimizer("muon")
    assert "backup.beta2" in search_space(entry)
    cfg = compose(run_overrides(suite, suite.scenarios[0], entry, {"backup.beta2": 0.9}, seed=0))
    assert (cfg.optim.backup.lr, cfg.optim.backup.beta2) == (0.004, 0.9)
    with pytest.raises(UserError, match="optimizer muon has no hyperparameter 'backup.beta9'"):
        load_suite(write(tmp_path, optimizers=[{"name": "adamw"}, {"name": "muon", "fixed": {"backup.beta9": 1}}]))


@pytest.mark.parametrize("url, error", [
    ("sqlite:////nonexistent-folder/study.db", "cannot open the study database"),
    ("mysql://nobody@nowhere/db", "workers claim trials in SQLite or PostgreSQL only, not mysql"),  # claims unserialised
])
def test_an_unusable_storage_url_fails_before_anything_is_written(tmp_path, cli, url, error):
    out = tmp_path / "results"
    proc = cli("bench", str(write(tmp_path)), "--out", str(out), "--storage", url)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"optbench: error: --storage {url}: {error}")
    assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()
