"""Shared machinery for optimizer tests: tiny models, fixed batches, training and trajectory comparison.

Every optimizer test builds on these, so ours and a reference see the same init, the same batches
and the same loop; `compare_with_reference` is the step-by-step check the optimizer issues require.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from optbench import optim
from optbench.models import GPT2Config, build
from optbench.train.optimizer_hooks import OptimizerHooks

VOCAB, SEQ, BATCH = 64, 16, 8


def tiny_lm(seed: int = 0) -> nn.Module:
    """A 2-layer, 32-wide GPT-2 over a 64-token vocabulary: every parameter role is present."""
    torch.manual_seed(seed)
    return build(GPT2Config(n_layer=2, n_head=2, n_embd=32), VOCAB, SEQ)


def lm_batches(n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Windows of a fixed token stream with structure to learn (a noisy repeating pattern)."""
    g = torch.Generator().manual_seed(seed)
    pattern = torch.randint(0, VOCAB, (37,), generator=g)
    stream = pattern.repeat(60)
    noise = torch.rand(stream.shape, generator=g) < 0.1
    stream = torch.where(noise, torch.randint(0, VOCAB, stream.shape, generator=g), stream)
    starts = torch.randint(0, len(stream) - SEQ - 1, (n, BATCH), generator=g)
    return [(torch.stack([stream[s:s + SEQ] for s in row]), torch.stack([stream[s + 1:s + SEQ + 1] for s in row]))
            for row in starts]


def lm_loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x).flatten(0, 1), y.flatten())


def matrix_model(seed: int = 0, bias: bool = False) -> nn.Module:
    """Only 2-D weights (bias=False): what matrix optimizers (Muon, ...) see, with no backup involved."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 24, bias=bias), nn.Tanh(), nn.Linear(24, 16, bias=bias), nn.Tanh(),
                         nn.Linear(16, 6, bias=bias))


def regression_batches(n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(12, 6, generator=g)
    xs = [torch.randn(32, 12, generator=g) for _ in range(n)]
    return [(x, torch.tanh(x @ teacher)) for x in xs]


def regression_loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.mse_loss(model(x), y)


LossFn = Callable[[nn.Module, tuple], torch.Tensor]


def train(model: nn.Module, optimizer: torch.optim.Optimizer, batches, loss_fn: LossFn = lm_loss,
          name: str | None = None, first_step: int = 0) -> list[float]:
    """The trainer's loop in miniature, hooks included (Sophia's Hessian pass, horizons, loss feeds)."""
    hooks = OptimizerHooks(optimizer, optim.get(name).capabilities) if name else None
    if hooks is not None and first_step == 0:
        hooks.before_training(first_step + len(batches))
    losses = []
    for i, batch in enumerate(batches):
        loss = loss_fn(model, batch)
        loss.backward()
        if hooks is not None:
            hooks.before_step(loss.item())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if hooks is not None and hooks.wants_hessian(first_step + i + 1):
            generator = torch.Generator().manual_seed(first_step + i)
            hooks.hessian_pass(lambda: model(batch[0]), generator)
        losses.append(loss.item())
    return losses


def through_disk(state: dict) -> dict:
    """A state dict after a save/load round trip in the safe format checkpoints use."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def assert_resume_is_bit_identical(name: str, batches, split: int, **hparams) -> None:
    """Train on batches[:split], save model and optimizer state through disk, finish; a fresh model (another
    init) and optimizer loaded from the saves and finishing the same batches must end bit-identical."""
    model = tiny_lm()
    opt = optim.create(name, model, **hparams)
    train(model, opt, batches[:split], name=name)
    saved_model, saved_opt = through_disk(model.state_dict()), through_disk(opt.state_dict())
    train(model, opt, batches[split:], name=name, first_step=split)

    resumed = tiny_lm(seed=1)  # different init: everything must come from the saved state
    resumed.load_state_dict(saved_model)
    resumed_opt = optim.create(name, resumed, **hparams)
    resumed_opt.load_state_dict(saved_opt)
    train(resumed, resumed_opt, batches[split:], name=name, first_step=split)
    for (key, a), b in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), f"{name}: {key} differs after resume"


def compare_with_reference(ours: Callable[[nn.Module], torch.optim.Optimizer],
                           reference: Callable[[nn.Module], torch.optim.Optimizer],
                           model_fn: Callable[[], nn.Module] = tiny_lm, batches=None, loss_fn: LossFn = lm_loss,
                           steps: int = 20, rtol: float = 1e-5, atol: float = 1e-7) -> int:
    """Train two copies of one model, ours and the reference optimizer, on the same batches in fp32,
    asserting after every step that every parameter agrees. Returns the number of steps compared."""
    batches = batches if batches is not None else lm_batches(steps)
    model_a = model_fn()
    model_b = copy.deepcopy(model_a)
    opt_a, opt_b = ours(model_a), reference(model_b)
    for step, batch in enumerate(batches[:steps]):
        for model, opt in ((model_a, opt_a), (model_b, opt_b)):
            loss_fn(model, batch).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        for (name, a), (_, b) in zip(model_a.named_parameters(), model_b.named_parameters()):
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol,
                                       msg=lambda m: f"step {step + 1}, parameter {name}: {m}")
    return steps
