"""One conformance suite over every registered optimizer (as HeavyBall's smoke test and optax's
_common_test do): it learns, resumes bit-identically from a saved state, is deterministic, rejects bad
hyperparameters in one line, and declares its provenance and search space."""

import dataclasses

import pytest
import torch

from optbench import optim
from optbench.errors import UserError
from tests.optim.harness import lm_batches, through_disk, tiny_lm, train

NAMES = optim.names()
STEPS = 40
TINY_LM_HPARAMS = {
    # Relative-step optimizers whose paper defaults move a 0.02-std init too little in 40 steps: Lion moves
    # each weight by exactly lr per step, LAMB each layer by lr times its norm. Their updates are checked
    # step by step against references at other settings; here only "it learns" is asserted.
    "lion": {"lr": 1e-3},
    "lamb": {"lr": 1e-2},
}


@pytest.mark.parametrize("name", NAMES)
def test_loss_falls_on_a_tiny_language_model(name):
    model = tiny_lm()
    losses = train(model, optim.create(name, model, **TINY_LM_HPARAMS.get(name, {})), lm_batches(STEPS), name=name)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert all(torch.isfinite(torch.tensor(losses)))
    assert last < first - 0.25, f"{name}: loss {first:.3f} -> {last:.3f} in {STEPS} steps"


@pytest.mark.parametrize("name", NAMES)
def test_resume_from_a_saved_state_is_bit_identical(name):
    batches = lm_batches(20)
    model = tiny_lm()
    opt = optim.create(name, model)
    train(model, opt, batches[:10], name=name)
    saved_model, saved_opt = through_disk(model.state_dict()), through_disk(opt.state_dict())
    train(model, opt, batches[10:], name=name, first_step=10)

    resumed = tiny_lm(seed=1)  # different init: everything must come from the saved state
    resumed.load_state_dict(saved_model)
    resumed_opt = optim.create(name, resumed)
    resumed_opt.load_state_dict(saved_opt)
    train(resumed, resumed_opt, batches[10:], name=name, first_step=10)
    for (key, a), (_, b) in zip(model.named_parameters(), resumed.named_parameters()):
        assert torch.equal(a, b), f"{name}: {key} differs after resume"


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_trajectory(name):
    runs = []
    for _ in range(2):
        model = tiny_lm()
        train(model, optim.create(name, model), lm_batches(5), name=name)
        runs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(*runs)


def _unit_interval_fields(cls) -> list[str]:
    """Hyperparameters that must lie in [0, 1): betas and momenta."""
    return [f.name for f in dataclasses.fields(cls) if f.name.startswith(("beta", "momentum"))
            and isinstance(getattr(cls(), f.name), float)]


@pytest.mark.parametrize("name", NAMES)
def test_invalid_hyperparameters_are_one_line_errors(name):
    spec = optim.get(name)
    cases = [({"lr": -1.0}, "lr"), ({"lr_typo": 1.0}, "unknown hyperparameter 'lr_typo'")]
    cases += [({field: 1.0}, field) for field in _unit_interval_fields(spec.config_cls)]
    cases += [({field: -0.1}, field) for field in _unit_interval_fields(spec.config_cls)]
    for hparams, needle in cases:
        with pytest.raises(UserError, match=needle) as info:
            optim.create(name, tiny_lm(), **hparams)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", NAMES)
def test_declares_source_reference_and_search_space(name):
    spec = optim.get(name)
    assert spec.source and spec.reference
    assert "lr" in spec.search_space, f"{name} should tune its learning rate"
