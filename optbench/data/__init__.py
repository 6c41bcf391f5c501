"""Corpora for training: named recipes, tokenizers, one-time preparation into token files, batches.

    prepared = load(cfg.data)                       # prepares on first use, then reuses
    train = TokenBatches(prepared.tokens("train"), seq_len, batch_size, grad_accum, data_seed, sampling)
    x, y = train.batch(step, micro)                 # for micro in train.micro_indices()
"""

from optbench.data.loader import TokenBatches, eval_batches
from optbench.data.prepare import Prepared, list_prepared, load, prepare
from optbench.data.recipes import RECIPES, Recipe
from optbench.data.tokenizers import make_tokenizer

__all__ = ["RECIPES", "Recipe", "prepare", "load", "Prepared", "list_prepared", "TokenBatches",
           "eval_batches", "make_tokenizer"]
