"""Optimizers for the check-optimizer tests, reached as `tests.check.optimizers:Class` through optim=torch as a
user's own class would be: `Momentum` is correct, and each of the others is one deliberate fault away from it."""

from dataclasses import dataclass

import torch

MODULE = __name__


class Momentum(torch.optim.Optimizer):
    """Heavy-ball SGD with decoupled weight decay, written correctly."""

    def __init__(self, params, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    def step_size(self, group: dict) -> float:
        return group["lr"]

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr = self.step_size(group)
            for p in group["params"]:
                if p.grad is None:
                    continue
                buffer = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buffer.mul_(group["momentum"]).add_(p.grad)
                p.mul_(1 - lr * group["weight_decay"]).add_(buffer, alpha=-lr)


@dataclass
class StepRecord:
    """A plain Python object: picklable, but not something torch.load(weights_only=True) will build."""

    step: int


class ObjectInState(Momentum):
    """Keeps a Python object in its state, which a checkpoint loaded safely cannot hold."""

    @torch.no_grad()
    def step(self, closure=None):
        super().step(closure)
        for state in self.state.values():
            state["record"] = StepRecord(state.get("record", StepRecord(0)).step + 1)


class IgnoresLr(Momentum):
    """Steps with the lr it was built with, whatever the schedule has set in its param groups since."""

    def __init__(self, params, lr: float = 0.1, **options):
        super().__init__(params, lr=lr, **options)
        self.built_lr = lr

    def step_size(self, group: dict) -> float:
        return self.built_lr


class DecaysWithoutGradient(Momentum):
    """Applies weight decay to every parameter of its groups, those without a gradient included."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
        super().step(closure)


class NoisyGradient(Momentum):
    """Adds noise from torch's global stream to each gradient: correct, as long as runs seed that stream and a
    resume restores it, as the trainer does."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.add_(torch.randn_like(p), alpha=1e-3)
        super().step(closure)


class Ascends(Momentum):
    """Steps up the gradient."""

    def step_size(self, group: dict) -> float:
        return -group["lr"]


class Fp32Only(Momentum):
    """Refuses parameters that are not float32, saying so."""

    def __init__(self, params, **options):
        super().__init__(params, **options)
        dtypes = {p.dtype for group in self.param_groups for p in group["params"]}
        if dtypes != {torch.float32}:
            raise TypeError(f"Fp32Only needs float32 parameters, got {sorted(map(str, dtypes))}")


class CrashesInBf16(Momentum):
    """Fails in bf16 the way a kernel fed mixed dtypes does: no refusal, a crash."""

    @torch.no_grad()
    def step(self, closure=None):
        if any(p.dtype != torch.float32 for group in self.param_groups for p in group["params"]):
            raise RuntimeError("expected m1 and m2 to have the same dtype, but got: float != c10::BFloat16")
        super().step(closure)
