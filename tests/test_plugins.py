"""Plugins: an optimizer (or model family) defined in a file outside the repository registers through the public API
and trains like a built-in, whether it comes from OPTBENCH_PLUGINS, --plugin, a suite's `plugins:` or an entry
point; mistakes in a plugin are one line naming it, exit 2."""

from __future__ import annotations

import textwrap
import uuid
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from hydra.core.config_store import ConfigStore

from optbench import plugins
from optbench.bench import launch, layout
from optbench.bench.suite import load_suite
from optbench.bench.worker import work
from optbench.config.compose import _store_schemas, compose
from optbench.errors import UserError
from optbench.models.registry import MODELS
from optbench.optim.registry import OPTIMIZERS
from optbench.training import checkpoint
from optbench.training.trainer import Trainer
from tests.conftest import tiny_run

HEAVY_BALL = '''
"""Heavy-ball SGD (Polyak 1964): v <- mu v + g; p <- p (1 - lr wd) - lr v."""
from dataclasses import dataclass

import torch

from optbench.optim import OptimConfig, OptimizerSpec, register


@dataclass
class HeavyBallConfig(OptimConfig):
    name: str = "NAME"
    lr: float = 0.05
    momentum: float = 0.9


class HeavyBall(torch.optim.Optimizer):
    def __init__(self, params, lr, momentum, weight_decay):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                velocity = self.state[p].setdefault("velocity", torch.zeros_like(p))
                velocity.mul_(group["momentum"]).add_(p.grad)
                p.mul_(1 - group["lr"] * group["weight_decay"]).add_(velocity, alpha=-group["lr"])


register(OptimizerSpec(name="NAME", config_cls=HeavyBallConfig, source="a test plugin", reference="Polyak 1964",
                       build=lambda groups, cfg: HeavyBall(groups, cfg.lr, cfg.momentum, cfg.weight_decay)))
'''


@pytest.fixture(autouse=True)
def fresh_process():
    """What a test's plugins registered and ran is forgotten afterwards, as if each test were a process of its own
    (the README's optimizer count, and the plugins a bench records, are read by other tests)."""
    saved = [dict(OPTIMIZERS), dict(MODELS), dict(plugins._LOADED)]
    options = {group: dict(ConfigStore.instance().repo.get(group, {})) for group in ("model", "optim")}
    yield
    forget(saved)
    for group, before in options.items():  # Hydra's options for the plugins' classes, stored once per state of
        ConfigStore.instance().repo[group] = before  # the registries (config/compose.py): stored again as needed
    _store_schemas.cache_clear()


def forget(saved: list[dict]) -> None:
    for registry, before in zip((OPTIMIZERS, MODELS, plugins._LOADED), saved):
        registry.clear()
        registry.update(before)


def heavy_ball(folder: Path, name: str | None = None, file: str = "heavy_ball.py") -> tuple[Path, str]:
    """A plugin file in `folder` (outside the repository) registering heavy-ball SGD; returns it and the name."""
    name = name or f"heavy-ball-{uuid.uuid4().hex[:8]}"  # Hydra's ConfigStore outlives a test: one name each
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file
    path.write_text(HEAVY_BALL.replace("NAME", name))
    return path, name


def first_step_overrides(tmp_path: Path, corpus: Path, name: str) -> list[str]:
    """One step at a constant lr without clipping, so the update is the closed form of the first step."""
    return [*tiny_run(tmp_path, corpus), f"optim={name}", "optim.lr=0.05", "optim.weight_decay=0.1",
            "train.steps=1", "schedule=constant", "schedule.warmup_steps=0", "train.grad_clip=0",
            "train.dtype=float32", "eval.sample_tokens=0"]


def test_a_plugin_from_the_environment_trains_and_its_first_update_is_the_closed_form(tmp_path, corpus, cli,
                                                                                        monkeypatch):
    plugin, name = heavy_ball(tmp_path / "elsewhere")
    monkeypatch.setenv(plugins.ENV_VAR, str(plugin))
    overrides = first_step_overrides(tmp_path, corpus, name)
    result = cli("train", *overrides)
    assert result.returncode == 0, result.stderr
    trained = checkpoint.load(tmp_path / "run" / "checkpoints" / "step-00000001.pt")["model"]

    # By hand: the first step's velocity is the gradient, so p1 = p0 (1 - lr wd) - lr g0, with wd on every weight
    # of 2 or more dimensions (matrices, the embedding tables and the head tied to one) and none on norms and biases.
    reference = Trainer(compose([*overrides, f"run.dir={tmp_path / 'reference'}"]))
    model = reference.model
    x, y = reference.batches.batch(0, reference.batches.micro_indices()[0])
    logits = model(x)
    F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1)).backward()
    for key, p in model.named_parameters():
        decay = 0.1 if p.dim() >= 2 else 0.0
        expected = p.detach() * (1 - 0.05 * decay) - 0.05 * p.grad
        torch.testing.assert_close(trained[key], expected, rtol=1e-5, atol=1e-7, msg=lambda m, key=key: f"{key}: {m}")
        assert not torch.equal(trained[key], p.detach()), f"{key} did not move"


def test_the_plugin_flag_works(tmp_path, corpus, cli):
    plugin, name = heavy_ball(tmp_path / "elsewhere")
    relative = Path("elsewhere") / plugin.name  # the cli fixture runs in tmp_path
    result = cli("--plugin", str(relative), "train", *tiny_run(tmp_path, corpus), f"optim={name}", "train.steps=3",
                 "eval.every=0", "eval.sample_tokens=0")
    assert result.returncode == 0, result.stderr
    assert '"completed"' in (tmp_path / "run" / "summary.json").read_text()


def test_one_file_named_by_the_environment_and_by_flags_runs_once(tmp_path, cli, monkeypatch):
    plugin, name = heavy_ball(tmp_path / "elsewhere")
    monkeypatch.setenv(plugins.ENV_VAR, str(plugin))
    result = cli("--plugin", str(Path("elsewhere") / plugin.name), "--plugin", str(plugin), "optim", "list")
    assert result.returncode == 0, result.stderr  # a second run of the file would register its name twice
    assert plugins.loaded().count(str(plugin)) == 1 and name in result.stdout


def test_a_module_plugin_named_by_path_and_by_module_runs_once(tmp_path, monkeypatch):
    plugin, name = heavy_ball(tmp_path / "pkgroot", file="hb_plugin_module.py")
    monkeypatch.syspath_prepend(str(plugin.parent))
    plugins.load("hb_plugin_module")
    plugins.load(str(plugin))  # would raise "registered twice" if it ran again
    assert name in OPTIMIZERS
    assert plugins.digests(["hb_plugin_module"])["hb_plugin_module"] == plugins.digests([str(plugin)])[str(plugin)]


def test_registration_after_a_compose_is_seen_by_the_next_compose(tmp_path):
    plugin, name = heavy_ball(tmp_path)
    compose(["optim=adamw"])
    with pytest.raises(UserError, match=f"unknown optim '{name}'"):
        compose([f"optim={name}"])
    plugins.load(str(plugin))
    cfg = compose([f"optim={name}", "optim.momentum=0.5"])
    assert (cfg.optim.name, cfg.optim.momentum, cfg.optim.lr) == (name, 0.5, 0.05)
    assert OPTIMIZERS[name].search_space["lr"].grid == (0.005, 0.0158, 0.05, 0.158, 0.5)  # a decade either side


def test_a_model_family_from_a_plugin_composes(tmp_path):
    family = f"plugin-gpt-{uuid.uuid4().hex[:8]}"
    plugin = tmp_path / "family.py"
    plugin.write_text(textwrap.dedent(f'''
        from dataclasses import dataclass

        from optbench.models import GPT2, GPT2Config, register


        @dataclass
        class PluginGPTConfig(GPT2Config):
            name: str = "{family}"


        @register("{family}", PluginGPTConfig, "GPT-2 under another name, from a plugin")
        class PluginGPT(GPT2):
            pass
    '''))
    plugins.load(str(plugin))
    assert compose([f"model={family}", "model.n_layer=3"]).model.n_layer == 3


@pytest.mark.parametrize("source, needle", [
    ('import not_a_module_anywhere\n', "ModuleNotFoundError: No module named 'not_a_module_anywhere'"),
    ('def broken(:\n', "SyntaxError"),
    (HEAVY_BALL.replace("NAME", "sgd"), "optimizer 'sgd' registered twice (first by optbench.optim.algorithms.sgd)"),
])
def test_a_broken_or_clashing_plugin_is_one_line_naming_the_file_exit_2(tmp_path, cli, source, needle):
    plugin = tmp_path / "outside" / "bad_plugin.py"
    plugin.parent.mkdir()
    plugin.write_text(source)
    before = sorted(OPTIMIZERS)
    result = cli("--plugin", str(plugin), "optim", "list")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"optbench: error: plugin {plugin}: ") and needle in result.stderr
    assert result.stderr.count("\n") == 1
    assert sorted(OPTIMIZERS) == before


def test_a_plugin_clashing_with_another_plugin_is_named_and_takes_nothing_with_it(tmp_path, cli):
    first, name = heavy_ball(tmp_path / "a")
    second = tmp_path / "b" / "second.py"
    second.parent.mkdir()
    # Its first registration is new, its second clashes with the first plugin: neither may stay registered.
    second.write_text(HEAVY_BALL.replace("NAME", f"{name}-too") + HEAVY_BALL.replace("NAME", name))
    result = cli("--plugin", str(first), "--plugin", str(second), "optim", "list")
    assert result.returncode == 2
    assert result.stderr == (f"optbench: error: plugin {second}: ValueError: optimizer '{name}' registered twice "
                             f"(first by {OPTIMIZERS[name].build.__module__})\n")
    assert f"{name}-too" not in OPTIMIZERS


def test_missing_files_and_modules_are_one_line(cli):
    assert cli("--plugin", "no/such/plugin.py", "optim", "list").stderr.startswith(
        "optbench: error: plugin no/such/plugin.py: no such file")
    assert cli("--plugin", "no_such_plugin_module", "optim", "list").stderr == (
        "optbench: error: plugin no_such_plugin_module: no module named 'no_such_plugin_module' "
        "(nor a file: a path ends in .py)\n")


def test_entry_points_name_modules(tmp_path, monkeypatch):
    _, name = heavy_ball(tmp_path, file="hb_entry_point.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    def installed(*values: str):
        points = [EntryPoint(name="hb", value=value, group=plugins.ENTRY_POINT_GROUP) for value in values]
        monkeypatch.setattr(plugins, "entry_points", lambda group: points if group == plugins.ENTRY_POINT_GROUP else [])

    installed("hb_entry_point")
    plugins.load_configured()
    assert name in OPTIMIZERS and "hb_entry_point" in plugins.loaded()
    installed("hb_entry_point:register")
    with pytest.raises(UserError, match="entry point hb = 'hb_entry_point:register' .* must name a module"):
        plugins.load_configured()


def plugin_suite(tmp_path: Path, corpus: Path, name: str) -> Path:
    """A suite naming its plugin relative to its own folder, the baseline and the plugin's optimizer."""
    base = [f"data.source={corpus}", f"data.root={tmp_path / 'prepared'}", "data.num_proc=1", "model=gpt2",
            "model.n_layer=1", "model.n_head=2", "model.n_embd=32", "train.steps=3", "train.batch_size=4",
            "train.seq_len=32", "train.device=cpu", "eval.every=3", "eval.batches=1", "eval.sample_tokens=0"]
    suite = {"name": "plugged", "base": base, "plugins": ["heavy_ball.py"], "scenarios": [{"name": "s"}],
             "optimizers": [{"name": "adamw", "search": {"lr": {"choice": [1e-3]}, "beta2": None, "weight_decay": None}},
                            {"name": name, "search": {"lr": {"choice": [0.05]}}}],
             "tuning": {"method": "grid", "extend": 0}, "final": {"seeds": [0]},
             "execution": {"threads_per_worker": 1, "heartbeat_s": 1, "grace_s": 3}}
    path = tmp_path / "suites" / "plugged.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def test_a_suite_loads_its_plugins_and_workers_load_them_from_the_suite_as_run(tmp_path, corpus):
    plugin, name = heavy_ball(tmp_path / "suites")
    fresh = [dict(OPTIMIZERS), dict(MODELS), dict(plugins._LOADED)]
    _, out, url = launch.prepare(plugin_suite(tmp_path, corpus, name), tmp_path / "out", None)
    as_run = yaml.safe_load(layout.suite_file(out).read_text())
    assert str(plugin) in as_run["plugins"] and len(as_run["plugin_hashes"][str(plugin)]) == 64

    forget(fresh)  # a worker is a process of its own: it has only OUT/suite.yaml to go by
    assert name not in OPTIMIZERS
    worker_suite = load_suite(layout.suite_file(out))
    assert name in OPTIMIZERS
    assert work(worker_suite, out, url, "w0", threads=1) == 2 * 2  # per optimizer: one grid point, one seed
    summaries = list(layout.runs_dir(out).glob(f"s/{name}/*/summary.json"))
    assert len(summaries) == 1 and '"completed"' in summaries[0].read_text()

    plugin.write_text(plugin.read_text() + "\n# edited\n")
    with pytest.raises(UserError, match=f"plugin {plugin} changed since the suite in .*suite.yaml ran with it"):
        load_suite(layout.suite_file(out))
    with pytest.raises(UserError, match=f"holds results of plugin {plugin} as it was before an edit"):
        launch.prepare(plugin_suite(tmp_path, corpus, name), out, None)
