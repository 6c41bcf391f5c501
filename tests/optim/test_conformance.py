"""One conformance suite over every registered optimizer (as HeavyBall's smoke test and optax's _common_test do),
through optbench.check, the code of `optbench check-optimizer`: it learns, its state survives the checkpoint format,
it resumes bit-identically, is deterministic, leaves frozen and gradient-less parameters alone, does nothing at
lr 0, trains bf16 parameters (or refuses them clearly), rejects bad hyperparameters in one line, and declares its
provenance and search space.

Each check runs here one by one over every optimizer at its defaults; the synthetic problems, the costly part of
the whole check, run in tests/check/test_checks.py for representative ones.
"""

import dataclasses

import pytest

from optbench import optim
from optbench.check import PASS, from_config
from optbench.check.lm import tiny_lm
from optbench.check.runner import CHECKS
from optbench.errors import UserError
from optbench.optim.algorithms import mulo, velo

NAMES = optim.names()
RANDOM_WEIGHTS = {
    # Learned optimizers need meta-trained weights; here they run on deterministic random ones (written once per
    # session, passed as weights=<dir>), which exercise every mechanism but have no reason to descend. Their
    # "it learns" check is a hand-built descending net in tests/optim/test_velo.py and test_mulo.py.
    "velo": velo.write_random_weights,
    "mulo": mulo.write_random_weights,
}
PER_OPTIMIZER = ("state-round-trip", "untouched", "lr-zero", "bf16")
"""The LM checks besides loss-falls, for every optimizer (loss-falls has its own test below, since it does not apply
to learned optimizers on random weights). `resume` and `same-seed` are left to
tests/reliability/test_resume_every_optimizer.py, which holds every optimizer to both more strictly: through the real
trainer and its checkpoints, a crashed and rerun run must equal an uninterrupted one from the same seed, bit for bit.
tests/check runs the two through this code for representative optimizers."""


@pytest.fixture(scope="session")
def learned(tmp_path_factory) -> dict[str, dict]:
    """name -> the hyperparameters every test here adds: weights=<dir of random weights> for learned optimizers."""
    root = tmp_path_factory.mktemp("random_weights")
    return {name: {"weights": str(write(root / name))} for name, write in RANDOM_WEIGHTS.items()}


def subject(name: str, learned: dict):
    return from_config(optim.make_config(name, **learned.get(name, {})))


def assert_passes(outcome, name: str) -> None:
    assert outcome.status == PASS, f"{name}: {outcome.value}; {outcome.note}"


# A learned optimizer with random meta-weights has no reason to descend: VeLO's and muLO's updates are instead
# replayed against PyLO's own trajectories (test_velo.py / test_mulo.py: test_replays_pylo_trajectory*).
@pytest.mark.parametrize("name", [n for n in NAMES if n not in RANDOM_WEIGHTS])
def test_loss_falls_on_a_tiny_language_model(name):
    assert_passes(CHECKS["loss-falls"](subject(name, {})), name)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("check", PER_OPTIMIZER)
def test_conformance_check(check, name, learned):
    assert_passes(CHECKS[check](subject(name, learned)), name)


def _unit_interval_fields(cls) -> list[str]:
    """Hyperparameters that must lie in [0, 1): betas and momenta."""
    return [f.name for f in dataclasses.fields(cls) if f.name.startswith(("beta", "momentum"))
            and isinstance(getattr(cls(), f.name), float)]


@pytest.mark.parametrize("name", NAMES)
def test_invalid_hyperparameters_are_one_line_errors(name, learned):
    spec = optim.get(name)
    cases = [({"lr": -1.0}, "lr"), ({"lr_typo": 1.0}, "unknown hyperparameter 'lr_typo'")]
    cases += [({field: 1.0}, field) for field in _unit_interval_fields(spec.config_cls)]
    cases += [({field: -0.1}, field) for field in _unit_interval_fields(spec.config_cls)]
    for hparams, needle in cases:
        with pytest.raises(UserError, match=needle) as info:
            optim.create(name, tiny_lm(), **{**learned.get(name, {}), **hparams})
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", NAMES)
def test_declares_source_reference_and_search_space(name):
    spec = optim.get(name)
    assert spec.source and spec.reference
    assert "lr" in spec.search_space, f"{name} should tune its learning rate"
