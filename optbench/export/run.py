"""`optbench export run.dir=DIR out=DIR [weights=model|averaged]`: a run's model as a transformers folder.

    out/config.json          GPT2LMHeadModel or LlamaForCausalLM, equal to the run's model, dropout off
    out/model.safetensors    the weights of the run's newest checkpoint that verifies, in their stored dtype
    out/<tokenizer files>    see tokenizer.py

`weights=model` (the default) takes the trained model, at its evaluation point for an optimizer that has one
(Schedule-Free), as `optbench sample` does; `weights=averaged` takes the run's EMA or uniform weight average
(`train.weight_avg`). Every check runs before anything is written, and the folder is written beside `out`
and renamed into place at the end, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from safetensors.torch import save_file

from optbench import data as datalib
from optbench.config.compose import load_yaml
from optbench.config.schema import Config, ModelConfig
from optbench.errors import UserError, check, check_choice
from optbench.export import gpt2, llama
from optbench.export.tokenizer import tokenizer_files
from optbench.training import checkpoint
from optbench.training.sample import RunRef

FAMILIES: dict[str, ModuleType] = {"gpt2": gpt2, "llama": llama}
WEIGHTS = ("model", "averaged")


@dataclass
class ExportRequest:
    """What `optbench export` accepts (key=value, checked like any config)."""

    run: RunRef = field(default_factory=RunRef)
    out: str = ""
    weights: str = "model"


@dataclass(frozen=True)
class Exported:
    """What an export wrote, for the command's one line."""

    out: Path
    architecture: str
    step: int
    tokenizer: str


def parse_request(overrides: list[str]) -> ExportRequest:
    try:
        merged = OmegaConf.merge(OmegaConf.structured(ExportRequest), OmegaConf.from_dotlist(overrides))
        request = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise UserError(f"optbench export: {str(err).splitlines()[0]}; valid keys: run.dir, out, weights") from None
    check(bool(request.run.dir), "optbench export needs run.dir=DIR (a run directory with a checkpoint)")
    check(bool(request.out), "optbench export needs out=DIR (a new folder for the transformers files)")
    check_choice("weights", request.weights, WEIGHTS)
    return request


def export_run(overrides: list[str]) -> Exported:
    """Write the model of the run `overrides` name as a transformers folder (see the module docstring)."""
    request = parse_request(overrides)
    run_dir, out = Path(request.run.dir), Path(request.out)
    cfg = read_config(run_dir)
    family = exporter(cfg.model)
    check(not out.exists() or (out.is_dir() and not any(out.iterdir())),
          f"out={out} already exists and is not an empty folder; give a new one")
    step, weights = read_weights(run_dir, request.weights)
    tokenizer = datalib.load(cfg.data, progress=False).tokenizer()
    embedding = weights[family.EMBEDDING]  # its rows: the vocabulary with the padding rows (50304 for GPT-2)
    config = family.hf_config(cfg.model, embedding.shape[0], cfg.train.seq_len, tokenizer.eot,
                              str(embedding.dtype).removeprefix("torch."))
    files, tokenizer_note = tokenizer_files(tokenizer, cfg.train.seq_len)
    write_folder(out, config, family.hf_weights(cfg.model, weights), files)
    return Exported(out, family.ARCHITECTURE, step, tokenizer_note)


def read_config(run_dir: Path) -> Config:
    """The config of the run in `run_dir`; a UserError when the folder holds no training run's config."""
    check((run_dir / "config.yaml").is_file(), f"run.dir={run_dir} has no config.yaml; is it a run directory?")
    try:
        return load_yaml(run_dir / "config.yaml")
    except OmegaConfBaseException as err:  # no model or optim section: some other tool's folder
        reason = str(err).splitlines()[0]
    except KeyError as err:  # a model or optimizer no (loaded) plugin registers
        reason = f"no registered model or optimizer {err}"
    raise UserError(f"run.dir={run_dir}: its config.yaml is not an optbench training run's ({reason}); "
                    "is it a run directory of `optbench train`?")


def read_weights(run_dir: Path, weights: str) -> tuple[int, dict[str, torch.Tensor]]:
    """(step, state dict) of `weights` (WEIGHTS) in the run's newest checkpoint that verifies."""
    found = checkpoint.CheckpointStore(run_dir / "checkpoints").latest()
    check(found is not None, f"run.dir={run_dir} has no usable checkpoint")
    state = found[1]
    return state["step"], chosen_weights(state, weights, run_dir)


def exporter(cfg: ModelConfig) -> ModuleType:
    """The module exporting `cfg`'s family; a UserError for a family or setting transformers has no class for."""
    if cfg.name not in FAMILIES:
        raise UserError(f"no exact transformers class for {cfg.name}; export takes {', '.join(FAMILIES)}")
    settings = FAMILIES[cfg.name].unsupported(cfg)
    check(not settings, f"no exact transformers class for {cfg.name} with {', '.join(settings)}")
    return FAMILIES[cfg.name]


def chosen_weights(state: dict, weights: str, run_dir: Path) -> dict[str, torch.Tensor]:
    """The state dict `weights` names from a checkpoint's contents."""
    if weights == "averaged":
        averaged = state["extra"].get("averaged_model")
        check(averaged is not None, f"weights=averaged: run.dir={run_dir} kept no weight average "
                                    "(train.weight_avg=none); valid: weights=model")
        # torch's AveragedModel keeps the model under `module.` beside its own counter `n_averaged`
        return {name.removeprefix("module."): t for name, t in averaged.items() if name.startswith("module.")}
    return state["extra"].get("eval_model", state["model"])  # Schedule-Free: its evaluation point


def write_folder(out: Path, config: dict, weights: dict[str, torch.Tensor], files: dict[str, str]) -> None:
    """config.json, model.safetensors and `files`, written in a temporary folder beside `out`, then renamed to it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})  # "pt": transformers' check
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        os.replace(tmp, out)  # onto a missing or empty folder: atomic
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when it was renamed
