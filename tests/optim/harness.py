"""Shared machinery for optimizer tests: tiny models, fixed batches, training and trajectory comparison.

Every optimizer test builds on these, so ours and a reference see the same init, the same batches
and the same loop; `compare_with_reference` is the step-by-step check the optimizer issues require, and
`reference_groups` gives the reference its param groups by the tests' own rules, not optbench's routing.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from optbench import optim
from optbench.models import GPT2Config, build
from optbench.training.optimizer_hooks import OptimizerHooks

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

KEY_BIASES = ("transformer.h.0.attn.c_attn.bias", "transformer.h.1.attn.c_attn.bias")
"""tiny_lm's query/key/value biases. The key third has an exactly zero gradient (softmax ignores a shift shared by
every key of a query), so its gradient is rounding noise that Adam-like methods normalise into full steps: where
two implementations round differently, those entries drift apart while everything else agrees."""


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


# ------------------------------------------------------------------------------------ reference groups
# The reference side of every comparison gets its param groups from these rules, written out here rather than
# taken from optbench.optim.routing: a routing bug (a role swapped, decay on a norm gain) would otherwise be
# built into ours and the reference alike and pass. They restate routing.py's documented rules for the models
# these tests use: token/position tables are embeddings (a head tied to one is that table), the untied output
# projection is the head, fewer than 2 dimensions is a vector (norm gains, biases), every other weight a matrix;
# matrices and the head decay, vectors never, embeddings as decay_embeddings says.
EMBEDDING_TABLES = ("wte.weight", "wpe.weight", "tok_embeddings.weight")
OUTPUT_HEADS = ("lm_head.weight", "output.weight")
ROLE_ORDER = ("embedding", "head", "vector", "matrix")
"""The order optbench lists its groups in; reductions over groups (Prodigy's d, Adan's clip) sum in it."""


def reference_roles(model: nn.Module) -> dict[str, str]:
    """Parameter name -> role by the rules above (a tied weight once, under its first name)."""
    if getattr(model, "lr_multipliers", lambda: {})():
        raise NotImplementedError("reference_groups has no per-parameter learning rates (muP)")
    roles = {}
    for name, p in model.named_parameters():
        last_two = ".".join(name.split(".")[-2:])
        roles[name] = ("embedding" if last_two in EMBEDDING_TABLES else "head" if last_two in OUTPUT_HEADS
                       else "vector" if p.dim() < 2 else "matrix")
    # Guard on the table above, not a rule: a model whose embedding is named otherwise must be added to it.
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    unknown = [n for n, p in model.named_parameters() if (id(p) in tables) != (roles[n] == "embedding")]
    assert not unknown, f"reference_roles: add these embedding names to EMBEDDING_TABLES: {unknown}"
    return roles


def reference_groups(model: nn.Module, weight_decay: float, decay_embeddings: bool = True, tagged: bool = False,
                     **extra) -> list[dict]:
    """torch.optim param groups by the test's own rules: one per role present, in ROLE_ORDER, each with its
    weight decay and `extra` keys; `tagged` adds each group's "role" and parameter "names"."""
    roles, params = reference_roles(model), dict(model.named_parameters())
    groups = []
    for role in ROLE_ORDER:
        names = [name for name, r in roles.items() if r == role]
        if not names:
            continue
        decays = role in ("matrix", "head") or (role == "embedding" and decay_embeddings)
        group = {"params": [params[n] for n in names], "weight_decay": weight_decay if decays else 0.0, **extra}
        if tagged:
            group.update(role=role, names=names)
        groups.append(group)
    return groups


# ------------------------------------------------------------------------------------ step-by-step comparison
@dataclass(frozen=True)
class Comparison:
    """What compare_with_reference actually compared."""

    steps: int
    """Optimizer steps taken and compared."""
    compared: tuple[int, ...]
    """Parameters compared after each step."""
    max_diff: dict[str, float]
    """Parameter name -> max |ours - reference| over every entry and step."""
    moved: dict[str, float]
    """Parameter name -> max |final - initial| of ours: how far the trajectory went."""


MIN_MOVE = 1e-5
"""Every compared tensor must move at least this far (max abs over its entries) and 10x its tolerance, or the
agreement says nothing: two optimizers that do nothing agree perfectly, and two that move less than the
tolerance agree whatever they do."""


def compare_with_reference(ours: Callable[[nn.Module], torch.optim.Optimizer],
                           reference: Callable[[nn.Module], torch.optim.Optimizer],
                           model_fn: Callable[[], nn.Module] = tiny_lm, batches=None, loss_fn: LossFn = lm_loss,
                           steps: int | None = None, rtol: float = 1e-5, atol: float = 1e-7,
                           tolerances: Mapping[str, Mapping[str, float]] | None = None,
                           still: Collection[str] = (), each_step: Callable | None = None) -> Comparison:
    """Train two copies of one model, ours and the reference optimizer, on the same batches in fp32,
    asserting after every step that every parameter agrees (rtol, atol; `tolerances` overrides them per
    parameter name), then that every parameter but those in `still` moved (MIN_MOVE). `steps` defaults to
    len(batches) (20 fresh LM batches without any); `each_step(step, (model, opt), (model, opt))` runs after
    each step's comparison, for checks beyond the parameters."""
    if batches is None:
        batches = lm_batches(steps or 20)
    steps = len(batches) if steps is None else steps
    assert steps == len(batches) > 0, f"{len(batches)} batches for {steps} steps: each step needs its own"
    model_a = model_fn()
    model_b = copy.deepcopy(model_a)
    names = [name for name, _ in model_a.named_parameters()]
    assert names == [name for name, _ in model_b.named_parameters()]
    tolerances = dict(tolerances or {})
    assert set(tolerances) | set(still) <= set(names), f"not parameters: {(set(tolerances) | set(still)) - set(names)}"
    tol = {name: (tolerances.get(name, {}).get("rtol", rtol), tolerances.get(name, {}).get("atol", atol))
           for name in names}
    initial = {name: p.detach().clone() for name, p in model_a.named_parameters()}
    opt_a, opt_b = ours(model_a), reference(model_b)
    compared, max_diff = [], dict.fromkeys(names, 0.0)
    for step, batch in enumerate(batches):
        for model, opt in ((model_a, opt_a), (model_b, opt_b)):
            loss_fn(model, batch).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        count = 0
        for (name, a), b in zip(model_a.named_parameters(), model_b.parameters()):
            max_diff[name] = max(max_diff[name], (a - b).abs().max().item())
            torch.testing.assert_close(a, b, rtol=tol[name][0], atol=tol[name][1],
                                       msg=lambda m: f"step {step + 1}, parameter {name}: {m}")
            count += 1
        compared.append(count)
        if each_step is not None:
            each_step(step + 1, (model_a, opt_a), (model_b, opt_b))
    moved = {name: (p.detach() - initial[name]).abs().max().item() for name, p in model_a.named_parameters()}
    for name in names:
        if name in still:
            continue
        r, a = tol[name]
        needed = max(MIN_MOVE, 10 * (a + r * initial[name].abs().max().item()))
        assert moved[name] >= needed, (f"{name} moved only {moved[name]:.2e} in {steps} steps (needs {needed:.1e}): "
                                       "agreement there says nothing")
    return Comparison(steps=steps, compared=tuple(compared), max_diff=max_diff, moved=moved)
