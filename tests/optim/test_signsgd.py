"""signSGD and Signum against pytorch-optimizer==4.1.0 `SignSGD` step by step, and by hand.

pytorch-optimizer's momentum is the paper's EMA, m.lerp_(g, 1 - momentum) = beta m + (1 - beta) g, and its
default weight decay is decoupled (p *= 1 - lr wd): the same rule as ours, so it is compared directly.
"""

import pytest
import torch
from pytorch_optimizer import SignSGD

from optbench import optim
from optbench.optim.registry import make_config
from tests.optim.harness import compare_with_reference, reference_groups


@pytest.mark.parametrize("name, hparams, momentum", [
    ("signsgd", dict(lr=1e-3, weight_decay=0.5), 0.0),
    ("signum", dict(lr=3e-4, momentum=0.9, weight_decay=0.5), 0.9),
])
def test_matches_pytorch_optimizer_step_by_step(name, hparams, momentum):
    # Same operations (lerp, sign, multiply, add), so default tolerances hold exactly.
    compare_with_reference(
        lambda m: optim.create(name, m, **hparams),
        lambda m: SignSGD(reference_groups(m, hparams["weight_decay"]), lr=hparams["lr"], momentum=momentum,
                          weight_decouple=True),
        steps=20)


def _one_param(name, values, **hparams):
    p = torch.nn.Parameter(torch.tensor(values))
    return p, optim.get(name).build([{"params": [p], "weight_decay": hparams.get("weight_decay", 0.0)}],
                                    make_config(name, **hparams))


def _step(p, opt, grad):
    p.grad = torch.tensor(grad)
    opt.step()
    return p.detach().clone()


def test_signsgd_by_hand():
    p, opt = _one_param("signsgd", [1.0, -1.0, 2.0], lr=0.1, weight_decay=0.5)
    # p (1 - 0.05) - 0.1 sign(g); a zero gradient only decays
    torch.testing.assert_close(_step(p, opt, [1e-9, -3.0, 0.0]), torch.tensor([0.85, -0.85, 1.9]))
    assert not opt.state[p], "signSGD keeps no state"


def test_signum_is_the_sign_of_the_gradient_ema():
    p, opt = _one_param("signum", [0.0, 0.0], lr=0.1, momentum=0.5)
    _step(p, opt, [1.0, 1.0])  # m = [0.5, 0.5]: p = [-0.1, -0.1]
    # m = 0.5 m + 0.5 g = [0.25 - 0.2, 0.25 - 1.0] = [0.05, -0.75]: the first coordinate keeps the sign of
    # its momentum although its gradient flipped
    after = _step(p, opt, [-0.4, -2.0])
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], torch.tensor([0.05, -0.75]))
    torch.testing.assert_close(after, torch.tensor([-0.2, 0.0]))
