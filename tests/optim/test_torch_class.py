"""optim=torch: any torch.optim-style class by import path, under optbench's routing, schedules, checkpoints and
suites; a bad target or keyword is one line naming it with the valid ones, exit 2."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from optbench import optim
from optbench.bench.protocol import freeze
from optbench.bench.suite import defaults, load_suite, run_overrides, search_space
from optbench.config.compose import compose
from optbench.errors import UserError
from optbench.optim.hybrid import HybridOptimizer
from optbench.optim.search_space import Choice
from tests.conftest import tiny_run
from tests.optim.harness import (assert_resume_is_bit_identical, compare_with_reference, lm_batches,
                                 reference_groups, reference_roles, tiny_lm)

RMSPROP = {"momentum": 0.9, "alpha": 0.95, "centered": True}


def test_rmsprop_through_the_adapter_matches_torch_rmsprop_on_groups_built_by_hand():
    # decay_embeddings=False: the tied embedding/head table does not decay either, so only matrices do.
    compared = compare_with_reference(
        ours=lambda m: optim.create("torch", m, target="torch.optim:RMSprop", lr=1e-3, weight_decay=0.1,
                                    decay_embeddings=False, kwargs=RMSPROP),
        reference=lambda m: torch.optim.RMSprop(reference_groups(m, weight_decay=0.1, decay_embeddings=False),
                                                lr=1e-3, **RMSPROP),
        steps=10, rtol=0.0, atol=0.0)  # the same class on the same groups: bit for bit
    assert compared.steps == 10


def test_every_keyword_reaches_the_class():
    cfg = optim.make_config("torch", target="torch.optim:RMSprop", kwargs={"momentum": 0.9})
    built = optim.build(cfg, tiny_lm())
    assert cfg.kwargs["momentum"] == 0.9 and cfg.kwargs["alpha"] == 0.99  # given, and the class's own default
    assert {key: built.defaults[key] for key in cfg.kwargs} == cfg.kwargs


def test_its_state_resumes_bit_identically():
    assert_resume_is_bit_identical("torch", lm_batches(12), 6, target="torch.optim:RMSprop", kwargs=RMSPROP)


def test_it_trains_from_the_command_line_and_records_every_keyword(tmp_path, corpus, cli):
    result = cli("train", *tiny_run(tmp_path, corpus), "train.steps=6", "eval.every=0", "eval.sample_tokens=0",
                 "optim=torch", "optim.target=torch.optim:RMSprop", "optim.lr=1e-3", "optim.weight_decay=0.1",
                 "optim.kwargs={momentum: 0.9}", "optim.kwargs.alpha=0.95")
    assert result.returncode == 0, result.stderr
    run = tmp_path / "run"
    recorded = yaml.safe_load((run / "config.yaml").read_text())["optim"]
    assert recorded["target"] == "torch.optim:RMSprop"
    assert recorded["kwargs"]["momentum"] == 0.9 and recorded["kwargs"]["alpha"] == 0.95
    assert recorded["kwargs"]["centered"] is False  # the class's own default, recorded
    routing = json.loads((run / "routing.json").read_text())
    assert {(row["role"], row["optimizer"], row["weight_decay"]) for row in routing} == {
        ("embedding", "torch", 0.1), ("vector", "torch", 0.0), ("matrix", "torch", 0.1)}
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


def test_matrix_only_gives_the_class_only_matrices_and_the_rest_to_the_backup():
    model = tiny_lm()
    opt = optim.create("torch", model, target="torch.optim:SGD", lr=0.1, matrix_only=True,
                       kwargs={"momentum": 0.9})
    assert isinstance(opt, HybridOptimizer)
    assert isinstance(opt.parts["matrix"], torch.optim.SGD) and isinstance(opt.parts["backup"], torch.optim.AdamW)
    roles, params = reference_roles(model), dict(model.named_parameters())
    taken = lambda part: {id(p) for group in opt.parts[part].param_groups for p in group["params"]}  # noqa: E731
    assert taken("matrix") == {id(params[name]) for name, role in roles.items() if role == "matrix"}
    assert taken("backup") == {id(params[name]) for name, role in roles.items() if role != "matrix"}

    plain = optim.create("torch", tiny_lm(), target="torch.optim:SGD", lr=0.1)
    assert isinstance(plain, torch.optim.SGD)  # matrix_only=false: the class takes every role itself


@pytest.mark.parametrize("overrides, message", [
    (["optim.target=torch.optim:RMSpropp"],
     "optim.target=torch.optim:RMSpropp: torch.optim has no 'RMSpropp'; valid: RMSprop"),
    (["optim.target=no_such_package.optim:Thing"],
     "optim.target=no_such_package.optim:Thing: cannot import no_such_package.optim (No module named "
     "'no_such_package')"),
    (["optim.target=torch.nn:Linear"], "optim.target=torch.nn:Linear is not a torch.optim.Optimizer subclass"),
    (["optim.target=torch.optim.RMSprop"], "optim.target=torch.optim.RMSprop must be package.module:Class"),
    (["optim.target=torch.optim:RMSprop", "optim.kwargs.momentun=0.9"],
     "optim.kwargs.momentun: torch.optim:RMSprop takes no keyword 'momentun'; valid: alpha, eps, momentum, "
     "centered, capturable, foreach, maximize, differentiable"),
    (["optim.target=torch.optim:RMSprop", "optim.kwargs.momentum=-0.5"],
     "optim.target=torch.optim:RMSprop refused its settings: Invalid momentum value: -0.5"),
    (["optim.kwargs.lr=0.1"], "optim.kwargs.lr: set optim.lr instead"),
    (["optim.target=torch.optim:Rprop", "optim.weight_decay=0.1"],
     "optim.weight_decay=0.1: torch.optim:Rprop takes no weight_decay"),
])
def test_bad_targets_and_keywords_are_one_line_exit_2(tmp_path, corpus, cli, overrides, message):
    result = cli("train", *tiny_run(tmp_path, corpus), "optim=torch", *overrides)
    assert result.returncode == 2
    assert result.stderr.startswith(f"optbench: error: {message}") and result.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()


def torch_suite(tmp_path, **torch_entry) -> dict:
    return {"name": "t", "base": ["model=gpt2", "train.steps=10"], "scenarios": [{"name": "a"}],
            "optimizers": [{"name": "adamw"}, {"name": "torch", **torch_entry}],
            "tuning": {"method": "coordinate", "trials": 4}}


def write_suite(tmp_path, suite: dict):
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def test_a_suite_fixes_and_tunes_keywords_of_the_class(tmp_path):
    path = write_suite(tmp_path, torch_suite(tmp_path, fixed={"target": "torch.optim:RMSprop", "kwargs.alpha": 0.95},
                                             search={"kwargs.momentum": {"choice": [0.0, 0.9]}}))
    suite = load_suite(path)
    entry = suite.optimizer("torch")
    assert search_space(entry)["kwargs.momentum"] == Choice((0.0, 0.9))
    assert "lr" in search_space(entry)  # a decade either side of the default, as for any spec without a space
    for resolved in (entry, freeze(suite).optimizer("torch")):  # the suite as written, and as a bench froze it
        assert defaults(resolved)["kwargs.momentum"] == 0  # coordinate descent starts at RMSprop's own default
        assert defaults(resolved)["kwargs.alpha"] == 0.95
    cfg = compose(run_overrides(suite, suite.scenarios[0], entry, {"kwargs.momentum": 0.9, "lr": 1e-3}, seed=0))
    assert cfg.optim.target == "torch.optim:RMSprop"
    assert (cfg.optim.kwargs["momentum"], cfg.optim.kwargs["alpha"], cfg.optim.lr) == (0.9, 0.95, 1e-3)


def test_a_suite_naming_a_keyword_the_class_lacks_is_one_line(tmp_path):
    path = write_suite(tmp_path, torch_suite(tmp_path, fixed={"target": "torch.optim:RMSprop"},
                                             search={"kwargs.momentun": {"choice": [0.0, 0.9]}}))
    with pytest.raises(UserError, match=r"optimizer torch has no hyperparameter 'kwargs.momentun'; valid: "
                                        r"kwargs.momentum") as err:
        load_suite(path)
    assert "\n" not in str(err.value)
