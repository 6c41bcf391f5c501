"""LAMB: step by step against pytorch-optimizer==4.1.0 `Lamb` (without bias correction, the one variant it
shares with the paper) and against the paper's Algorithm 2 written out per tensor (with bias correction);
trust-ratio cases by hand.
"""

import math

import torch
from pytorch_optimizer import Lamb as ReferenceLamb

from optbench import optim
from optbench.optim.registry import make_config
from tests.optim.harness import compare_with_reference, reference_groups

HP = dict(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-6, weight_decay=0.1)


def test_matches_pytorch_optimizer_without_bias_correction():
    def reference(model):
        # The paper's variant: wd p inside the trust-ratio-scaled update (weight_decouple=False), no
        # rectification, no pre-norm; adam_debias=True drops its lr / (1 - beta1^t) step scaling; the clamp
        # of ||p|| at 10 lifted (the paper's phi is the identity).
        opt = ReferenceLamb(reference_groups(model, HP["weight_decay"]), lr=HP["lr"], betas=(HP["beta1"], HP["beta2"]),
                            eps=HP["eps"], weight_decouple=False, grad_averaging=True, rectify=False,
                            adam=False, pre_norm=False, adam_debias=True)
        opt.clamp = math.inf
        return opt

    # rtol 1e-5 holds although the reference divides by ||r|| + eps (1e-6) where we divide by ||r||.
    compare_with_reference(lambda m: optim.create("lamb", m, bias_correction=False, **HP), reference, steps=20)


class PaperLamb(torch.optim.Optimizer):
    """You et al. 2020, Algorithm 2, one tensor at a time, as printed (phi = identity)."""

    def __init__(self, params, lr, beta1, beta2, eps):
        super().__init__(params, dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            b1, b2, eps, wd = group["beta1"], group["beta2"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state.update(t=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
                state["t"] += 1
                t, g = state["t"], p.grad
                state["m"] = b1 * state["m"] + (1 - b1) * g
                state["v"] = b2 * state["v"] + (1 - b2) * g * g
                m_hat, v_hat = state["m"] / (1 - b1 ** t), state["v"] / (1 - b2 ** t)
                r = m_hat / (v_hat.sqrt() + eps) + wd * p
                w_norm, r_norm = p.norm(), r.norm()
                ratio = w_norm / r_norm if w_norm > 0 and r_norm > 0 else 1.0
                p.sub_(group["lr"] * ratio * r)


def test_matches_the_papers_algorithm_with_bias_correction():
    compare_with_reference(
        lambda m: optim.create("lamb", m, **HP),
        lambda m: PaperLamb(reference_groups(m, HP["weight_decay"]), HP["lr"], HP["beta1"], HP["beta2"], HP["eps"]),
        steps=20)


def _one_param(values, **hparams):
    p = torch.nn.Parameter(torch.tensor(values))
    return p, optim.get("lamb").build([{"params": [p], "weight_decay": hparams.get("weight_decay", 0.0)}],
                                      make_config("lamb", **hparams))


def test_step_norm_is_lr_times_weight_norm():
    p, opt = _one_param([3.0, 4.0], lr=0.01, weight_decay=0.0)
    p.grad = torch.tensor([2.0, -0.5])
    opt.step()
    # Step 1 with bias correction: m_hat = g, v_hat = g^2, r = g / (|g| + eps) ~ [1, -1], ||r|| ~ sqrt(2);
    # the step is lr * ||p|| = 0.05 long, along r.
    step = 0.05 / math.sqrt(2)
    torch.testing.assert_close(p.detach(), torch.tensor([3.0 - step, 4.0 + step]))


def test_trust_ratio_is_one_for_zero_weights():
    p, opt = _one_param([0.0, 0.0, 0.0], lr=0.01, weight_decay=0.1)
    p.grad = torch.tensor([1.0, -2.0, 0.0])
    opt.step()
    # ||p|| = 0: a plain Adam step, lr * g / (|g| + eps) (wd p = 0)
    torch.testing.assert_close(p.detach(), torch.tensor([-0.01, 0.01, 0.0]))
