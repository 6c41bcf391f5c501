"""Cautious optimizers (Liang et al. 2024, arXiv:2411.16085): C-AdamW and C-Lion against pytorch-optimizer==4.1.0
step by step, the mask and its numel / (nnz + 1) scaling by hand, and cautious=False left as it was.

References (both apply `BaseOptimizer.apply_cautious`: mask = (u * g > 0), times numel / (mask.sum() + 1), per
tensor, the authors' original normalisation):
- C-AdamW: `AdEMAMix(alpha=0, weight_decouple=True, cautious=True)`. pytorch-optimizer has no cautious AdamW
  class; AdEMAMix masks its fast EMA m before adding alpha times the slow one, so at alpha = 0 it is C-AdamW
  with torch's eps placement (sqrt(v / (1 - beta2^t)) + eps). Its AdamP(cautious=True) is not used: it puts eps
  before the bias correction and projects scale-invariant weights.
- C-Lion: `Lion(cautious=True)`: decoupled decay p (1 - lr wd), sign(lerp(m, g, 1 - beta1)) masked, m updated.
Both agree with ours to the last bit here (max observed difference 0 over 25 steps, elementwise arithmetic in the
same order): compared with rtol = atol = 0.
"""

import math

import torch
from pytorch_optimizer import AdEMAMix
from pytorch_optimizer import Lion as ReferenceLion

from optbench import optim
from optbench.optim.algorithms.adamw import AdamWConfig
from optbench.optim.algorithms.cautious_adamw import CautiousAdamW
from optbench.optim.algorithms.lion import Lion, LionConfig
from optbench.optim.functional.cautious import alignment_masks, cautious_
from optbench.optim.registry import make_config
from tests.optim.harness import compare_with_reference, lm_batches, reference_groups, through_disk, tiny_lm, train

ADAMW_HP = dict(lr=3e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
LION_HP = dict(lr=3e-4, beta1=0.9, beta2=0.95, weight_decay=0.5)


def reference_c_adamw(model):
    return AdEMAMix(reference_groups(model, ADAMW_HP["weight_decay"]), lr=ADAMW_HP["lr"],
                    betas=(ADAMW_HP["beta1"], ADAMW_HP["beta2"], 0.9999), alpha=0.0, eps=ADAMW_HP["eps"],
                    weight_decouple=True, cautious=True)


def test_c_adamw_matches_pytorch_optimizer_step_by_step():
    result = compare_with_reference(lambda m: optim.create("c-adamw", m, **ADAMW_HP), reference_c_adamw,
                                    batches=lm_batches(25), rtol=0.0, atol=0.0)
    assert result.steps == 25


def test_adamw_cautious_option_is_c_adamw():
    model = tiny_lm()
    assert isinstance(optim.create("adamw", model, cautious=True), CautiousAdamW)
    result = compare_with_reference(lambda m: optim.create("adamw", m, cautious=True, **ADAMW_HP), reference_c_adamw,
                                    rtol=0.0, atol=0.0)
    assert result.steps == 20


def test_c_lion_matches_pytorch_optimizer_step_by_step():
    def reference(m):
        return ReferenceLion(reference_groups(m, LION_HP["weight_decay"]), lr=LION_HP["lr"],
                             betas=(LION_HP["beta1"], LION_HP["beta2"]), cautious=True)
    result = compare_with_reference(lambda m: optim.create("c-lion", m, **LION_HP), reference,
                                    batches=lm_batches(25), rtol=0.0, atol=0.0)
    assert result.steps == 25
    result = compare_with_reference(lambda m: optim.create("lion", m, cautious=True, **LION_HP), reference,
                                    rtol=0.0, atol=0.0)
    assert result.steps == 20


def test_registry_variants_are_the_base_configs_with_cautious_on():
    for name, base in (("c-adamw", AdamWConfig()), ("c-lion", LionConfig())):
        cfg = make_config(name)
        assert cfg.cautious and not base.cautious
        assert {**vars(cfg), "name": base.name, "cautious": False} == vars(base)
    assert not isinstance(optim.create("adamw", tiny_lm()), CautiousAdamW)


def test_cautious_false_is_torch_adamw_bit_for_bit():
    cfg = make_config("adamw", **ADAMW_HP)

    def torch_adamw(model):
        return torch.optim.AdamW(reference_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                 eps=cfg.eps, weight_decay=cfg.weight_decay, foreach=True)
    assert type(optim.create("adamw", tiny_lm())) is torch.optim.AdamW
    compare_with_reference(lambda m: optim.create("adamw", m, **ADAMW_HP), torch_adamw, steps=20, rtol=0, atol=0)


def test_mask_and_scale_by_hand():
    u = [torch.tensor([0.5, -0.2, 0.3, 0.0]), torch.tensor([1.0, -2.0, 3.0]), torch.tensor([[1.0, -1.0]])]
    g = [torch.tensor([1.0, 0.4, -2.0, 1.0]), torch.tensor([1.0, -1.0, 1.0]), torch.tensor([[-1.0, 1.0]])]
    masks = alignment_masks(u, g)
    # agreement is strict: u = 0 (4th entry) or g = 0 is masked too
    assert [m.tolist() for m in masks] == [[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [[0.0, 0.0]]]
    cautious_(u, g)
    # numel / (nnz + 1) per tensor: 4 / 2 = 2; 3 / 4 = 0.75; 2 / 1 times an all-zero mask
    torch.testing.assert_close(u[0], torch.tensor([1.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(u[1], torch.tensor([0.75, -1.5, 2.25]))
    torch.testing.assert_close(u[2], torch.tensor([[0.0, 0.0]]))


def _step(p, grad, opt):
    p.grad = torch.tensor(grad, dtype=p.dtype)
    opt.step()
    return p.detach().clone()


def test_c_lion_two_steps_by_hand():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5, 3.0]))
    opt = optim.get("c-lion").build([{"params": [p], "weight_decay": 0.1}],
                                    make_config("c-lion", lr=0.03, weight_decay=0.1))
    # m = 0: sign(c) = sign(g) = [1, 0, 0, -1], all agree with g; nnz = 2, scale 4 / 3; lr wd = 0.003
    after = _step(p, [0.3, 0.0, 0.0, -0.2], opt)
    expected = torch.tensor([1.0 * 0.997 - 0.04, -2.0 * 0.997, 0.5 * 0.997, 3.0 * 0.997 + 0.04])
    torch.testing.assert_close(after, expected)
    # m = 0.01 g = [0.003, 0, 0, -0.002]; g = [-0.01, 1, 0, 0.5]: c = 0.9 m + 0.1 g = [0.0017, 0.1, 0, 0.0482]
    # plain Lion would step all of sign(c) = [1, 1, 0, 1]; the first disagrees with g: mask [0, 1, 0, 1], 4 / 3
    after = _step(p, [-0.01, 1.0, 0.0, 0.5], opt)
    torch.testing.assert_close(after, expected * 0.997 - 0.04 * torch.tensor([0.0, 1.0, 0.0, 1.0]))


def test_c_adamw_two_steps_by_hand():
    lr, wd, b1, b2 = 0.1, 0.1, 0.9, 0.95
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64))
    opt = optim.get("c-adamw").build([{"params": [p], "weight_decay": wd}],
                                     make_config("c-adamw", lr=lr, weight_decay=wd, beta1=b1, beta2=b2, eps=1e-12))
    g1, g2 = [1.0, -1.0, 2.0, 1.0], [-0.5, -1.0, 2.0, -0.5]
    # step 1: m_hat = g, v_hat = g^2, u = sign(g); every coordinate agrees: scale 4 / 5
    after = _step(p, g1, opt)
    p1 = [x * (1 - lr * wd) - lr * 0.8 * math.copysign(1.0, g) for x, g in zip([1.0, -2.0, 0.5, 0.0], g1)]
    torch.testing.assert_close(after, torch.tensor(p1, dtype=torch.float64))
    # step 2: m = 0.9 (0.1 g1) + 0.1 g2 = [0.04, -0.19, 0.38, 0.04]; m g > 0: [0, 1, 1, 0], scale 4 / 3
    after = _step(p, g2, opt)
    m = [b1 * (1 - b1) * a + (1 - b1) * b for a, b in zip(g1, g2)]
    v = [b2 * (1 - b2) * a * a + (1 - b2) * b * b for a, b in zip(g1, g2)]
    keep = [0.0, 1.0, 1.0, 0.0]
    p2 = [x * (1 - lr * wd) - lr * k * (4 / 3) * (mi / (1 - b1 ** 2)) / math.sqrt(vi / (1 - b2 ** 2))
          for x, k, mi, vi in zip(p1, keep, m, v)]
    torch.testing.assert_close(after, torch.tensor(p2, dtype=torch.float64))


def test_lion_state_saved_without_the_option_still_loads():
    model = tiny_lm()
    opt = optim.create("lion", model, lr=1e-3)
    train(model, opt, lm_batches(2))
    saved = through_disk(opt.state_dict())
    for group in saved["param_groups"]:
        del group["cautious"]  # a checkpoint from before the option
    resumed = optim.create("lion", model, lr=1e-3)
    resumed.load_state_dict(saved)
    assert isinstance(resumed, Lion)
    train(model, resumed, lm_batches(3)[2:])
