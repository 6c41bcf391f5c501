"""An optbench model behind lm-evaluation-harness's `LM` interface: text in, log-likelihoods and greedy text out.

lm-eval hands the adapter strings; every token-level decision is made here, with the run's own tokenizer:

  loglikelihood           log P(continuation | context). Context and continuation are encoded together and split
                          where the context's own tokens end, so a BPE merge across the boundary is the whole text's
                          (as lm-eval's HFLM does); the input is cut from the left to the model's seq_len.
  loglikelihood_rolling   log P(text) from the prefix token, in windows: each token predicted exactly once, every
                          window after the first with a full seq_len of context (lm-eval's rolling windows).
  generate_until          greedy tokens until a stop string or max_gen_toks; the window slides over the last
                          seq_len tokens as generation goes on.

An empty context is the prefix token: the tokenizer's end-of-text, or id 0 without one (as the trainer's empty
prompt). Probabilities are over the model's whole output (padding rows included), as its validation loss and an
exported copy under lm-eval's HFLM see them; greedy choices are among the tokenizer's ids only.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from tqdm import tqdm

from optbench.data.tokenizers import Tokenizer
from optbench.errors import UserError
from optbench.models.layers import upcast
from optbench.training import device as hw

DEFAULT_MAX_GEN_TOKS = 256


@dataclass(frozen=True)
class Row:
    """One sequence to score: `tokens` go in, and the last len(targets) positions are scored against `targets`."""

    tokens: list[int]
    targets: list[int]


def context_row(context: list[int], continuation: list[int], max_len: int) -> Row:
    """The row scoring `continuation` after `context`, the context cut from the left to fit `max_len` inputs."""
    if len(continuation) > max_len:
        raise UserError(f"a continuation of {len(continuation)} tokens does not fit the model's context of "
                        f"train.seq_len={max_len} tokens")
    whole = context + continuation
    return Row(whole[-(max_len + 1):-1], continuation)


def rolling_rows(ids: list[int], prefix: int, max_len: int) -> list[Row]:
    """Rows predicting each of `ids` once from `prefix` on: chunks of up to max_len targets, each chunk's input the
    max_len tokens before its last target (the first chunk's: the prefix and what of `ids` precedes it)."""
    stream = [prefix, *ids]  # stream[i] is the input that predicts ids[i]
    rows = []
    for start in range(0, len(ids), max_len):
        end = min(start + max_len, len(ids))
        rows.append(Row(stream[max(0, end - max_len):end], ids[start:end]))
    return rows


def truncate_at_stop(text: str, stops: Sequence[str]) -> str:
    """`text` up to the first occurrence of any stop string."""
    for stop in stops:
        text = text.split(stop)[0] if stop else text
    return text


class OptbenchLM(LM):
    """lm-eval's LM over `model` (eval mode, on `device`) and the run's `tokenizer`."""

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, max_len: int, vocab_limit: int,
                 device: torch.device, dtype: torch.dtype = torch.float32, batch_size: int = 16):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.vocab_limit = vocab_limit
        self._device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.prefix = tokenizer.eot if tokenizer.eot is not None else 0

    @property
    def tokenizer_name(self) -> str:  # lm-eval keys its request caches by it
        return f"optbench-{self.tokenizer.name}"

    # ----------------------------------------------------------------------------- encoding

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids), split off the encoding of the joined text.

        Trailing whitespace of the context moves to the continuation first: BPE vocabularies attach a space to
        the word after it (" Paris"), which is how the continuation was seen in training."""
        stripped = context.rstrip()
        continuation = context[len(stripped):] + continuation
        if not stripped:
            return [self.prefix], self.tokenizer.encode(continuation)
        whole = self.tokenizer.encode(stripped + continuation)
        context_ids = self.tokenizer.encode(stripped)
        return context_ids, whole[len(context_ids):]

    # ----------------------------------------------------------------------------- lm-eval's three requests

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        rows = [context_row(*self.encode_pair(*request.args), self.max_len) for request in requests]
        return self.score(rows, "loglikelihood")

    def loglikelihood_rolling(self, requests) -> list[float]:
        per_text = [rolling_rows(self.tokenizer.encode(request.args[0]), self.prefix, self.max_len)
                    for request in requests]
        scores = iter(self.score([row for rows in per_text for row in rows], "loglikelihood_rolling"))
        return [sum(logprob for logprob, _ in itertools.islice(scores, len(rows))) for rows in per_text]

    def generate_until(self, requests) -> list[str]:
        jobs = [self._generation_job(*request.args) for request in requests]
        texts: list[str] = [""] * len(jobs)
        order = sorted(range(len(jobs)), key=lambda i: len(jobs[i]["ids"]))
        for _, same_length in itertools.groupby(order, key=lambda i: len(jobs[i]["ids"])):
            for batch in _chunks(list(same_length), self.batch_size):
                for i, text in zip(batch, self._generate([jobs[i] for i in batch])):
                    texts[i] = text
        return texts

    # ----------------------------------------------------------------------------- scoring

    @torch.no_grad()
    def score(self, rows: list[Row], what: str) -> list[tuple[float, bool]]:
        """(sum of the targets' log-probabilities, whether greedy decoding gives every target) per row, in batches
        of similar length (longest first), padded on the right."""
        results: list[tuple[float, bool]] = [(0.0, True)] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i].tokens))
        batches = list(_chunks(order, self.batch_size))
        for batch in tqdm(batches, desc=what, disable=None):
            logits = self._logits([rows[i].tokens for i in batch])
            for j, i in enumerate(batch):
                results[i] = self._row_score(logits[j], rows[i])
        return results

    def _row_score(self, logits: torch.Tensor, row: Row) -> tuple[float, bool]:
        end = len(row.tokens)
        # position p predicts the token after tokens[p]; only the scored positions are normalised (a batch's full
        # log-softmax over a 50k vocabulary would be gigabytes)
        scored = F.log_softmax(upcast(logits[end - len(row.targets):end]), dim=-1)
        targets = torch.tensor(row.targets, dtype=torch.long, device=scored.device)
        picked = scored.gather(-1, targets[:, None]).squeeze(-1)
        greedy = bool((scored[:, :self.vocab_limit].argmax(-1) == targets).all())
        return float(picked.sum()), greedy

    def _logits(self, sequences: list[list[int]]) -> torch.Tensor:
        """(batch, longest, vocab) logits; shorter rows padded on the right with id 0, which a causal model's earlier
        positions never see."""
        longest = max(len(s) for s in sequences)
        batch = torch.zeros(len(sequences), longest, dtype=torch.long)
        for j, tokens in enumerate(sequences):
            batch[j, :len(tokens)] = torch.tensor(tokens)
        with hw.autocast(self._device, self.dtype):
            return self.model(batch.to(self._device))

    # ----------------------------------------------------------------------------- generation

    def _generation_job(self, context: str, gen_kwargs: dict[str, Any]) -> dict[str, Any]:
        """A request's context ids (cut from the left to seq_len), stop strings and token budget. Sampling settings
        (do_sample, temperature) are not read: decoding is greedy."""
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        if self.tokenizer.eot is not None:  # as lm-eval's HFLM: the end-of-text token ends every generation
            until.append(self.tokenizer.decode([self.tokenizer.eot]))
        ids = self.tokenizer.encode(context) if context else [self.prefix]
        return {"ids": ids[-self.max_len:], "until": until,
                "max_gen_toks": int(gen_kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))}

    @torch.no_grad()
    def _generate(self, jobs: list[dict[str, Any]]) -> list[str]:
        """Greedy continuations of contexts of one length, each stopped at its first stop string or budget."""
        sequences = torch.tensor([job["ids"] for job in jobs], dtype=torch.long, device=self._device)
        start = sequences.size(1)
        texts = [""] * len(jobs)
        live = list(range(len(jobs)))  # rows still generating; finished rows leave the batch
        for step in range(max(job["max_gen_toks"] for job in jobs)):
            live = [i for i in live if step < jobs[i]["max_gen_toks"]]
            if not live:
                break
            window = sequences[live, -self.max_len:]
            with hw.autocast(self._device, self.dtype):
                logits = self.model(window)[:, -1, :self.vocab_limit]
            chosen = torch.zeros(len(jobs), 1, dtype=torch.long, device=self._device)
            chosen[live, 0] = logits.argmax(-1)
            sequences = torch.cat((sequences, chosen), dim=1)
            for i in live:
                texts[i] = self.tokenizer.decode(sequences[i, start:].tolist())
            live = [i for i in live if not any(stop and stop in texts[i] for stop in jobs[i]["until"])]
        return [truncate_at_stop(text, job["until"]) for text, job in zip(texts, jobs)]


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
