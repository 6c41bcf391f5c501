"""What the downstream tests share: a briefly trained run, a tiny lm-eval task on local data, and the model's own
log-probabilities computed here, apart from the adapter, to check it against."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

import optbench
from optbench import data as datalib
from optbench import models
from optbench.config.compose import load_yaml
from optbench.training import checkpoint
from tests.conftest import tiny_run, write_corpus

SEQ_LEN = 32

DOCS = [  # question, choices, gold: the corpus is "N the quick brown fox jumps over the lazy dog; pack my box ..."
    ("the quick brown", ["fox", "dog", "lazy jugs"], 0),
    ("jumps over the", ["lazy", "quick", "box"], 0),
    ("pack my", ["dozen", "box", "over the"], 1),
    ("five dozen", ["jugs", "fox", "brown dog"], 0),
    ("the lazy", ["fox", "dog", "quick box"], 1),
    ("with five", ["dozen jugs", "dog", "my"], 0),
    ("brown fox", ["jumps", "packs", "the dog"], 0),
    ("over the", ["lazy dog", "box", "fox"], 0),
]


def lm_eval():
    """lm-eval, or a skip (a failure under CI, whose test extra installs it)."""
    try:
        import lm_eval as library
    except ImportError:
        from tests.required import missing

        missing("lm-eval is not installed (it is in the test extras: pip install -e '.[test]')")
    return library


def train_run(folder: Path, *extra: str) -> Path:
    """tests/conftest.py's tiny 2-layer GPT on characters, 40 steps at a high learning rate (val loss ~1.5), one
    evaluation; `extra` overrides replace its own."""
    extra = ("train.steps=40", "optim.lr=1e-2", "eval.every=0", "eval.batches=1", "eval.sample_tokens=0",
             "train.threads=1", "run.log_every=100", f"train.seq_len={SEQ_LEN}", *extra)
    keys = {item.partition("=")[0] for item in extra}
    base = [item for item in tiny_run(folder, write_corpus(folder)) if item.partition("=")[0] not in keys]
    optbench.train([*base, *extra])
    return folder / "run"


def write_task(folder: Path, name: str = "tiny_mc", docs=DOCS) -> Path:
    """A folder with one multiple-choice task in lm-eval's YAML format, its documents in a local jsonl file."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "label": gold}) + "\n" for q, c, gold in docs))
    task = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
            "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{question}}",
            "doc_to_choice": "{{choices}}", "doc_to_target": "{{label}}",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1.0}}
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    return folder


def load_run(run_dir: Path):
    """(model in eval mode, tokenizer, vocabulary size) of the run's newest checkpoint, read here directly."""
    cfg = load_yaml(run_dir / "config.yaml")
    prepared = datalib.load(cfg.data, progress=False)
    model = models.build(cfg.model, prepared.vocab_size, cfg.train.seq_len)
    model.load_state_dict(checkpoint.CheckpointStore(run_dir / "checkpoints").latest()[1]["model"])
    return model.eval(), prepared.tokenizer(), prepared.vocab_size


@torch.no_grad()
def token_logprobs(model, inputs: list[int]) -> torch.Tensor:
    """(len(inputs), vocab): log-softmax of the model's logits after each input token, one sequence, no padding."""
    return F.log_softmax(model(torch.tensor([inputs]))[0].float(), dim=-1)


def continuation_logprob(model, tokenizer, context: str, continuation: str, seq_len: int = SEQ_LEN) -> float:
    """log P(continuation | context): the joined text's tokens after the context's own, each scored from at most
    seq_len tokens before it, the first ones dropped when the whole does not fit."""
    whole = tokenizer.encode(context + continuation)
    n = len(whole) - len(tokenizer.encode(context))
    inputs = whole[:-1][-seq_len:]
    logprobs = token_logprobs(model, inputs)
    return sum(logprobs[len(inputs) - n + k, whole[len(whole) - n + k]].item() for k in range(n))


def hand_computed(run_dir: Path, docs=DOCS) -> tuple[float, float]:
    """(acc, acc_norm) by lm-eval's definitions: the choice of highest log-likelihood (per character of the choice
    for acc_norm) against the gold one, each choice scored after the question and lm-eval's " " delimiter."""
    model, tokenizer, _ = load_run(run_dir)
    right, right_norm = [], []
    for question, choices, gold in docs:
        logprobs = np.array([continuation_logprob(model, tokenizer, question, " " + c) for c in choices])
        right.append(int(np.argmax(logprobs)) == gold)
        right_norm.append(int(np.argmax(logprobs / [len(c) for c in choices])) == gold)
    return float(np.mean(right)), float(np.mean(right_norm))
