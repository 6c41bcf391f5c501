"""SGD: ours (torch.optim.SGD wired through routing and the config) against torch.optim.SGD built directly on the
test's own groups, with momentum, Nesterov and weight decay all on, so that dropping any of them shows."""

import pytest
import torch

from optbench import optim
from optbench.optim.registry import make_config
from tests.optim.harness import compare_with_reference, reference_groups

HP = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1)


def reference(model, **overrides):
    hp = {**HP, **overrides}
    return torch.optim.SGD(reference_groups(model, hp["weight_decay"]), lr=hp["lr"], momentum=hp["momentum"],
                           nesterov=hp["nesterov"], foreach=True)


def test_matches_torch_sgd_with_nesterov_and_weight_decay():
    # The same code on both sides: bit-identical (rtol = atol = 0), so any difference is wiring (groups, decay
    # per role, nesterov, momentum).
    result = compare_with_reference(lambda m: optim.create("sgd", m, **HP), reference, rtol=0.0, atol=0.0)
    assert result.steps == 20


@pytest.mark.parametrize("dropped", [dict(nesterov=False), dict(weight_decay=0.0), dict(momentum=0.0, nesterov=False)])
def test_each_setting_changes_the_trajectory(dropped):
    """The comparison above can see each setting: a reference without one of them parts from ours."""
    with pytest.raises(AssertionError, match="step"):
        compare_with_reference(lambda m: optim.create("sgd", m, **HP), lambda m: reference(m, **dropped),
                               rtol=0.0, atol=0.0)


def test_defaults():
    cfg = make_config("sgd")
    assert (cfg.lr, cfg.momentum, cfg.dampening, cfg.nesterov, cfg.weight_decay) == (0.1, 0.9, 0.0, True, 0.0)
