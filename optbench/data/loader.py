"""Batches of token windows from a flat token file, as a pure function of (data_seed, step).

A step's global batch is `grad_accum` micro-batches of `batch_size` windows of `seq_len + 1`
tokens (inputs and the next-token targets). Micro-batch m of step k depends only on
(data_seed, k, m, sampling), never on the world size: rank r of w computes the micro-batches
m with m % w == r, so any number of ranks together see the same global batch, and a resumed run
continues exactly where it stopped.

random:   each window starts at a random offset (nanoGPT), drawn from a generator seeded with
          (data_seed, step, micro) rather than global RNG state.
shuffled: the file is cut into non-overlapping windows, read in a permutation seeded with
          (data_seed, epoch), so every window is seen once per epoch.
"""

from __future__ import annotations

import numpy as np
import torch

from optbench.config.schema import SAMPLING
from optbench.errors import check, check_choice


class TokenBatches:
    """Training batches of one rank, drawn deterministically from `tokens` (an array or memmap)."""

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, grad_accum: int = 1,
                 data_seed: int = 0, sampling: str = "random", rank: int = 0, world_size: int = 1):
        check_choice("data.sampling", sampling, SAMPLING)
        check(grad_accum % world_size == 0,
              f"train.grad_accum={grad_accum} must be a multiple of the world size {world_size}")
        check(0 <= rank < world_size, f"rank {rank} is outside a world of size {world_size}")
        check(data_seed >= 0, f"train.data_seed={data_seed} must be >= 0")
        check(len(tokens) > seq_len,
              f"the training split has {len(tokens)} tokens, fewer than train.seq_len + 1 = {seq_len + 1}")
        self.tokens, self.seq_len, self.batch_size = tokens, seq_len, batch_size
        self.grad_accum, self.data_seed, self.sampling = grad_accum, data_seed, sampling
        self.rank, self.world_size = rank, world_size
        self.n_windows = len(tokens) // (seq_len + 1)
        """Non-overlapping windows in the file: one epoch of shuffled sampling."""
        self._perms: dict[int, np.ndarray] = {}

    def micro_indices(self) -> list[int]:
        """The global micro-batch indices this rank computes at every step."""
        return list(range(self.rank, self.grad_accum, self.world_size))

    def batch(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets (int64, CPU, batch_size x seq_len) of global micro-batch `micro` of `step`."""
        check(0 <= micro < self.grad_accum, f"micro-batch {micro} is outside 0..{self.grad_accum - 1}")
        return windows(self.tokens, self.starts(step, micro), self.seq_len)

    def starts(self, step: int, micro: int) -> np.ndarray:
        """The first token offset of each window of the micro-batch."""
        if self.sampling == "random":
            rng = np.random.default_rng([self.data_seed, step, micro])
            return rng.integers(0, len(self.tokens) - self.seq_len, size=self.batch_size)
        first = (step * self.grad_accum + micro) * self.batch_size  # sequences consumed before this one
        sequence = first + np.arange(self.batch_size)
        epochs, positions = np.divmod(sequence, self.n_windows)
        picked = [self._permutation(int(e))[p] for e, p in zip(epochs, positions)]
        return np.asarray(picked, dtype=np.int64) * (self.seq_len + 1)

    def _permutation(self, epoch: int) -> np.ndarray:
        """The window order of `epoch`, kept for the current and the next epoch only."""
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                del self._perms[min(self._perms)]
            self._perms[epoch] = np.random.default_rng([self.data_seed, epoch]).permutation(self.n_windows)
        return self._perms[epoch]


def windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs tokens[s : s+seq_len] and targets tokens[s+1 : s+seq_len+1] for each start s."""
    rows = np.stack([tokens[s : s + seq_len + 1] for s in starts])
    x = torch.from_numpy(rows[:, :-1].astype(np.int64))
    y = torch.from_numpy(rows[:, 1:].astype(np.int64))
    return x, y


def eval_batches(tokens: np.ndarray, seq_len: int, batch_size: int,
                 n_batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed evaluation batches: `n_batches * batch_size` non-overlapping windows spread evenly.

    The same at every call. A split too short for that many gives fewer whole batches, or a
    single smaller one when it holds fewer than `batch_size` windows.
    """
    available = len(tokens) // (seq_len + 1)
    check(available > 0, f"the evaluation split has {len(tokens)} tokens, fewer than seq_len + 1 = {seq_len + 1}")
    count = min(n_batches * batch_size, available)
    if count >= batch_size:
        count -= count % batch_size
    starts = (np.arange(count) * available // count) * (seq_len + 1)
    return [windows(tokens, starts[i : i + batch_size], seq_len) for i in range(0, count, batch_size)]
