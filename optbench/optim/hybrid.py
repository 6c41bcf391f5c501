"""Matrix optimizers paired with a backup: one `torch.optim.Optimizer` over two inner ones.

Muon-like optimizers are defined for 2-D hidden matrices only; embeddings, the head and vectors go
to a backup (AdamW by default), as in Keller Jordan's MuonWithAuxAdam and the EPFL benchmark. This
class steps both and exposes their param groups as its own (the same dicts), so the trainer's lr
schedule, clipping and checkpoints see one optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from optbench.config.schema import OptimConfig
from optbench.optim.algorithms.adamw import AdamWConfig


@dataclass
class MatrixOptimConfig(OptimConfig):
    """Base of configs for optimizers that take only hidden matrices."""

    backup: AdamWConfig = field(default_factory=lambda: AdamWConfig(lr=3e-3, weight_decay=0.0))
    """The optimizer of embeddings, head and vectors; `optim.backup.lr=...` tunes it."""


class HybridOptimizer(torch.optim.Optimizer):
    """Steps several optimizers over disjoint parameters as one."""

    def __init__(self, parts: dict[str, torch.optim.Optimizer]):
        self.parts = parts
        super().__init__(self._groups(), defaults={})

    def _groups(self) -> list[dict]:
        return [group for part in self.parts.values() for group in part.param_groups]

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for part in self.parts.values():
            part.step()
        return loss

    def state_dict(self) -> dict:
        return {"parts": {name: part.state_dict() for name, part in self.parts.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        for name, part in self.parts.items():
            part.load_state_dict(state_dict["parts"][name])
        self.param_groups = self._groups()  # loading replaces the inner group dicts

    def __getattr__(self, name: str):
        """Hooks a part implements (update_hessian, train/eval, ...) are reached through the hybrid."""
        parts = self.__dict__.get("parts", {})
        for part in parts.values():
            if hasattr(part, name):
                return getattr(part, name)
        raise AttributeError(name)
