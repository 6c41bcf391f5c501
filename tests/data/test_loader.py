"""Batches: a pure function of (data_seed, step), the same global batch on any number of ranks."""

import numpy as np
import pytest
import torch

from optbench.data import TokenBatches, eval_batches
from optbench.errors import UserError


def token_file(tmp_path, n, dtype, first=0):
    """A memory-mapped token file holding first, first+1, ..., first+n-1, like prepare writes."""
    path = tmp_path / f"tokens-{np.dtype(dtype).name}.bin"
    np.arange(first, first + n, dtype=dtype).tofile(path)
    return np.memmap(path, dtype=dtype, mode="r")


@pytest.fixture
def tokens(tmp_path):
    return token_file(tmp_path, 10_000, np.uint16)


def global_batch(batches, step):
    """The step's micro-batches on one rank, in global micro order."""
    return [batches.batch(step, micro) for micro in range(batches.grad_accum)]


@pytest.mark.parametrize("sampling", ["random", "shuffled"])
def test_same_seed_and_step_same_batch(tokens, sampling):
    a = TokenBatches(tokens, 16, 4, grad_accum=2, data_seed=7, sampling=sampling)
    b = TokenBatches(tokens, 16, 4, grad_accum=2, data_seed=7, sampling=sampling)
    for step in (0, 5, 123):
        for (xa, ya), (xb, yb) in zip(global_batch(a, step), global_batch(b, step)):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a.batch(0, 0)[0], a.batch(1, 0)[0])
    assert not torch.equal(a.batch(0, 0)[0], a.batch(0, 1)[0])
    other_seed = TokenBatches(tokens, 16, 4, grad_accum=2, data_seed=8, sampling=sampling)
    assert not torch.equal(a.batch(0, 0)[0], other_seed.batch(0, 0)[0])


@pytest.mark.parametrize("sampling", ["random", "shuffled"])
def test_resumed_iteration_equals_uninterrupted(tokens, sampling):
    run = TokenBatches(tokens, 16, 4, grad_accum=2, data_seed=3, sampling=sampling)
    uninterrupted = [global_batch(run, step) for step in range(400)]  # several shuffled epochs
    resumed = TokenBatches(tokens, 16, 4, grad_accum=2, data_seed=3, sampling=sampling)
    for step in range(250, 400):
        for (x, y), (x0, y0) in zip(global_batch(resumed, step), uninterrupted[step]):
            assert torch.equal(x, x0) and torch.equal(y, y0)


@pytest.mark.parametrize("sampling", ["random", "shuffled"])
def test_ranks_together_compute_the_single_rank_batch(tokens, sampling):
    single = TokenBatches(tokens, 16, 4, grad_accum=4, data_seed=1, sampling=sampling)
    ranks = [TokenBatches(tokens, 16, 4, grad_accum=4, data_seed=1, sampling=sampling, rank=r, world_size=2)
             for r in range(2)]
    assert [r.micro_indices() for r in ranks] == [[0, 2], [1, 3]]
    for step in (0, 9):
        combined = {m: r.batch(step, m) for r in ranks for m in r.micro_indices()}
        for micro, (x, y) in enumerate(global_batch(single, step)):
            assert torch.equal(combined[micro][0], x) and torch.equal(combined[micro][1], y)


def test_shuffled_sees_every_window_once_per_epoch(tmp_path):
    tokens = token_file(tmp_path, 17 * 50 + 5, np.uint32)  # 50 windows of 17 tokens, 5 tokens left over
    batches = TokenBatches(tokens, 16, 3, grad_accum=2, data_seed=0, sampling="shuffled")
    firsts = [int(x[i, 0]) for step in range(50) for x, _ in global_batch(batches, step) for i in range(3)]
    for epoch in range(6):  # 300 sequences: six epochs of the 50 windows, each in a fresh order
        seen = firsts[epoch * 50 : (epoch + 1) * 50]
        assert sorted(seen) == list(range(0, 17 * 50, 17))
    assert firsts[:50] != firsts[50:100]


@pytest.mark.parametrize("dtype, first", [(np.uint16, 0), (np.uint32, 100_000)])
@pytest.mark.parametrize("sampling", ["random", "shuffled"])
def test_targets_are_inputs_shifted_by_one(tmp_path, dtype, first, sampling):
    tokens = token_file(tmp_path, 1000, dtype, first)  # uint32 ids beyond uint16's range survive
    x, y = TokenBatches(tokens, 32, 8, data_seed=5, sampling=sampling).batch(3, 0)
    assert x.shape == y.shape == (8, 32) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y - x, torch.ones_like(x))
    assert int(x.min()) >= first


def test_random_windows_stay_inside_the_file(tmp_path):
    tokens = token_file(tmp_path, 40, np.uint16)
    batches = TokenBatches(tokens, 32, 64, data_seed=0)
    ends = [int(y[:, -1].max()) for y in (batches.batch(step, 0)[1] for step in range(20))]
    assert max(ends) == 39  # the last token is reachable, nothing beyond it


def test_eval_batches_are_fixed_and_non_overlapping(tokens):
    first = eval_batches(tokens, 16, 4, 5)
    assert len(first) == 5 and all(x.shape == (4, 16) for x, _ in first)
    for (x, y), (x2, y2) in zip(first, eval_batches(tokens, 16, 4, 5)):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    starts = sorted(int(x[i, 0]) for x, _ in first for i in range(4))
    assert all(b - a >= 17 for a, b in zip(starts, starts[1:]))
    assert starts[-1] > len(tokens) * 0.9  # spread over the whole split, not just its head


def test_eval_batches_on_a_short_split(tmp_path):
    tokens = token_file(tmp_path, 17 * 6, np.uint16)  # six windows
    assert [x.shape[0] for x, _ in eval_batches(tokens, 16, 4, 5)] == [4]
    assert [x.shape[0] for x, _ in eval_batches(tokens, 16, 8, 5)] == [6]
    with pytest.raises(UserError, match="fewer than seq_len \\+ 1 = 129"):
        eval_batches(tokens, 128, 4, 5)


def test_configuration_errors(tokens):
    with pytest.raises(UserError, match="grad_accum=3 must be a multiple of the world size 2"):
        TokenBatches(tokens, 16, 4, grad_accum=3, world_size=2)
    with pytest.raises(UserError, match="fewer than train.seq_len"):
        TokenBatches(tokens[:16], 16, 4)
    with pytest.raises(UserError, match="data.sampling 'shuffle'"):
        TokenBatches(tokens, 16, 4, sampling="shuffle")
