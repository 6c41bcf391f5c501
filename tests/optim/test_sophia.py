"""Sophia-G: one step computed by hand, clipping, sign momentum without curvature, and step-by-step
agreement with sophia-opt==0.2.2 (the authors' sophia.py packaged unchanged), Hessian passes included."""

import copy

import pytest
import sophia_opt
import torch

from optbench import optim
from optbench.errors import UserError
from optbench.optim.algorithms.sophia import SophiaG, clipped_ratio
from tests.optim.harness import lm_batches, reference_groups, tiny_lm, train


def one_param(values, **hparams):
    p = torch.nn.Parameter(torch.tensor(values, dtype=torch.float64))
    return p, SophiaG([p], **hparams)


def test_one_step_by_hand():
    p, opt = one_param([1.0, -2.0, 0.5], lr=0.1, betas=(0.5, 0.75), rho=0.5, bs=20, weight_decay=0.1)
    # Hessian pass: h = 0.75 * 0 + 0.25 * g_hat^2 = [0.01, 0.25, 0]
    p.grad = torch.tensor([0.2, 1.0, 0.0], dtype=torch.float64)
    opt.update_hessian()
    torch.testing.assert_close(opt.state[p]["hessian"], torch.tensor([0.01, 0.25, 0.0], dtype=torch.float64))
    # step: m = 0.5 * g = [0.2, -0.1, 0.3]; rho * bs * h = [0.1, 2.5, 0]
    # ratio = min(|m| / (rho bs h + 1e-15), 1) = [1 (2 clipped), 0.04, 1 (no curvature)]
    # p = p * (1 - 0.1 * 0.1) - 0.1 * sign(m) * ratio = [0.99 - 0.1, -1.98 + 0.004, 0.495 - 0.1]
    p.grad = torch.tensor([0.4, -0.2, 0.6], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([0.89, -1.976, 0.395], dtype=torch.float64))
    torch.testing.assert_close(opt.state[p]["exp_avg"], torch.tensor([0.2, -0.1, 0.3], dtype=torch.float64))
    assert opt.state[p]["step"] == 1


def test_clipping_bounds_every_coordinate_by_lr():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(1000, generator=g)
    h = torch.rand(1000, generator=g) * 10 ** torch.empty(1000).uniform_(-6, 0, generator=g)
    ratio = clipped_ratio([m], [h], rho=0.04, bs=256, eps=1e-15)[0]
    expected = m.abs() / (0.04 * 256 * h + 1e-15)
    clipped = expected >= 1
    assert 0.1 < clipped.float().mean() < 0.9, "both regimes present"
    assert torch.equal(ratio[clipped], torch.ones(int(clipped.sum())))
    torch.testing.assert_close(ratio[~clipped], expected[~clipped], rtol=0, atol=0)

    p, opt = one_param([0.0] * 1000, lr=0.01, betas=(0.0, 0.99), weight_decay=0.0, rho=0.04, bs=256)
    opt.state[p].update(step=0, exp_avg=torch.zeros(1000, dtype=torch.float64), hessian=h.double())
    p.grad = m.double()
    opt.step()  # beta1 = 0: m is the gradient
    assert p.detach().abs().max() <= 0.01
    assert torch.equal(p.detach()[clipped].abs(), torch.full((int(clipped.sum()),), 0.01, dtype=torch.float64))


def test_without_curvature_it_is_sign_momentum():
    torch.manual_seed(0)
    p, opt = one_param(torch.randn(50).tolist(), lr=0.01, betas=(0.9, 0.99), weight_decay=0.0)
    m = torch.zeros(50, dtype=torch.float64)
    for _ in range(5):
        grad = torch.randn(50, dtype=torch.float64)
        before = p.detach().clone()
        p.grad = grad
        opt.step()
        m = 0.9 * m + 0.1 * grad
        torch.testing.assert_close(p.detach() - before, -0.01 * torch.sign(m), rtol=0, atol=1e-15)


class PackagedSophiaG(sophia_opt.SophiaG):
    """sophia-opt's SophiaG with B passed to every step as its README says, and the trainer's k."""

    bs = 128  # the harness's Hessian pass: 8 sequences x 16 tokens
    hessian_every = 3

    def step(self, closure=None):
        return super().step(closure, bs=self.bs)

    def update_hessian(self, batch_tokens=None):  # the package takes B at every step instead
        super().update_hessian()


def test_matches_sophia_opt_step_by_step_with_hessian_passes():
    hparams = dict(lr=1e-3, beta1=0.9, beta2=0.95, rho=0.05, weight_decay=0.2, bs=PackagedSophiaG.bs,
                   hessian_every=PackagedSophiaG.hessian_every)
    model_a = tiny_lm()
    model_b = copy.deepcopy(model_a)
    ours = optim.create("sophiag", model_a, **hparams)
    reference = PackagedSophiaG(reference_groups(model_b, hparams["weight_decay"]), lr=1e-3, betas=(0.9, 0.95),
                                rho=0.05, weight_decay=0.2)
    assert {g["weight_decay"] for g in reference.param_groups} == {0.0, 0.2}
    batches = lm_batches(24)
    for i, batch in enumerate(batches):
        # one step each, then the Hessian pass on labels sampled with the same seed (steps 3, 6, ...)
        train(model_a, ours, [batch], name="sophiag", first_step=i)
        train(model_b, reference, [batch], name="sophiag", first_step=i)
        for (name, a), (_, b) in zip(model_a.named_parameters(), model_b.named_parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=lambda m: f"step {i + 1}, {name}: {m}")
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(ours.state[a]["hessian"], reference.state[b]["hessian"])
    assert all(ours.state[p]["hessian"].abs().sum() > 0 for p in model_a.parameters())


def test_config_exposes_k_and_rejects_bad_values():
    opt = optim.create("sophiag", tiny_lm(), hessian_every=7)
    assert opt.hessian_every == 7
    defaults = opt.defaults
    assert (defaults["lr"], defaults["betas"], defaults["rho"], defaults["weight_decay"], defaults["bs"]) == \
        (2e-4, (0.965, 0.99), 0.04, 0.1, None)
    for bad in ({"rho": 0.0}, {"bs": 0}, {"hessian_every": 0}, {"eps": 0.0}):
        with pytest.raises(UserError, match=next(iter(bad))):
            optim.create("sophiag", tiny_lm(), **bad)


def test_unset_bs_takes_the_hessian_batch_token_count_from_the_trainer_hook():
    runs = []
    for bs in (None, 128):  # the harness's Hessian pass covers 8 x 16 = 128 tokens
        model = tiny_lm()
        opt = optim.create("sophiag", model, bs=bs, hessian_every=3)
        train(model, opt, lm_batches(12), name="sophiag")
        runs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(*runs)
