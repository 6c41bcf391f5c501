"""The comparison machinery itself: compare_with_reference must fail where agreement would say nothing, report
what it compared, and reference_groups must give the roles and decays written out in test_routing.py."""

import pytest
import torch

from tests.optim.harness import (compare_with_reference, lm_batches, reference_groups, reference_roles, tiny_lm)
from tests.optim.test_routing import gpt2_table


class DoNothing(torch.optim.Optimizer):
    def __init__(self, params):
        super().__init__(params, {})

    def step(self, closure=None):
        return None


def sgd(model, **hparams):
    return torch.optim.SGD(model.parameters(), lr=0.1, **hparams)


def test_two_optimizers_that_do_nothing_do_not_pass():
    with pytest.raises(AssertionError, match="moved only 0.00e"):
        compare_with_reference(lambda m: DoNothing(m.parameters()), lambda m: DoNothing(m.parameters()),
                               batches=lm_batches(3), rtol=0.0, atol=0.0)


def test_a_tensor_that_stays_within_its_tolerance_does_not_pass():
    # lr 1e-4: three steps move the norm gains (~1) by well under 10x rtol 1e-5 of their size
    with pytest.raises(AssertionError, match="ln_1.weight moved only"):
        compare_with_reference(lambda m: torch.optim.SGD(m.parameters(), lr=1e-4),
                               lambda m: torch.optim.SGD(m.parameters(), lr=1e-4), batches=lm_batches(3))


def test_reports_what_it_compared():
    result = compare_with_reference(sgd, sgd, batches=lm_batches(3), rtol=0.0, atol=0.0)
    names = [name for name, _ in tiny_lm().named_parameters()]
    assert result.steps == 3 and result.compared == (len(names),) * 3
    assert list(result.max_diff) == names and set(result.max_diff.values()) == {0.0}
    assert min(result.moved.values()) > 0


def test_a_difference_in_one_tensor_fails_at_its_step_and_overrides_are_per_tensor():
    """One step of SGD at lr 1, the reference decaying the final norm gain (~1) by 1e-3: only that tensor differs."""
    def plain(model):
        return torch.optim.SGD(model.parameters(), lr=1.0)

    def decaying_ln_f(model):
        groups = [{"params": [p for n, p in model.named_parameters() if n != "transformer.ln_f.weight"]},
                  {"params": [model.transformer.ln_f.weight], "weight_decay": 1e-3}]
        return torch.optim.SGD(groups, lr=1.0)

    with pytest.raises(AssertionError, match="step 1, parameter transformer.ln_f.weight"):
        compare_with_reference(plain, decaying_ln_f, batches=lm_batches(1))
    result = compare_with_reference(plain, decaying_ln_f, batches=lm_batches(1),
                                    tolerances={"transformer.ln_f.weight": dict(atol=2e-3)},
                                    still=["transformer.ln_f.weight"])  # moves 7e-3: not 10x its atol
    assert [name for name, diff in result.max_diff.items() if diff > 0] == ["transformer.ln_f.weight"]
    assert result.max_diff["transformer.ln_f.weight"] == pytest.approx(1e-3, rel=0.01)


def test_misuse_is_refused():
    with pytest.raises(AssertionError, match="3 batches for 5 steps"):
        compare_with_reference(sgd, sgd, batches=lm_batches(3), steps=5)
    with pytest.raises(AssertionError, match="not parameters"):
        compare_with_reference(sgd, sgd, batches=lm_batches(1), tolerances={"lm_head.weight": dict(atol=1.0)})


@pytest.mark.parametrize("decay_embeddings", [True, False])
def test_reference_groups_follow_the_written_out_table(decay_embeddings):
    model = tiny_lm()
    table = gpt2_table(0.1, 0.1 if decay_embeddings else 0.0)
    assert reference_roles(model) == {name: role for name, (role, _) in table.items()}
    groups = reference_groups(model, 0.1, decay_embeddings=decay_embeddings, tagged=True, lr=0.5)
    assert [g["role"] for g in groups] == ["embedding", "vector", "matrix"]
    params = dict(model.named_parameters())
    for g in groups:
        assert g["lr"] == 0.5 and [params[n] for n in g["names"]] == g["params"]
        assert {table[n] for n in g["names"]} == {(g["role"], g["weight_decay"])}
    assert sum(len(g["params"]) for g in groups) == len(params)
