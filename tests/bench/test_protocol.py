"""The frozen protocol: OUT/suite.yaml holds every optimizer's resolved search space and defaults; planning,
workers and the report read only it, and a rerun after the registry changed is refused with the keys named."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from omegaconf import OmegaConf

from optbench import optim
from optbench.bench import launch, layout
from optbench.bench.worker import work
from optbench.bench.protocol import freeze_entry
from optbench.bench.suite import OptimizerEntry, Suite, defaults, is_frozen, load_suite, search_space, to_yaml
from optbench.errors import UserError
from optbench.optim import registry
from optbench.optim.algorithms.adamw import AdamWConfig
from optbench.optim.search_space import Choice, grid_points
from tests.bench.test_bench_run import micro_suite


@pytest.mark.parametrize("name", optim.names())
def test_every_optimizers_protocol_survives_the_round_trip_through_the_file(name, tmp_path):
    entry = OptimizerEntry(name)
    path = tmp_path / "suite.yaml"
    path.write_text(to_yaml(Suite(name="x", optimizers=[freeze_entry(entry)])))
    frozen = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Suite), OmegaConf.load(path))).optimizers[0]
    assert is_frozen(frozen)
    live, read = search_space(entry), search_space(frozen)
    assert list(read) == list(live)
    for key in live:
        assert type(read[key]) is type(live[key]) and grid_points(read[key]) == grid_points(live[key])
    assert defaults(frozen) == {k: list(v) if isinstance(v, tuple) else v for k, v in defaults(entry).items()}


def drift(monkeypatch, search_space=None, **config_defaults):
    """Change adamw in the registry as a later optbench might: other defaults, another search space."""
    spec = registry.OPTIMIZERS["adamw"]
    changes = {}
    if config_defaults:
        changes["config_cls"] = dataclasses.make_dataclass(
            "DriftedAdamW", [(k, type(v), dataclasses.field(default=v)) for k, v in config_defaults.items()],
            bases=(AdamWConfig,))
    if search_space is not None:
        changes["search_space"] = search_space
    monkeypatch.setitem(registry.OPTIMIZERS, "adamw", dataclasses.replace(spec, **changes))


@pytest.fixture
def prepared(tmp_path, corpus):
    """A micro suite whose adamw tunes its registry beta2 choices (left to the registry) and a suite lr grid."""
    path = micro_suite(tmp_path, corpus, seeds=(0,))
    spec = yaml.safe_load(path.read_text())
    del spec["optimizers"][0]["search"]["beta2"]
    path.write_text(yaml.safe_dump(spec))
    suite, out, url = launch.prepare(path, tmp_path / "out", None)
    return path, suite, out, url


def test_the_file_holds_the_resolved_space_and_every_default(prepared):
    _, _, out, _ = prepared
    adamw = yaml.safe_load(layout.suite_file(out).read_text())["optimizers"][0]
    assert adamw["space"] == {"lr": {"log": [1e-4, 1e-1], "grid": [1e-3, 1e-2]},
                              "beta2": {"choice": [0.95, 0.98, 0.99, 0.999]}}
    assert adamw["defaults"] == {"lr": 0.001, "weight_decay": 0.1, "decay_embeddings": True, "beta1": 0.9,
                                 "beta2": 0.95, "eps": 1e-08, "cautious": False}
    assert adamw["search"] == {"lr": {"log": [1e-4, 1e-1], "grid": [1e-3, 1e-2]}, "weight_decay": None}


def test_planning_and_the_report_read_only_the_file(prepared, monkeypatch):
    _, _, out, url = prepared
    drift(monkeypatch, search_space={"beta2": Choice((0.5,))}, beta2=0.5)
    suite = load_suite(layout.suite_file(out))  # as a worker reads it
    work(suite, out, url, "w0", threads=1, max_trials=1)
    from optbench.report.load import load_bench

    bench = load_bench(out)
    assert [r.hparams for r in bench.runs] == [{"lr": 1e-3, "beta2": 0.95}]  # the frozen grid, not the drifted one
    entry = bench.suite.optimizer("adamw")
    assert grid_points(search_space(entry)["beta2"]) == (0.95, 0.98, 0.99, 0.999)
    assert defaults(entry)["beta2"] == 0.95


def test_a_rerun_after_the_registry_changed_is_refused_with_the_keys_named(prepared, monkeypatch, cli):
    path, _, out, _ = prepared
    drift(monkeypatch, eps=1e-10, search_space={"lr": optim.search_space.LogUniform(1e-4, 1e-2),
                                                "beta2": Choice((0.9, 0.95))})
    proc = cli("bench", str(path), "--out", str(out))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"optbench: error: {out} tuned optimizer adamw under another protocol (defaults.eps: 1e-08 -> 1e-10; "
        "space.beta2.choice: [0.95, 0.98, 0.99, 0.999] -> [0.9, 0.95]); use another --out")
    with pytest.raises(UserError, match=r"no longer what this bench froze .*defaults\.eps: 1e-08 -> 1e-10"):
        launch.run_worker(out, layout.sqlite_url(out), "w0", 1)  # a worker of the changed optbench refuses too


def test_adding_optimizers_and_seeds_stays_allowed(prepared):
    path, _, out, _ = prepared
    spec = yaml.safe_load(path.read_text())
    spec["optimizers"].append({"name": "sgd", "search": {"lr": {"log": [1e-3, 1.0], "grid": [0.1]}, "momentum": None}})
    spec["final"]["seeds"] = [0, 1]
    path.write_text(yaml.safe_dump(spec))
    suite, _, _ = launch.prepare(path, out, None)
    assert [o.name for o in suite.optimizers] == ["adamw", "lion", "sgd"] and all(map(is_frozen, suite.optimizers))
