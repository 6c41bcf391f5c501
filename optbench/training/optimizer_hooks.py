"""The trainer's side of optimizer capabilities: it calls hooks, it never reads an optimizer's name."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from optbench.models.layers import upcast
from optbench.optim.registry import Capabilities

LossFn = Callable[[], torch.Tensor]


class OptimizerHooks:
    """Calls what an optimizer's `Capabilities` ask for, at the points of the loop they name."""

    def __init__(self, optimizer: torch.optim.Optimizer, capabilities: Capabilities):
        self.optimizer = optimizer
        self.caps = capabilities

    def before_training(self, total_steps: int) -> None:
        if self.caps.needs_horizon:
            self.optimizer.set_horizon(total_steps)

    def before_step(self, loss: float) -> None:
        if self.caps.observes_loss:
            self.optimizer.observe_loss(loss)

    @contextlib.contextmanager
    def eval_mode(self) -> Iterator[None]:
        """Schedule-Free evaluates (and is saved for sampling) at its averaged point, then returns."""
        if not self.caps.train_eval_modes:
            yield
            return
        self.optimizer.eval()
        try:
            yield
        finally:
            self.optimizer.train()

    def wants_hessian(self, steps_done: int) -> bool:
        return self.caps.hessian_pass and steps_done % self.optimizer.hessian_every == 0

    def hessian_pass(self, logits_fn: Callable[[], torch.Tensor], generator: torch.Generator) -> None:
        """Sophia-G's estimator: backpropagate the loss on labels sampled from the model's own predictions."""
        logits = upcast(logits_fn())  # float64 runs stay float64
        flat = logits.view(-1, logits.size(-1))
        with torch.no_grad():
            sampled = torch.multinomial(F.softmax(flat, dim=-1), 1, generator=generator).view(-1)
        self.optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(flat, sampled).backward()
        self.optimizer.update_hessian(batch_tokens=flat.size(0))
        self.optimizer.zero_grad(set_to_none=True)
