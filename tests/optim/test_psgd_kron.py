"""PSGD-Kron against kron-torch==0.3.3 step by step (same probes through the seed), the update schedule against
kron_torch's, and the preconditioner fit against its defining property on small cases."""

import random

import kron_torch.kron as kron_torch
import pytest
import torch
from torch import nn

from optbench import optim
from optbench.errors import UserError
from optbench.optim.algorithms.psgd_kron import BALANCE_EVERY, PSGDKron, noise_seed
from optbench.optim.functional import kron
from tests.optim.harness import (compare_with_reference, lm_batches, matrix_model, reference_groups,
                                 regression_batches, regression_loss, tiny_lm)


@pytest.fixture
def eager_kron_torch():
    """kron_torch wraps its kernels in torch.compile at import; compiled code draws its random numbers from
    Inductor's own generator (not the global one) and needs a C++ toolchain. The reference runs eagerly."""
    with torch._dynamo.config.patch(disable=True):  # restores the flag's own value, not a monkeypatched copy
        yield


class _EveryHundredthUpdate:
    """Stands in for kron_torch's `random.Random(42)`: says "balance" on every 100th draw (kron_torch draws
    once per step and balances if the draw is < 0.01 on an update step), as ours balances on every 100th
    update. While every step updates (the first 500), both then balance on the same steps."""

    def __init__(self):
        self.draws = 0

    def random(self) -> float:
        self.draws += 1
        return 0.0 if self.draws % BALANCE_EVERY == 0 else 1.0


class SeededKron(kron_torch.Kron):
    """kron_torch.Kron with the global RNG seeded as ours seeds its probe generator before each step."""

    def __init__(self, *args, seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.rng, self.seed, self.steps = _EveryHundredthUpdate(), seed, 0

    def step(self, closure=None):
        self.steps += 1
        torch.manual_seed(noise_seed(self.seed, self.steps))
        return super().step(closure)


def _reference(model, weight_decay: float, **hparams):
    """kron_torch over the test's own role groups (optbench's order, per-role weight decay, which kron_torch
    reads per group)."""
    return SeededKron(reference_groups(model, weight_decay), **hparams)


STEPS = 25


def test_matches_kron_torch_on_a_tiny_lm(eager_kron_torch):
    """Every role present: triangular factors for the matrices and embeddings, diagonal ones for vectors.
    Summation orders differ (einsum strings there, one dimension at a time here): parameters agree to
    1.5e-8 absolute after 25 steps (the norm gains, diagonal factors only, exactly). rtol 1e-6 rather than
    1e-5: the gains (~1) move only ~5e-5 in 25 steps, which 1e-5 of their size would not resolve."""
    lr, wd = 3e-3, 0.1
    compare_with_reference(lambda model: optim.create("psgd-kron", model, lr=lr, weight_decay=wd),
                           lambda model: _reference(model, wd, lr=lr), batches=lm_batches(STEPS), rtol=1e-6)


def test_matches_kron_torch_with_other_settings(eager_kron_torch):
    """Diagonal factors above max_size_triangular and by memory_save_mode, another momentum, preconditioner
    step and initial scale, the raw gradient into the fit."""
    hparams = dict(lr=1e-2, momentum=0.8, precond_lr=0.3, precond_init_scale=0.5, max_size_triangular=16,
                   memory_save_mode="smart_one_diag", momentum_into_precond_update=False)
    ref_hparams = dict(lr=1e-2, b1=0.8, precond_lr=0.3, precond_init_scale=0.5, max_size_triangular=16,
                       memory_save_mode="smart_one_diag", momentum_into_precond_update=False)
    compare_with_reference(lambda model: optim.create("psgd-kron", model, weight_decay=0.05, **hparams),
                           lambda model: _reference(model, 0.05, **ref_hparams),
                           model_fn=matrix_model, batches=regression_batches(STEPS), loss_fn=regression_loss,
                           steps=STEPS)


def test_balancing_on_the_hundredth_update_matches_kron_torch(eager_kron_torch):
    """Past step 100 both balance once (the stub makes kron_torch pick the same step). 105 steps of a
    preconditioned method grow the summation-order differences to ~7e-7 absolute: rtol 1e-4, atol 1e-6."""
    steps = BALANCE_EVERY + 5
    batches = regression_batches(8)
    compare_with_reference(lambda model: optim.create("psgd-kron", model, lr=1e-2),
                           lambda model: _reference(model, 0.0, lr=1e-2),
                           model_fn=matrix_model, batches=[batches[i % 8] for i in range(steps)],
                           loss_fn=regression_loss, steps=steps, rtol=1e-4, atol=1e-6)


def test_update_schedule_is_kron_torchs():
    """Which steps update the preconditioner over 5000 steps: kron_torch's ProbScheduler + counter rule."""
    schedule = kron_torch.precond_update_prob_schedule()
    schedule._compiled = False
    counter, theirs = 0, []
    for n in range(5000):
        prob = schedule(torch.tensor(n, dtype=torch.float32))
        counter += 1
        theirs.append(bool(counter >= 1 / prob))
        counter = 0 if theirs[-1] else counter
    p = nn.Parameter(torch.zeros(3))
    opt = PSGDKron([p])
    ours = [opt._schedule(opt.param_groups[0])[0] for _ in range(5000)]
    assert ours == theirs
    assert all(ours[:500]) and 0.02 < sum(ours[-1000:]) / 1000 < 0.04


def _factor_check(shape, max_size_triangular=8192):
    torch.manual_seed(0)
    diagonal = kron.diagonal_dims(torch.Size(shape), max_size_triangular, 2)
    return kron.init_factors(torch.Size(shape), diagonal, 1.0, torch.float32, torch.device("cpu"))


def test_factor_kinds():
    assert [q.dim() for q in _factor_check((5,))] == [1]
    assert [q.dim() for q in _factor_check((6, 4))] == [2, 2]
    assert [q.dim() for q in _factor_check((1, 4))] == [1, 2]
    assert [q.dim() for q in _factor_check((40, 4), max_size_triangular=16)] == [1, 2]
    assert kron.diagonal_dims(torch.Size((8, 4)), 8192, 2, "one_diag") == [True, False]
    assert kron.diagonal_dims(torch.Size((4, 4)), 8192, 2, "smart_one_diag") == [False, False]
    assert kron.diagonal_dims(torch.Size((4, 4)), 8192, 2, "all_diag") == [True, True]
    assert kron.merged_shape(torch.Size((3, 8, 4))) == [24, 4]
    assert kron.merged_shape(torch.Size((8, 4))) is None


def test_precondition_is_q_transpose_q_as_a_kronecker_product():
    """P g for a matrix g equals (Q1 (x) Q2)^T (Q1 (x) Q2) vec(g) in row-major vec order."""
    torch.manual_seed(0)
    q1, q2 = torch.randn(3, 3).triu(), torch.randn(4).abs()
    g = torch.randn(3, 4)
    Q = torch.kron(q1, torch.diag(q2))
    torch.testing.assert_close(kron.precondition([q1, q2], g).flatten(), Q.T @ Q @ g.flatten())


def test_fit_drives_p_towards_the_inverse_root_of_the_curvature():
    """PSGD's fixed point on pairs (v, h = H v): P = Q^T Q = H^{-1} (here for a vector, with diagonal factors
    as kron_torch gives vectors, and H diagonal). Repeated fits on fresh probes approach it."""
    torch.manual_seed(0)
    h_diag = torch.tensor([0.25, 1.0, 4.0, 9.0])
    factors = [torch.ones(4)]
    for _ in range(3000):
        v = torch.randn(4)
        kron.update_preconditioner_(factors, h_diag * v, v, lr=0.05)
    torch.testing.assert_close(factors[0] ** 2, 1 / h_diag, rtol=0.15, atol=0)


def test_balance_keeps_the_preconditioner():
    torch.manual_seed(0)
    factors = [torch.randn(3, 3).triu() * 10, torch.randn(4, 4).triu() / 10]
    g = torch.randn(3, 4)
    before = kron.precondition(factors, g)
    kron.balance_(factors)
    torch.testing.assert_close(kron.precondition(factors, g), before)
    norms = [q.abs().max() for q in factors]
    torch.testing.assert_close(norms[0], norms[1])


def test_one_step_by_hand_for_a_vector():
    """A vector's first step: m^ = g; factor q = 1 - lr_p (t1 - t2) / max|t1 + t2| with t1 = h^2, t2 = v^2;
    u = q^2 h (h = dithered g); clipped to RMS 1.1; p <- p - lr u."""
    torch.manual_seed(0)
    g = torch.tensor([0.5, -1.0, 2.0])
    p = nn.Parameter(torch.zeros(3))
    p.grad = g.clone()
    opt = PSGDKron([p], lr=0.1, precond_lr=0.1)
    opt.step()
    v = torch.randn(3, generator=torch.Generator().manual_seed(noise_seed(0, 1)))
    h = g + torch.finfo(torch.float32).eps ** 0.5 * g.abs().mean() * v
    t1, t2 = h * h, v * v
    q = 1 - 0.1 * (t1 - t2) / (t1 + t2).abs().max()
    u = q * q * h
    u = u * min(1.0, 1.1 / u.square().mean().sqrt().item())
    torch.testing.assert_close(p.detach(), -0.1 * u)
    torch.testing.assert_close(opt.state[p]["Q0"], q)


def test_scalars_and_3d_tensors_are_handled():
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(())), nn.Parameter(torch.randn(2, 6, 4))]
    opt = PSGDKron(params, lr=0.1)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    assert opt.state[params[1]]["momentum_buffer"].shape == (12, 4)
    assert all(torch.isfinite(p).all() for p in params)


def test_the_probe_stream_does_not_touch_the_global_rngs():
    """Neither torch's global generator (probes come from a private one) nor Python's `random` (kron_torch
    draws its balance decision from a `random.Random(42)`; ours balances on a count): a step leaves both where
    they were, so it perturbs nothing else a run draws (data order, dropout)."""
    model = tiny_lm()
    opt = optim.create("psgd-kron", model)
    torch.manual_seed(7)
    random.seed(7)
    expected = torch.rand(3), random.random()
    torch.manual_seed(7)
    random.seed(7)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1]


def test_bad_settings_are_user_errors():
    for hparams, needle in [({"memory_save_mode": "some"}, "memory_save_mode"),
                            ({"update_prob_min": 0.0}, "update_prob_min"),
                            ({"precond_lr": 0.0}, "precond_lr"), ({"precond_dtype": "float16"}, "precond_dtype")]:
        with pytest.raises(UserError, match=needle):
            optim.make_config("psgd-kron", **hparams)
