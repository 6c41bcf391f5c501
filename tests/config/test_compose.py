"""Composition, overrides and every kind of config error (one line, closest valid choices)."""

import pytest

from optbench.config.compose import compose, group_options, load_yaml, to_yaml
from optbench.errors import UserError


def test_defaults_are_the_nanogpt_cpu_recipe():
    cfg = compose([])
    assert (cfg.model.name, cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd) == ("gpt2", 4, 4, 128)
    assert (cfg.data.name, cfg.optim.name, cfg.schedule.name) == ("shakespeare-char", "adamw", "cosine")
    assert (cfg.train.steps, cfg.train.batch_size, cfg.train.seq_len) == (2000, 12, 64)


def test_the_issue_example_composes():
    cfg = compose(["model=llama", "data=wikitext-2", "optim=adamw", "optim.lr=3e-3", "train.steps=500",
                   "train.batch_size=16", "train.seq_len=128", "run.dir=runs/demo"])
    assert type(cfg.model).__name__ == "LlamaConfig"
    assert (cfg.data.name, cfg.optim.lr, cfg.train.steps, cfg.run.dir) == ("wikitext-2", 3e-3, 500, "runs/demo")


def test_presets_and_experiments_extend_the_schemas():
    assert compose(["model=gpt2-124m"]).model.n_layer == 12
    cfg = compose(["experiment=nanogpt-shakespeare"])
    assert (cfg.optim.beta2, cfg.schedule.warmup_steps, cfg.data.sampling) == (0.99, 100, "random")
    wsd = compose(["schedule=wsd", "schedule.decay_frac=0.1"]).schedule
    assert (wsd.name, wsd.decay_shape, wsd.decay_frac) == ("wsd", "sqrt", 0.1)


def test_each_optimizer_brings_its_own_keys():
    assert compose(["optim=sgd", "optim.nesterov=false"]).optim.nesterov is False
    with pytest.raises(UserError, match=r"unknown key 'optim.beta2'"):
        compose(["optim=sgd", "optim.beta2=0.9"])


@pytest.mark.parametrize("overrides, pattern", [
    (["train.stpes=3"], r"^unknown key 'train.stpes'; valid: train.steps"),
    (["trian.steps=3"], r"^unknown key 'trian'; valid: train"),
    (["model=lama"], r"^unknown model 'lama'; valid: llama"),
    (["optim=adamm"], r"^unknown optim 'adamm'; valid: .*\badamw\b"),
    (["modle=gpt2"], r"^unknown key 'modle'; valid: model"),
    (["train.steps=abc"], r"^invalid value for train.steps: .*'abc'"),
    (["model.dropout=lots"], r"^invalid value for model.dropout"),
    (["schedule.name=cosin"], r"^unknown schedule.name 'cosin'; valid: cosine"),
    (["train.dtype=fp8"], r"^unknown train.dtype 'fp8'; valid: .*float"),
    (["optim.lr=-1"], r"optim.lr=-1.0 must be non-negative"),
    (["optim.beta2=1.0"], r"optim.beta2=1.0 must be in \[0, 1\)"),
    (["model.n_embd=130"], r"must be divisible by model.n_head"),
])
def test_config_errors_are_one_line(overrides, pattern):
    with pytest.raises(UserError, match=pattern) as info:
        compose(overrides)
    assert "\n" not in str(info.value)


def test_group_options_list_yaml_presets_and_registered_schemas():
    assert {"gpt2", "llama", "gpt2-124m"} <= set(group_options("model"))
    assert {"adamw", "sgd", "adamw-llm"} <= set(group_options("optim"))


def test_config_yaml_round_trips(tmp_path):
    cfg = compose(["model=llama", "model.qk_norm=true", "optim=sgd", "eval.at_steps=[5,7]"])
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(cfg))
    assert load_yaml(path) == cfg


def _equivalence_cases() -> list[list[str]]:
    """Override lists of every shape the commands and suites pass: presets, experiments, nested keys, lists,
    null, quoted strings, and each shipped suite's runs (its first scenario with every optimizer no earlier suite
    had, its last scenario with its baseline)."""
    from optbench.bench.suite import SUITES_DIR, load_suite, run_overrides

    cases = [[], ["model=llama", "data=wikitext-2", "optim.lr=3e-3", "run.dir=runs/demo"],
             ["experiment=nanogpt-shakespeare", "train.steps=7"], ["model=gpt2-124m", "schedule=wsd"],
             ["optim=muon", "optim.backup.lr=3e-3", "optim.backup.weight_decay=0"],
             ["optim=sgd", "optim.nesterov=false", "eval.at_steps=[3,5]", "train.threads=null"],
             ["eval.prompt='ROMEO: hi'", "optim.lr=1e-3", "optim=adamw", "model.n_layer=2"]]
    seen = set()
    for path in sorted(SUITES_DIR.glob("*.yaml")):
        suite = load_suite(path)
        first, *rest = suite.scenarios
        fresh = [entry for entry in suite.optimizers if entry.name not in seen]  # (Hydra's path costs ~0.2 s)
        seen |= {entry.name for entry in fresh}
        cases += [run_overrides(suite, first, entry, {}, 3) for entry in fresh]
        cases += [run_overrides(suite, s, suite.optimizer(suite.baseline), {}, 3) for s in rest[-1:]]
    by_choices = {}  # the cache is keyed by the group choices: one case per distinct set
    for overrides in cases:
        choices = frozenset(o for o in overrides if "." not in o.partition("=")[0])
        by_choices.setdefault(choices, overrides)
    return list(by_choices.values())


def test_the_cached_path_composes_what_hydra_composes():
    """compose_dict sets `key=value` overrides on a cached tree of the group choices; the result must be the tree
    Hydra composes from the whole command, for every kind of override the commands and suites use."""
    from omegaconf import OmegaConf

    from optbench.config.compose import _compose_from_cached_choices, _hydra_compose

    cases = _equivalence_cases()
    assert len(cases) > 25
    for overrides in cases:
        fast = _compose_from_cached_choices(tuple(overrides))
        assert fast is not None, f"{overrides} left the cached path"
        assert OmegaConf.to_container(fast) == OmegaConf.to_container(_hydra_compose(tuple(overrides))), overrides


def test_an_override_parsed_once_composes_afresh_each_time():
    """A line is parsed once per process (a worker composes the same suite lines for every trial): what one
    composition makes of a parsed list is its own, and the next composition of that line starts from the text."""
    first = compose(["eval.at_steps=[10,20]"])
    first.eval.at_steps.append(30)
    assert compose(["eval.at_steps=[10,20]"]).eval.at_steps == [10, 20]
    assert compose(["eval.at_steps=[10,20]", "eval.at_steps=[5]"]).eval.at_steps == [5]


@pytest.mark.parametrize("overrides", [["+train.extra=1"], ["~eval"], ["optim.lr=1,2"], ["train.steps=abc"],
                                       ["train.stpes=3"], ["optim=sgd", "optim.beta2=0.9"]])
def test_anything_else_takes_hydras_own_path(overrides):
    """Additions, deletions, sweeps and every error go through Hydra itself, so users see its checks and our
    one-line rewording of its messages."""
    from optbench.config.compose import _compose_from_cached_choices

    assert _compose_from_cached_choices(tuple(overrides)) is None


def test_an_unknown_experiment_is_an_error_not_the_defaults():
    """Hydra skips a missing choice of an optional group; optbench names it and the closest recipes."""
    with pytest.raises(UserError, match=r"^unknown experiment 'nanogpt-shakespear'; valid: nanogpt-shakespeare"):
        compose(["experiment=nanogpt-shakespear"])
    assert compose(["experiment=nanogpt-shakespeare"]).optim.beta2 == 0.99
