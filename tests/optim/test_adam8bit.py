"""8-bit AdamW (optbench's block-wise quantised path): the code maps and quantiser, agreement with fp32 AdamW,
step-by-step agreement with torchao's and bitsandbytes' 8-bit AdamW from a common state, and the state size."""

import pytest
import torch

from optbench import optim
from optbench.optim.algorithms.adam8bit import BlockwiseAdamW8bit
from optbench.optim.memory import state_bytes
from optbench.optim.functional.quantization import dequantize_blockwise, dynamic_map, quantize_blockwise
from optbench.optim.registry import build_for, make_config
from optbench.optim.routing import route
from tests.optim.harness import lm_batches, lm_loss, reference_groups, tiny_lm, train

HP = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1)


def _ours(model):
    return build_for(make_config("adam8bit", backend="optbench", **HP), route(model, make_config("adam8bit", **HP)))


def _groups(model):
    return reference_groups(model, HP["weight_decay"])


def test_code_maps_match_bitsandbytes_and_torchao():
    from torchao.optim.quant_utils import create_dynamic_map

    for signed in (True, False):
        ours = dynamic_map(signed)
        assert torch.equal(ours, torch.tensor(create_dynamic_map(signed), dtype=torch.float32))
        assert ours.numel() == 256 and bool((ours[1:] > ours[:-1]).all()) and ours.max() == 1.0
    assert dynamic_map(False).min() == 0.0 and dynamic_map(True).min() < -0.99


@pytest.mark.parametrize("signed", [True, False])
def test_round_trip_error_is_at_most_half_a_code_gap(signed):
    qmap = dynamic_map(signed)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10_000, generator=g) * torch.logspace(-7, 1, 10_000)  # 8 decades inside blocks
    x = x if signed else x.abs()
    codes, absmax = quantize_blockwise(x, qmap)
    assert codes.dtype == torch.uint8 and codes.shape == x.shape and absmax.numel() == 40  # ceil(10000 / 256)
    x_hat = dequantize_blockwise(codes, absmax, qmap)
    scale = absmax.repeat_interleave(256)[:x.numel()]
    y = x / scale
    # Nearest code: the error is at most half the gap between the two map entries around the value ...
    below = (torch.bucketize(y, qmap, right=True) - 1).clamp(0, 255)
    gap = qmap[(below + 1).clamp(max=255)] - qmap[below]
    outside = (y - qmap[0]).clamp(max=0).abs()  # below the signed map's lowest entry (-0.993)
    assert bool(((x_hat - x).abs() <= scale * (gap / 2 + outside) * (1 + 1e-5) + 1e-12).all())
    # ... so never more than half the largest gap (the top decade's linear steps): 0.9/64/2 or 0.9/128/2.
    worst = (0.9 / 64 / 2 if signed else 0.9 / 128 / 2) * (1 + 1e-5)
    assert ((x_hat - x).abs() / scale).max() <= worst
    # Dynamic (tree) map: small values keep a relative precision (a linear map would zero |y| < 1/255):
    # within 18% (signed) / 11% (unsigned) down to 1e-3 of the block's absmax, 11% / 6.2% down to 1e-2.
    for floor, bound in ((1e-3, 0.18 if signed else 0.11), (1e-2, 0.11 if signed else 0.062)):
        big = y.abs() >= floor
        assert ((x_hat - x).abs()[big] / x.abs()[big]).max() < bound
    # Zeros stay exactly zero.
    assert torch.equal(dequantize_blockwise(*quantize_blockwise(torch.zeros(300), qmap), qmap), torch.zeros(300))


def test_close_to_fp32_adamw_on_the_tiny_lm():
    """fp32 AdamW vs ours over 30 steps. Quantisation perturbs the moments of the two 4096-element MLP
    matrices of each block (every other tensor has fp32 state, as in bitsandbytes); an Adam step moves a
    weight by at most about lr, so we allow 10% of the largest possible movement, 0.1 lr t, per weight
    (observed: 0.047 lr t), and the loss curves must agree to 1e-3 per step (observed 4e-5)."""
    steps, batches = 30, lm_batches(30)
    m8, m32 = tiny_lm(), tiny_lm()
    start = [p.detach().clone() for p in m32.parameters()]
    l8 = train(m8, _ours(m8), batches)
    l32 = train(m32, torch.optim.AdamW(_groups(m32), lr=HP["lr"], betas=(0.9, 0.999), eps=1e-8,
                                       weight_decay=HP["weight_decay"]), batches)
    assert max(abs(a - b) for a, b in zip(l8, l32)) < 1e-3
    for a, b, p0 in zip(m8.parameters(), m32.parameters(), start):
        assert (a - b).abs().max() <= 0.1 * HP["lr"] * steps
        moved = (b - p0).norm()
        assert (a - b).norm() <= 0.1 * moved  # observed <= 4%


def _sync(src_model, src_opt, dst_model, dst_opt, copy_state):
    """Put the reference on our trajectory: our parameters and our state, so each step compares one update."""
    with torch.no_grad():
        for pa, pb in zip(src_model.parameters(), dst_model.parameters()):
            pb.copy_(pa)
            if dst_opt.state[pb]:
                copy_state(src_opt.state[pa], dst_opt.state[pb])


def _step_both(models, opts, batch):
    for model, opt in zip(models, opts):
        lm_loss(model, batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def _state_to_torchao(ours: dict, theirs: dict) -> None:
    if "exp_avg_codes" in ours:
        theirs["exp_avg"].codes.copy_(ours["exp_avg_codes"])
        theirs["exp_avg"].scale.copy_(ours["exp_avg_absmax"])
        theirs["exp_avg_sq"].codes.copy_(ours["exp_avg_sq_codes"])
        theirs["exp_avg_sq"].scale.copy_(ours["exp_avg_sq_absmax"])
    else:
        theirs["exp_avg"].copy_(ours["exp_avg"])
        theirs["exp_avg_sq"].copy_(ours["exp_avg_sq"])


def test_each_step_agrees_with_torchao_adamw8bit(monkeypatch):
    """torchao 0.18's AdamW8bit uses the same maps, block size 256, min size 4096 and nearest rounding.
    A free-running comparison is meaningless (a 1-ulp difference flips a code, which then shifts that weight
    by a visible fraction of lr), so each of 20 steps starts both from our parameters and state and compares
    that one update: parameters to rtol 1e-5 (fp32 arithmetic differs: torchao's float32 step tensor), codes
    identical but for rare ties at a half-way point, each off by one code."""
    from torchao.optim import AdamW8bit

    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)  # eager: no CPU compiler needed, seconds
    models = [tiny_lm(), tiny_lm()]
    ours = _ours(models[0])
    theirs = AdamW8bit(_groups(models[1]), lr=HP["lr"], betas=(0.9, 0.999), eps=1e-8,
                       weight_decay=HP["weight_decay"])
    flipped = total = 0
    for step, batch in enumerate(lm_batches(20)):
        _sync(models[0], ours, models[1], theirs, _state_to_torchao)
        _step_both(models, (ours, theirs), batch)
        for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=lambda m: f"step {step + 1}, {name}: {m}")
            sa, sb = ours.state[a], theirs.state[b]
            if "exp_avg_codes" in sa:
                assert torch.equal(sa["exp_avg_absmax"], sb["exp_avg"].scale)
                for key, sub in (("exp_avg_codes", "exp_avg"), ("exp_avg_sq_codes", "exp_avg_sq")):
                    diff = (sa[key].int() - sb[sub].codes.int()).abs()
                    assert diff.max() <= 1
                    flipped, total = flipped + int(diff.sum()), total + diff.numel()
    assert total > 0 and flipped <= total * 1e-3


def _state_to_bnb(ours: dict, theirs: dict) -> None:
    if "exp_avg_codes" in ours:
        theirs["state1"].copy_(ours["exp_avg_codes"])
        theirs["absmax1"].copy_(ours["exp_avg_absmax"])
        theirs["state2"].copy_(ours["exp_avg_sq_codes"])
        theirs["absmax2"].copy_(ours["exp_avg_sq_absmax"])
    else:
        theirs["state1"].copy_(ours["exp_avg"])
        theirs["state2"].copy_(ours["exp_avg_sq"])


def test_each_step_agrees_with_bitsandbytes_on_cpu():
    """bitsandbytes 0.50.2's AdamW8bit (the CUDA path's package; its CPU backend is the reference Python
    path of the same kernel) from our parameters and state at each of 20 steps: the update agrees to rtol
    1e-5 and its requantised moments decode within one code gap of ours. (Its CPU quantiser does not
    always pick the nearest code, so codes are compared through their values, not bit for bit.)"""
    bnb = pytest.importorskip("bitsandbytes")
    models = [tiny_lm(), tiny_lm()]
    ours = _ours(models[0])
    theirs = bnb.optim.AdamW8bit(_groups(models[1]), lr=HP["lr"], betas=(0.9, 0.999), eps=1e-8,
                                 weight_decay=HP["weight_decay"])
    qs, qu = dynamic_map(True), dynamic_map(False)
    for step, batch in enumerate(lm_batches(20)):
        _sync(models[0], ours, models[1], theirs, _state_to_bnb)
        _step_both(models, (ours, theirs), batch)
        for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=lambda m: f"step {step + 1}, {name}: {m}")
            sa, sb = ours.state[a], theirs.state[b]
            if "exp_avg_codes" in sa:
                for codes, absmax, c2, a2, qmap, gap in (("exp_avg_codes", "exp_avg_absmax", "state1", "absmax1", qs,
                                                          0.9 / 64), ("exp_avg_sq_codes", "exp_avg_sq_absmax",
                                                                      "state2", "absmax2", qu, 0.9 / 128)):
                    torch.testing.assert_close(sa[absmax], sb[a2])
                    mine = dequantize_blockwise(sa[codes], sa[absmax], qmap)
                    bnbs = dequantize_blockwise(sb[c2], sb[a2], qmap)
                    scale = sa[absmax].repeat_interleave(256)[:mine.numel()].view(mine.shape)
                    assert bool(((mine - bnbs).abs() <= gap * scale * 1.0001).all())


def test_state_is_about_two_bytes_per_parameter_for_large_tensors():
    layer = torch.nn.Linear(1024, 512, bias=False)
    opt = BlockwiseAdamW8bit(layer.parameters())
    layer(torch.randn(4, 1024)).square().sum().backward()
    opt.step()
    per_param = state_bytes(opt) / layer.weight.numel()
    assert per_param == pytest.approx(2 + 2 * 4 / 256)  # two uint8 codes + two fp32 scales per 256 weights
    state = opt.state[layer.weight]
    assert state["exp_avg_codes"].dtype == torch.uint8 and state["exp_avg_sq_codes"].dtype == torch.uint8
    # The tiny LM's tensors are mostly below 4096 elements, so fp32 state dominates there (~4.5 bytes).
    model = tiny_lm()
    opt = optim.create("adam8bit", model)
    train(model, opt, lm_batches(1))
    assert 4.0 < state_bytes(opt) / sum(p.numel() for p in model.parameters()) < 5.0


def test_odd_sizes_pad_the_last_block_and_resume_exactly():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4099))  # 16 full blocks and 3 elements
    opt = BlockwiseAdamW8bit([w])
    for _ in range(3):
        w.grad = torch.randn(4099)
        opt.step()
    assert opt.state[w]["exp_avg_absmax"].numel() == 17
    from tests.optim.harness import through_disk

    saved, w0 = through_disk(opt.state_dict()), w.detach().clone()
    grad = torch.randn(4099)
    w.grad = grad
    opt.step()
    w2 = torch.nn.Parameter(w0.clone())
    opt2 = BlockwiseAdamW8bit([w2])
    opt2.load_state_dict(saved)
    w2.grad = grad
    opt2.step()
    assert torch.equal(w, w2)


def test_backend_choice_is_checked():
    from optbench.errors import UserError

    with pytest.raises(UserError, match="optim.backend"):
        make_config("adam8bit", backend="cuda")
    assert isinstance(optim.create("adam8bit", tiny_lm()), BlockwiseAdamW8bit)  # CPU: ours, bnb or not
