"""The model registry: family name -> (config class, model class), filled by `@register` in each family file.

A new family is one file: a `ModelConfig` subclass whose `name` defaults to the family name, a
`CausalLM` subclass decorated with `@register(...)`, an import line in `optbench/models/__init__.py`,
and YAML presets (at least `<name>-debug`) under `optbench/configs/model/`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from optbench.config.schema import ModelConfig
from optbench.errors import check, check_choice
from optbench.models.layers import round_up


@dataclass(frozen=True)
class ModelSpec:
    """One registered model family."""

    name: str
    config_cls: type[ModelConfig]
    model_cls: type[nn.Module]
    description: str


MODELS: dict[str, ModelSpec] = {}


def register(name: str, config_cls: type[ModelConfig], description: str) -> Callable[[type], type]:
    """Class decorator adding a model family to MODELS under `name`."""
    if config_cls.name != name:
        raise ValueError(f"{config_cls.__name__}.name defaults to '{config_cls.name}', expected '{name}'")

    def decorator(model_cls: type[nn.Module]) -> type[nn.Module]:
        if name in MODELS:
            raise ValueError(f"model '{name}' is already registered by {MODELS[name].model_cls.__name__}")
        MODELS[name] = ModelSpec(name, config_cls, model_cls, description)
        return model_cls

    return decorator


def config_classes() -> dict[str, type[ModelConfig]]:
    """Family name -> config dataclass, for registering each as a Hydra option `model=<name>`."""
    return {name: spec.config_cls for name, spec in MODELS.items()}


def model_vocab_size(cfg: ModelConfig, dataset_vocab: int) -> int:
    """The embedding table's size for a dataset whose tokenizer has `dataset_vocab` tokens.

    `cfg.vocab_size` when given (it must cover the dataset); else the dataset's vocabulary rounded
    up to `cfg.pad_vocab_multiple`, as nanoGPT pads GPT-2's 50257 to 50304 for faster matmuls.
    The padding rows are never targets, so training pushes their logits down and they stay unused.
    """
    if cfg.vocab_size is not None:
        check(cfg.vocab_size >= dataset_vocab,
              f"model.vocab_size={cfg.vocab_size} is smaller than the dataset's vocabulary ({dataset_vocab})")
        return cfg.vocab_size
    check(cfg.pad_vocab_multiple > 0, f"model.pad_vocab_multiple={cfg.pad_vocab_multiple} must be positive")
    return round_up(dataset_vocab, cfg.pad_vocab_multiple)


def build(cfg: ModelConfig, vocab_size: int, seq_len: int) -> nn.Module:
    """The model `cfg` describes, for a dataset of `vocab_size` tokens and contexts of `seq_len`.

    Weights are initialised from torch's global RNG: seed it first. Build under
    `torch.device("meta")` to count parameters of big models without allocating them.
    """
    check_choice("model", cfg.name, MODELS)
    spec = MODELS[cfg.name]
    if not isinstance(cfg, spec.config_cls):
        raise TypeError(f"model '{cfg.name}' needs a {spec.config_cls.__name__}, got {type(cfg).__name__}")
    return spec.model_cls(cfg, model_vocab_size(cfg, vocab_size), seq_len)
