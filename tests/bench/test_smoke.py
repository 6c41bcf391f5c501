"""`optbench bench SUITE --smoke`: every trial of a suite composed, each scenario x optimizer trained for a few CPU
steps on a debug-size model, without a mirror, a study database or the suite's own corpora."""

from __future__ import annotations

import json

import pytest
import yaml

from optbench import optim
from optbench.bench.smoke import compose_trial
from optbench.bench.smoke_config import debug_model, smoke_config, smoke_tokenizer, smoke_weights
from optbench.bench.suite import load_suite, search_space
from optbench.config.compose import compose, load_yaml
from optbench.models import config_classes
from optbench.optim.search_space import grid_points
from optbench.training.trainer import Trainer


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No mirror (the smoke's corpus ships in the package) and prepared data under tmp_path."""
    monkeypatch.setenv("OPTBENCH_MIRROR", str(tmp_path / "no-mirror"))
    monkeypatch.setenv("OPTBENCH_DATA_DIR", str(tmp_path / "prepared"))


def first_point(entry) -> dict:
    return {key: grid_points(dim)[0] for key, dim in search_space(entry).items()}


def trimmed_tiny(folder) -> str:
    """The shipped tiny suite (its base and both scenarios) with two of its optimizers, each tuning lr alone: the
    whole shipped suite's smoke runs in CI (.ci/run), this one in seconds."""
    spec = yaml.safe_load(load_suite_text("tiny"))
    kept = [entry for entry in spec["optimizers"] if entry["name"] in ("adamw", "muon")]
    for entry in kept:  # the registry's other ranges left out: lr alone is tuned
        entry["search"].update({key: None for key in optim.get(entry["name"]).search_space if key != "lr"})
    spec["optimizers"] = kept
    folder.mkdir()
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def load_suite_text(name: str) -> str:
    from optbench.bench.suite import resolve_path

    return resolve_path(name).read_text()


def test_the_tiny_suite_passes_through_the_cli_and_writes_only_run_directories(cli, tmp_path, offline):
    path = trimmed_tiny(tmp_path / "suites")
    result = cli("bench", path, "--smoke")
    assert result.returncode == 0, result.stdout + result.stderr
    suite = load_suite(path)
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith(("ok", "FAIL"))] == \
        [f"ok   {s.name}/{o.name}" for s, o in suite.pairs()]
    assert lines[-1].startswith("smoke tiny: 4 of 4 runs completed with a finite loss")
    out = tmp_path / "bench" / "tiny-smoke"
    for scenario, entry in suite.pairs():
        run = out / "smoke" / scenario.name / entry.name
        assert json.loads((run / "summary.json").read_text())["status"] == "completed"
        cfg = load_yaml(run / "config.yaml")
        assert (cfg.model.name, cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd) == ("gpt2", 2, 2, 64)
        assert (cfg.train.steps, cfg.train.device, cfg.train.dtype, cfg.train.compile) == (3, "cpu", "float32", False)
        assert cfg.schedule.name == scenario.overrides["schedule"]
        assert cfg.optim.lr == first_point(entry)["lr"]
        assert not any((run / "checkpoints").glob("*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench", "prepared", "suites"]
    assert sorted(p.name for p in (tmp_path / "bench").iterdir()) == ["tiny-smoke"]  # not the suite's bench/tiny
    assert sorted(p.name for p in out.iterdir()) == ["smoke"]  # no study.db, no suite.yaml


def write_suite(tmp_path, scenario_overrides=None, optimizers=None) -> str:
    """A one-scenario suite on the debug GPT (two scenarios when `scenario_overrides` adds one to break)."""
    scenarios = [{"name": "plain"}] + ([{"name": "broken", "overrides": scenario_overrides}] if scenario_overrides
                                       else [])
    spec = {"name": "mini", "base": ["model=gpt2-debug", "data=shakespeare-char", "train.steps=100"],
            "scenarios": scenarios,
            "optimizers": optimizers or [{"name": "adamw", "search": {"lr": {"log": [1e-4, 1e-2], "grid": [1e-3]},
                                                                      "beta2": None, "weight_decay": None}}],
            "tuning": {"method": "grid"}, "final": {"seeds": [0]}}
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


BAD_GRID = [{"name": "adamw", "search": {"lr": {"log": [1e-4, 1e-2], "grid": [1e-3, 3e-3]},
                                         "beta2": {"choice": [0.95, 1.5]}, "weight_decay": None}}]


@pytest.mark.parametrize("scenario_overrides, optimizers, expected, override", [
    ({"data.tokenizer": "gtp2"}, None,
     "suite mini, scenario broken, optimizer adamw (lr=0.001): unknown data.tokenizer 'gtp2' (closest: gpt2)",
     "data.tokenizer=gtp2"),
    ({"model": "llama-2b"}, None, "suite mini, scenario broken, optimizer adamw (lr=0.001): unknown model 'llama-2b'",
     "model=llama-2b"),
    (None, BAD_GRID, "suite mini, scenario plain, optimizer adamw (lr=0.001, beta2=1.5): optim.beta2=1.5 must be in",
     "optim.beta2=1.5"),
], ids=["tokenizer", "preset", "grid"])
def test_a_trial_that_does_not_compose_is_a_user_error_naming_it_before_anything_trains(
        cli, tmp_path, offline, scenario_overrides, optimizers, expected, override):
    result = cli("bench", write_suite(tmp_path, scenario_overrides, optimizers), "--smoke")
    assert result.returncode == 2
    message = result.stderr.removeprefix("optbench: error: ").rstrip("\n")
    assert "\n" not in message and message.startswith(expected), message
    assert message.endswith(f"[override {override}]"), message
    assert not (tmp_path / "bench").exists()


def test_the_flags_of_a_real_bench_are_refused(cli, tmp_path):
    result = cli("bench", "tiny", "--smoke", "--workers", "2", "--storage", "sqlite:///x.db")
    assert result.returncode == 2
    assert result.stderr == ("optbench: error: --smoke trains here, one run after another, without a study: drop "
                             "--storage, --workers\n")
    assert not (tmp_path / "bench").exists()


def test_a_run_that_crashes_or_diverges_fails_the_smoke_by_name(cli, tmp_path, offline, monkeypatch):
    real = Trainer.train_step

    def train_step(self, step):
        if self.cfg.optim.name == "lion" and step == 1:
            raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
        return real(self, step)
    monkeypatch.setattr(Trainer, "train_step", train_step)
    no_tuning = {"beta2": None, "weight_decay": None}
    optimizers = [{"name": "adamw", "search": {"lr": {"log": [1e-4, 1e-2], "grid": [1e-3]}, **no_tuning}},
                  {"name": "lion", "search": {"lr": {"log": [1e-5, 1e-2], "grid": [1e-4]}, **no_tuning}},
                  # a learning rate of a million: the loss is past train.diverge_loss by the second step
                  {"name": "sgd", "search": {"lr": {"log": [1.0, 1e7], "grid": [1e6]}, "momentum": None,
                                             "weight_decay": None}}]
    result = cli("bench", write_suite(tmp_path, optimizers=optimizers), "--smoke", "--out", str(tmp_path / "out"))
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("ok   plain/adamw: completed") for line in lines)
    assert any(line.startswith("FAIL plain/lion: failed") and "RuntimeError: CUDA error" in line for line in lines)
    assert any(line.startswith("FAIL plain/sgd: diverged") for line in lines)
    assert lines[-1].startswith("smoke mini: 1 of 3 runs completed with a finite loss")
    assert "failed: plain/lion (RuntimeError: CUDA error" in lines[-1] and "plain/sgd (diverged)" in lines[-1]
    assert "Traceback" in (tmp_path / "out" / "smoke" / "plain" / "lion" / "traceback.txt").read_text()


def test_the_smoke_run_keeps_what_the_optimizer_depends_on(tmp_path):
    """pylo-gpt2's muLO runs on a muP GPT-2 124M without a schedule: its smoke run keeps muP, the schedule and the
    optimizer's first grid point, at the debug size."""
    suite = load_suite("pylo-gpt2")
    scenario, entry = suite.scenario("gpt2-124m-constant-mup"), suite.optimizer("mulo")
    trial = compose_trial(suite, scenario, entry, first_point(entry))
    cfg = smoke_config(trial, tmp_path / "run", "gpt2", trial.optim)
    assert (cfg.model.name, cfg.model.n_layer, cfg.model.n_embd, cfg.model.mup) == ("gpt2", 2, 64, True)
    assert cfg.model.dropout == trial.model.dropout == 0.1 and cfg.model.bias == trial.model.bias
    assert (cfg.schedule.name, cfg.schedule.warmup_steps, cfg.optim) == ("constant", 0, trial.optim)
    assert (cfg.data.name, cfg.data.tokenizer, cfg.run.dir) == ("shakespeare-char", "gpt2", str(tmp_path / "run"))
    assert (cfg.train.seed, cfg.eval.sample_tokens, cfg.run.wandb) == (trial.train.seed, 0, False)


def test_a_warmup_frac_trial_keeps_one_warmup_step_in_its_smoke_run(tmp_path):
    """The share is of the trial's steps, not the smoke run's 3: 2% of 19073 warms up, so the smoke run warms up once."""
    trial = compose(["schedule.warmup_steps=0", "schedule.warmup_frac=0.02", "train.steps=19073"])
    cfg = smoke_config(trial, tmp_path / "run", "gpt2", trial.optim)
    assert (cfg.schedule.warmup_steps, cfg.schedule.warmup_frac) == (1, 0.0)


@pytest.mark.parametrize("preset", sorted(config_classes()) + ["gpt2-pom-124m", "llama-1b", "moe-520m"])
def test_every_family_has_a_debug_size_and_keeps_its_own_settings(preset):
    model = compose([f"model={preset}"]).model
    debug = debug_model(model)
    expected = compose([f"model={model.name}-debug"]).model
    assert (debug.name, debug.n_layer, debug.n_head, debug.n_embd) == \
        (model.name, expected.n_layer, expected.n_head, expected.n_embd)
    assert debug.vocab_size is None and getattr(debug, "mixer", None) == getattr(model, "mixer", None)
    assert getattr(debug, "tie_embeddings", None) == getattr(model, "tie_embeddings", None)


def test_a_tokenizer_that_needs_the_network_has_a_named_stand_in(tmp_path):
    data = compose(["data=c4", "data.tokenizer=hf:t5-base", f"data.mirror={tmp_path / 'mirror'}"]).data
    assert smoke_tokenizer(data) == ("char", "hf:t5-base is not available offline; smoke uses char in its place")
    (tmp_path / "mirror" / "tokenizers").mkdir(parents=True)
    (tmp_path / "mirror" / "tokenizers" / "gpt2.tiktoken").write_text("")
    assert smoke_tokenizer(data) == ("gpt2", "hf:t5-base is not available offline; smoke uses gpt2 in its place")
    (tmp_path / "mirror" / "tokenizers" / "t5-base").mkdir()
    (tmp_path / "mirror" / "tokenizers" / "t5-base" / "tokenizer.json").write_text("{}")
    assert smoke_tokenizer(data) == ("hf:t5-base", None)


def test_a_learned_optimizer_without_its_weights_offline_gets_random_ones(tmp_path):
    velo = compose(["optim=velo"]).optim
    stand_in, note = smoke_weights(velo, tmp_path / "velo")
    assert note == (f"velo's weights {velo.weights} are not available offline; smoke uses random meta-weights "
                    "in their place")
    assert stand_in.weights == str(tmp_path / "velo") and (tmp_path / "velo" / "VeLO_RNN" / "config.json").is_file()
    assert smoke_weights(stand_in, tmp_path / "again") == (stand_in, None)  # local weights are used as they are
    adamw = compose([]).optim
    assert smoke_weights(adamw, tmp_path / "adamw") == (adamw, None) and not (tmp_path / "adamw").exists()
