"""A suite's trial shrunk to a smoke run: a few steps on the CPU that still exercise what the trial would.

Kept from the trial: the optimizer and its hyperparameters, the schedule's shape, the model family and every model
setting that is not a size (muP, tied embeddings, the mixer, norms, routing: the optimizer's parameter roles and
learning-rate multipliers depend on them), the data sampling and, where they load offline, the tokenizer and a
learned optimizer's meta-weights. Replaced: the model's sizes by its family's debug preset
(configs/model/<family>-debug.yaml), the corpus by Tiny Shakespeare (shipped in the package), steps, batch,
context, warmup and evaluation by a few of each, the device by the CPU in float32 without compilation, and the run
settings by a fresh run directory without loggers. What is not offline gets a stand-in the smoke names: GPT-2's
tokenizer (or characters) for another, random meta-weights for published ones.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from optbench.config.schema import Config, DataConfig, ModelConfig, OptimConfig, RunConfig
from optbench.data.recipes import get_recipe
from optbench.data.sources import expand_path
from optbench.data.tokenizers import available_offline
from optbench.errors import UserError
from optbench.optim.algorithms import mulo, velo
from optbench.training.schedules import warmup_steps

STEPS = 3
BATCH_SIZE = 4
SEQ_LEN = 32
EVAL_BATCHES = 2
CORPUS = "shakespeare-char"
SIZE_FIELDS = ("n_layer", "n_head", "n_embd", "n_kv_head", "ffn_hidden", "multiple_of", "n_experts", "top_k",
               "expert_hidden", "n_mixer_head", "head_dim", "pom_expand", "vocab_size", "upcycle_from")
"""Model fields taken from the debug preset: those that set a size (and upcycle_from, a checkpoint of the
full-size model that a debug model could not load)."""
RANDOM_WEIGHTS = {"velo": velo.write_random_weights, "mulo": mulo.write_random_weights}
"""Learned optimizers: how to write random meta-weights in their published layout."""


def smoke_config(cfg: Config, run_dir: Path, tokenizer: str, optim: OptimConfig) -> Config:
    """`cfg` (a trial as the bench composes it) as a smoke run in `run_dir`, tokenized by `tokenizer`, with the
    optimizer `optim` (cfg.optim, or its stand-in from `smoke_weights`)."""
    # One thread: a debug model's operations are too small to share, and threads that wait on each other
    # crawl on a busy CI machine.
    train = dataclasses.replace(cfg.train, steps=STEPS, batch_size=BATCH_SIZE, grad_accum=1, seq_len=SEQ_LEN,
                                device="cpu", dtype="float32", compile=False, threads=1)
    evaluation = dataclasses.replace(cfg.eval, every=0, batches=EVAL_BATCHES, batch_size=None, at_steps=[],
                                     sample_tokens=0)
    # One warmup step at most, so the few steps train at the schedule's own learning rates; a warmup_frac is
    # resolved against the trial's steps first, so a trial that warms up keeps one warmup step either way.
    warmup = min(warmup_steps(cfg.schedule, cfg.train.steps), 1)
    schedule = dataclasses.replace(cfg.schedule, warmup_steps=warmup, warmup_frac=0.0)
    data = DataConfig(name=CORPUS, tokenizer=tokenizer, root=cfg.data.root, mirror=cfg.data.mirror,
                      sampling=cfg.data.sampling, num_proc=cfg.data.num_proc)
    run = RunConfig(dir=str(run_dir), resume="never", log_every=1, progress=False)
    return dataclasses.replace(cfg, model=debug_model(cfg.model), data=data, optim=optim, train=train,
                               eval=evaluation, schedule=schedule, run=run)


def debug_model(model: ModelConfig) -> ModelConfig:
    """`model` at its family's debug size, every other setting as it was."""
    debug = _debug_preset(model.name)
    own = {f.name for f in dataclasses.fields(model)}
    return dataclasses.replace(model, **{key: getattr(debug, key) for key in SIZE_FIELDS if key in own})


@functools.cache
def _debug_preset(family: str) -> ModelConfig:
    from optbench.config.compose import compose, group_options

    preset = f"{family}-debug"
    if preset not in group_options("model"):
        raise UserError(f"model family '{family}' has no debug preset (optbench/configs/model/{preset}.yaml), "
                        "which --smoke trains in its place; add one")
    return compose([f"model={preset}"]).model


def smoke_tokenizer(data: DataConfig) -> tuple[str, str | None]:
    """The tokenizer a smoke run of `data` uses: its own where it loads offline, else GPT-2's (or, without the
    mirror's GPT-2 ranks, characters); and the reason when that is a stand-in."""
    spec = data.tokenizer or get_recipe(data.name).tokenizer
    mirror = expand_path(data.mirror) if data.mirror else None
    if available_offline(spec, mirror):
        return spec, None
    stand_in = "gpt2" if available_offline("gpt2", mirror) else "char"
    return stand_in, f"{spec} is not available offline; smoke uses {stand_in} in its place"


def smoke_weights(optim: OptimConfig, folder: Path) -> tuple[OptimConfig, str | None]:
    """`optim` as it is when it needs no meta-weights or its own are local directories; else with random ones
    written to `folder` (a hub repo would be fetched, or retried for a while offline), and the reason."""
    weights = getattr(optim, "weights", None)
    if weights is None or optim.name not in RANDOM_WEIGHTS:
        return optim, None
    if all(Path(source.strip()).expanduser().exists() for source in weights.split(",")):
        return optim, None
    RANDOM_WEIGHTS[optim.name](folder)
    note = f"{optim.name}'s weights {weights} are not available offline; smoke uses random meta-weights in their place"
    return dataclasses.replace(optim, weights=str(folder)), note
