"""The tiny language model the LM checks train: the registry's debug-size GPT-2 (model=gpt2-debug, 2 layers, 64
wide: every parameter role is there) on a synthetic token stream, all of it a pure function of its seeds."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from optbench.check.loop import Task
from optbench.config.schema import ModelConfig
from optbench.models import build

PRESET = "gpt2-debug"
VOCAB, SEQ, BATCH = 64, 16, 8
PATTERN, REPEATS, NOISE = 37, 60, 0.1
"""The stream: a random 37-token pattern repeated, 10% of its tokens replaced by random ones, so there is
structure to learn fast and a loss floor well above zero."""

Batch = tuple[torch.Tensor, torch.Tensor]


@functools.cache
def _model_config() -> ModelConfig:
    from optbench.config.compose import compose

    return compose([f"model={PRESET}"]).model


def tiny_lm(seed: int = 0) -> nn.Module:
    """A fresh model initialised from `seed`; the caller's random streams are left as they were."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build(_model_config(), VOCAB, SEQ)


def batches(n: int, seed: int = 0) -> list[Batch]:
    """`n` batches of (inputs, next-token targets): windows of the stream at random offsets."""
    g = torch.Generator().manual_seed(seed)
    stream = torch.randint(0, VOCAB, (PATTERN,), generator=g).repeat(REPEATS)
    noisy = torch.rand(stream.shape, generator=g) < NOISE
    stream = torch.where(noisy, torch.randint(0, VOCAB, stream.shape, generator=g), stream)
    starts = torch.randint(0, len(stream) - SEQ - 1, (n, BATCH), generator=g)
    windows = starts[..., None] + torch.arange(SEQ + 1)
    tokens = stream[windows]
    return [(row[:, :-1], row[:, 1:]) for row in tokens]


def task(data: list[Batch]) -> Task:
    """Next-token cross-entropy on `data`, one batch per step."""
    return Task(loss=lambda model, step: F.cross_entropy(model(data[step][0]).flatten(0, 1), data[step][1].flatten()),
                logits=lambda model, step: model(data[step][0]))
