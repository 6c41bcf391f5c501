"""Validation metrics on fixed windows, with the ranks of a distributed run sharing the work where they can."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from optbench.models.layers import upcast
from optbench.training import device as hw, distributed


@torch.no_grad()
def validation_metrics(model: torch.nn.Module, forward: Callable[[torch.Tensor], torch.Tensor],
                       batches: Sequence[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
                       dtype: torch.dtype, world: distributed.World, share: bool) -> dict[str, float]:
    """Loss, perplexity and next-token accuracy over `batches`, `model` in eval mode for the pass. `share`:
    DDP ranks take every world.size-th window and sum; FSDP ranks must run the same forwards (their
    all-gathers pair up), so each evaluates every window."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for i, (x, y) in enumerate(batches):
        if share and i % world.size != world.rank:
            continue
        x, y = x.to(device), y.to(device)
        with hw.autocast(device, dtype):
            logits = forward(x)
        logits = upcast(logits).view(-1, logits.size(-1))
        loss_sum += F.cross_entropy(logits, y.view(-1), reduction="sum").item()
        correct += (logits.argmax(-1) == y.view(-1)).sum().item()
        count += y.numel()
    model.train()
    if share:
        loss_sum, correct, count = distributed.sum_(world, [loss_sum, correct, count], device)
    val_loss = loss_sum / count
    return {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0)), "val_acc": correct / count}
