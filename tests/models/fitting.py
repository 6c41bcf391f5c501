"""The "loss falls" check every model family's tests share: AdamW memorising one fixed random batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fit_repeated_batch(model: torch.nn.Module, vocab: int, seq: int, steps: int = 30, lr: float = 1e-2) -> list[float]:
    """The cross-entropy at each of `steps` AdamW steps on one (4, seq) batch of random tokens below `vocab`
    (seeded); a model's auxiliary losses (MoE routers) are added to what is minimised, not to what is returned."""
    batch = torch.randint(0, vocab, (4, seq + 1), generator=torch.Generator().manual_seed(0))
    x, y = batch[:, :-1], batch[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        ce = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        (ce + sum(model.auxiliary_losses().values())).backward()
        optimizer.step()
        losses.append(ce.item())
    return losses
