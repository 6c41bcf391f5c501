"""register() refuses a matrix-only optimizer without a MatrixOptimConfig (no backup to take the other roles)
and a MatrixOptimConfig without the capability (a backup that would never be built)."""

from dataclasses import dataclass

import pytest
import torch

from optbench import optim
from optbench.config.schema import OptimConfig
from optbench.optim import registry
from optbench.optim.hybrid import MatrixOptimConfig


@dataclass
class PlainConfig(OptimConfig):
    name: str = "test-plain"


@dataclass
class MatrixConfig(MatrixOptimConfig):
    name: str = "test-matrix"


def spec(config_cls, matrix_only: bool) -> optim.OptimizerSpec:
    return optim.OptimizerSpec(name=config_cls().name, config_cls=config_cls,
                               build=lambda groups, cfg: torch.optim.SGD(groups, lr=cfg.lr), source="test",
                               reference="test", capabilities=optim.Capabilities(matrix_only=matrix_only))


@pytest.fixture(autouse=True)
def scratch_registry(monkeypatch):
    """Registrations here go to a copy, not the real registry."""
    monkeypatch.setattr(registry, "OPTIMIZERS", dict(registry.OPTIMIZERS))


def test_matrix_only_needs_a_matrix_config():
    with pytest.raises(ValueError, match=r"'test-plain'.*matrix_only=True.*PlainConfig is not a MatrixOptimConfig"):
        registry.register(spec(PlainConfig, matrix_only=True))
    assert "test-plain" not in registry.OPTIMIZERS


def test_a_matrix_config_needs_matrix_only():
    with pytest.raises(ValueError, match=r"'test-matrix'.*matrix_only=False.*MatrixConfig is a MatrixOptimConfig"):
        registry.register(spec(MatrixConfig, matrix_only=False))


@pytest.mark.parametrize("config_cls, matrix_only", [(PlainConfig, False), (MatrixConfig, True)])
def test_agreeing_declarations_register(config_cls, matrix_only):
    registry.register(spec(config_cls, matrix_only))
    assert config_cls().name in registry.OPTIMIZERS


@pytest.mark.parametrize("name", optim.names())
def test_every_registered_optimizer_agrees(name):
    s = optim.get(name)
    assert s.capabilities.matrix_only == issubclass(s.config_cls, MatrixOptimConfig)
