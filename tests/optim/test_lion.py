"""Lion against lion-pytorch==0.2.5 step by step, and the paper's update order on hand-computed steps.

lion-pytorch's `update_fn` follows the paper's Program 1: p *= 1 - lr wd; p -= lr sign(b1 m + (1-b1) g);
m = b2 m + (1 - b2) g (momentum updated after the sign is taken).
"""

import torch
from lion_pytorch import Lion as ReferenceLion

from optbench import optim
from optbench.optim.registry import make_config
from tests.optim.harness import compare_with_reference, lm_batches, reference_groups

HP = dict(lr=3e-4, beta1=0.9, beta2=0.95, weight_decay=0.5)


def test_matches_lion_pytorch_step_by_step():
    # Exact arithmetic match (same multiply-then-add, elementwise): bit-identical (observed difference 0).
    result = compare_with_reference(
        lambda m: optim.create("lion", m, **HP),
        lambda m: ReferenceLion(reference_groups(m, HP["weight_decay"]), lr=HP["lr"], betas=(HP["beta1"], HP["beta2"])),
        batches=lm_batches(25), rtol=0.0, atol=0.0)
    # Every entry with a non-zero update moves exactly lr per step: each tensor went at least 10 steps' worth.
    assert result.steps == 25 and min(result.moved.values()) > 10 * HP["lr"]


def _step(p, grad, opt):
    p.grad = torch.tensor(grad)
    opt.step()
    return p.detach().clone()


def test_one_step_by_hand():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = optim.get("lion").build([{"params": [p], "weight_decay": 0.1}],
                                           make_config("lion", lr=0.01, weight_decay=0.1))
    # m = 0: c = 0.1 g, sign(c) = sign(g) = [1, -1, 0]; p (1 - 0.001) - 0.01 sign
    after = _step(p, [0.3, -0.1, 0.0], opt)
    torch.testing.assert_close(after, torch.tensor([1.0 * 0.999 - 0.01, -2.0 * 0.999 + 0.01, 0.5 * 0.999]))
    # m = 0.01 g = [0.003, -0.001, 0]
    torch.testing.assert_close(opt.state[p]["exp_avg"], torch.tensor([0.003, -0.001, 0.0]))


def test_direction_is_taken_before_the_momentum_update():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = optim.get("lion").build([{"params": [p], "weight_decay": 0.0}],
                                           make_config("lion", lr=1.0, beta1=0.9, beta2=0.5))
    _step(p, [1.0], opt)  # p = -1; m = 0.5
    # c = 0.9 * 0.5 + 0.1 * (-4) = 0.05 > 0: the step still follows the momentum (p = -2) ...
    assert _step(p, [-4.0], opt).item() == -2.0
    # ... whereas updating m first (0.5 * 0.5 - 0.5 * 4 = -1.75) would have flipped it: c = -1.975.
    torch.testing.assert_close(opt.state[p]["exp_avg"], torch.tensor([-1.75]))
    # Now m = -1.75, g = 1: c = -1.575 + 0.1 < 0, so p moves up to -1.
    assert _step(p, [1.0], opt).item() == -1.0
