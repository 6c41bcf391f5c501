"""NAdamW: ours (torch.optim.NAdam wired through routing and the config) against torch.optim.NAdam built
directly on a grouping of our own, and the defaults that make it NAdam rather than Adam."""

import inspect

import pytest
import torch

from optbench import optim
from optbench.optim.registry import make_config
from tests.optim.harness import compare_with_reference, reference_groups

HP = dict(lr=3e-3, beta1=0.85, beta2=0.97, eps=1e-7, weight_decay=0.1, momentum_decay=8e-3)


@pytest.mark.parametrize("decouple", [True, False])
def test_matches_torch_nadam_built_directly(decouple):
    # Non-default betas, eps and psi so that a dropped or swapped hyperparameter shows. The same foreach
    # code on both sides, so bit-identical (rtol = atol = 0): any difference is wiring (groups, decay, betas).
    compare_with_reference(
        lambda m: optim.create("nadam", m, decouple=decouple, **HP),
        lambda m: torch.optim.NAdam(reference_groups(m, HP["weight_decay"]), lr=HP["lr"],
                                    betas=(HP["beta1"], HP["beta2"]), eps=HP["eps"],
                                    momentum_decay=HP["momentum_decay"], decoupled_weight_decay=decouple, foreach=True),
        steps=20, rtol=0.0, atol=0.0)


def test_defaults():
    cfg = make_config("nadam")
    ref = inspect.signature(torch.optim.NAdam.__init__).parameters
    assert cfg.momentum_decay == ref["momentum_decay"].default == 4e-3  # Dozat's psi = 1/250
    assert (cfg.lr, cfg.eps) == (ref["lr"].default, ref["eps"].default)
    assert cfg.decouple and cfg.weight_decay > 0  # NAdamW
    group = optim.create("nadam", torch.nn.Linear(2, 2)).param_groups[0]
    assert group["decoupled_weight_decay"] and group["foreach"] and group["momentum_decay"] == 4e-3


def test_momentum_schedule_by_hand():
    # One step on one weight: mu_1 = beta1 (1 - 0.5 * 0.96^psi), mu_2 = beta1 (1 - 0.5 * 0.96^(2 psi));
    # with m_1 = (1 - beta1) g and v_hat = g^2 the step is
    # lr [(1 - mu_1) / (1 - mu_1) + mu_2 (1 - beta1) / (1 - mu_1 mu_2)] (eps ~ 0), after decay.
    lr, beta1, psi, wd = 0.1, 0.9, 4e-3, 0.5
    p = torch.nn.Parameter(torch.tensor([2.0]))
    opt = optim.get("nadam").build([{"params": [p], "weight_decay": wd}],
                                   make_config("nadam", lr=lr, beta1=beta1, momentum_decay=psi, weight_decay=wd))
    p.grad = torch.tensor([3.0])
    opt.step()
    mu1, mu2 = beta1 * (1 - 0.5 * 0.96 ** psi), beta1 * (1 - 0.5 * 0.96 ** (2 * psi))
    expected = 2.0 * (1 - lr * wd) - lr * (1 + mu2 * (1 - beta1) / (1 - mu1 * mu2))
    torch.testing.assert_close(p.detach(), torch.tensor([expected]))
