"""One conformance suite over every registered optimizer (as HeavyBall's smoke test and optax's
_common_test do): it learns, resumes bit-identically from a saved state, is deterministic, rejects bad
hyperparameters in one line, and declares its provenance and search space."""

import dataclasses

import pytest
import torch

from optbench import optim
from optbench.errors import UserError
from optbench.optim.algorithms import mulo, velo
from tests.optim.harness import assert_resume_is_bit_identical, lm_batches, tiny_lm, train

NAMES = optim.names()
STEPS = 40
TINY_LM_HPARAMS = {
    # Relative-step optimizers whose paper defaults move a 0.02-std init too little in 40 steps: Lion moves
    # each weight by exactly lr per step, LAMB each layer by lr times its norm. Their updates are checked
    # step by step against references at other settings; here only "it learns" is asserted.
    "lion": {"lr": 1e-3},
    "c-lion": {"lr": 1e-3},
    "lamb": {"lr": 1e-2},
    # kron_torch's lr 3e-4 is a long-run default; heavyball's PSGD-Kron default 1e-3 moves the tiny model.
    "psgd-kron": {"lr": 1e-3},
    # Rectified AdaBelief with beta2 0.999 warms itself up over ~1000 steps (step < 0.14 of full through 40).
    "adabelief": {"beta2": 0.95},
}
RANDOM_WEIGHTS = {
    # Learned optimizers need meta-trained weights; here they run on deterministic random ones (written once per
    # session, passed as weights=<dir>), which exercise every mechanism but have no reason to descend. Their
    # "it learns" check is a hand-built descending net in tests/optim/test_velo.py and test_mulo.py.
    "velo": velo.write_random_weights,
    "mulo": mulo.write_random_weights,
}


@pytest.fixture(scope="session")
def learned(tmp_path_factory) -> dict[str, dict]:
    """name -> the hyperparameters every test here adds: weights=<dir of random weights> for learned optimizers."""
    root = tmp_path_factory.mktemp("random_weights")
    return {name: {"weights": str(write(root / name))} for name, write in RANDOM_WEIGHTS.items()}


# A learned optimizer with random meta-weights has no reason to descend: VeLO's and muLO's updates are instead
# replayed against PyLO's own trajectories (test_velo.py / test_mulo.py: test_replays_pylo_trajectory*).
@pytest.mark.parametrize("name", [n for n in NAMES if n not in RANDOM_WEIGHTS])
def test_loss_falls_on_a_tiny_language_model(name):
    model = tiny_lm()
    losses = train(model, optim.create(name, model, **TINY_LM_HPARAMS.get(name, {})), lm_batches(STEPS), name=name)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert all(torch.isfinite(torch.tensor(losses)))
    assert last < first - 0.25, f"{name}: loss {first:.3f} -> {last:.3f} in {STEPS} steps"


@pytest.mark.parametrize("name", NAMES)
def test_resume_from_a_saved_state_is_bit_identical(name, learned):
    assert_resume_is_bit_identical(name, lm_batches(20), 10, **learned.get(name, {}))


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_trajectory(name, learned):
    runs = []
    for _ in range(2):
        model = tiny_lm()
        train(model, optim.create(name, model, **learned.get(name, {})), lm_batches(5), name=name)
        runs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(*runs)


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
