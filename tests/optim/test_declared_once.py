"""Hyperparameters are declared once: the config dataclass. Building an optimizer from its config's defaults
gives exactly those values in the optimizer's `defaults` and param groups, and no constructor default
contradicts them (Adan once defaulted weight_decay to 0.0 against AdanConfig's 0.02, CAME to 0.0 against 0.01).

The mapping from config field to optimizer key is data, per optimizer family; a config field must either map
to a key or be listed in CONSUMED_BY_BUILDER with where it goes, so a new field cannot go unchecked."""

import dataclasses
import inspect

import pytest
import torch

from optbench import optim
from optbench.optim.algorithms import mulo, velo
from tests.optim.harness import tiny_lm

NAMES = optim.names()
ROUTING = {"decay_embeddings", "backup"}
"""Read by routing (routing.py), not by the optimizer."""

RENAMED = {  # optimizer -> {config field: the optimizer's key}
    "adafactor": {"decay_rate": "beta2_decay"},
    "nadam": {"decouple": "decoupled_weight_decay"},
    "radam": {"decouple": "decoupled_weight_decay"},
}
PACKED = {  # optimizer -> {the optimizer's key: the config fields it packs into a tuple, in order}
    **{name: {"betas": ("beta1", "beta2")} for name in ("adamw", "nadam", "radam", "prodigy", "sf-adamw", "sophiag")},
    "adafactor": {"eps": ("eps1", "eps2")},
}
CONSUMED_BY_BUILDER = {  # optimizer -> config fields the builder or trainer uses instead of passing them on
    "adamw": {"cautious"},  # picks CautiousAdamW over torch.optim.AdamW
    "c-adamw": {"cautious"},
    "adam-mini": {"n_head"},  # splits attention matrices per head
    "adam8bit": {"backend"},  # picks bitsandbytes or optbench's kernel
    "mars-adamw": {"optimize_1d", "lr_1d", "beta1_1d", "beta2_1d", "weight_decay_1d"},  # the AdamW fallback's groups
    "mars-lion": {"optimize_1d", "lr_1d", "beta1_1d", "beta2_1d", "weight_decay_1d"},
    "mars-shampoo": {"optimize_1d", "lr_1d", "beta1_1d", "beta2_1d", "weight_decay_1d"},
    "scion": {"embedding_norm", "embedding_scale", "matrix_scale", "head_scale", "vector_scale"},  # per-role groups
    "sophiag": {"hessian_every"},  # the trainer's Hessian pass
    "mulo": {"weights"},  # the meta-trained network passed in
    "velo": {"weights", "num_steps"},  # the networks passed in; num_steps: the horizon when none is set
    "torch": {"target", "matrix_only", "kwargs"},  # the class, its routing, its keywords (test_torch_class.py)
}
RESOLVED = {  # (optimizer, field) -> the value a documented sentinel stands for, from the config
    ("shampoo", "start_preconditioning_step"): lambda cfg: (cfg.precondition_frequency
                                                           if cfg.start_preconditioning_step == -1
                                                           else cfg.start_preconditioning_step),
}
RANDOM_WEIGHTS = {"velo": velo.write_random_weights, "mulo": mulo.write_random_weights}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("declared_once")
    return {name: {"weights": str(write(root / name))} for name, write in RANDOM_WEIGHTS.items()}


def expected_defaults(name: str, cfg, resolve: bool = True) -> dict:
    """The optimizer key -> value each config field must show up as (`resolve`: sentinels by what they mean)."""
    renamed, packed = RENAMED.get(name, {}), PACKED.get(name, {})
    skip = ROUTING | CONSUMED_BY_BUILDER.get(name, set()) | {"name"} | {f for fields in packed.values() for f in fields}
    expected = {key: tuple(getattr(cfg, f) for f in fields) for key, fields in packed.items()}
    for f in dataclasses.fields(cfg):
        if f.name not in skip:
            resolver = RESOLVED.get((name, f.name)) if resolve else None
            expected[renamed.get(f.name, f.name)] = resolver(cfg) if resolver else getattr(cfg, f.name)
    return expected


def main_part(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """A matrix optimizer's own part (its backup's values are AdamW's, checked under adamw)."""
    return opt.parts["matrix"] if hasattr(opt, "parts") else opt


def built(name: str, weights: dict):
    hparams = weights.get(name, {})
    cfg = optim.make_config(name, **hparams)
    return cfg, main_part(optim.build(cfg, tiny_lm()))


@pytest.mark.parametrize("name", NAMES)
def test_built_optimizer_holds_the_configs_defaults(name, weights):
    cfg, opt = built(name, weights)
    expected = expected_defaults(name, cfg)
    missing = set(expected) - set(opt.defaults)
    assert not missing, f"{name}: config fields {sorted(missing)} reach no optimizer default; map them in this test"
    assert {k: opt.defaults[k] for k in expected} == expected
    # Other roles' groups may carry their own values (vectors: no decay; MARS: its AdamW fallback's *_1d ones).
    matrices = [group for group in opt.param_groups if group["role"] == "matrix"]
    assert matrices and all({k: group[k] for k in expected} == expected for group in matrices)


VARIANTS = {"apollo-mini": "apollo", "c-lion": "lion", "signsgd": "signum"}
"""Registered presets of another optimizer's class: its constructor's defaults are that optimizer's config."""


EXTERNAL = {"adafactor": "torch.optim", "adamw": "torch.optim", "nadam": "torch.optim", "radam": "torch.optim",
            "sgd": "torch.optim", "prodigy": "prodigyopt", "torch": "torch.optim"}
"""Optimizers built as another library's class: its defaults are that library's, and the builders pass every
config field to it (test_built_optimizer_holds_the_configs_defaults checks the result)."""


@pytest.mark.parametrize("name", sorted(EXTERNAL))
def test_external_classes_are_the_libraries_own(name, weights):
    assert type(built(name, weights)[1]).__module__.startswith(EXTERNAL[name])


@pytest.mark.parametrize("name", [n for n in NAMES if n not in VARIANTS and n not in EXTERNAL])
def test_no_constructor_default_contradicts_the_config(name, weights):
    """A constructor default that differs from the config's is a second declaration waiting to be used."""
    cfg, opt = built(name, weights)
    assert type(opt).__module__.startswith("optbench."), f"{name} is built as {type(opt)}: list it in EXTERNAL"
    expected = expected_defaults(name, cfg, resolve=False)
    params = inspect.signature(type(opt).__init__).parameters
    drift = {key: (p.default, expected[key]) for key, p in params.items()
             if key in expected and p.default is not inspect.Parameter.empty and p.default != expected[key]}
    assert not drift, f"{type(opt).__name__}.__init__ defaults (constructor, config): {drift}"
