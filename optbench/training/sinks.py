"""Where metrics go. The trainer emits plain dicts; each sink subscribes to them.

A record has `kind` ("train", "eval" or "dynamics") plus `step`, `tokens`, `time_s` and the metrics; an eval
record may carry the generated `sample` text. A dynamics record nests its values (per parameter, per role, per
layer: optbench/training/telemetry.py): metrics.jsonl keeps it whole, TensorBoard and W&B get its roles, layers
and attention as flat scalars (`roles/matrix/update_rms`, `layers/0/grad_norm`, `attention/0/max_logit`) and
leave the per-parameter values, hundreds of series in a large model, to metrics.jsonl.
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from optbench.config.schema import RunConfig
from optbench.errors import UserError

class Sink(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class JsonlSink:
    """metrics.jsonl: the record of a run that reports and sweeps read. Appends, flushes each line."""

    def __init__(self, path: Path):
        self.file = open(path, "a", buffering=1)

    def log(self, record: dict[str, Any]) -> None:
        # train and eval lines are told apart by their keys, as they always were; other kinds keep `kind`
        line = {k: v for k, v in record.items() if k != "kind" or v not in ("train", "eval")}
        self.file.write(json.dumps(line) + "\n")

    def close(self) -> None:
        self.file.close()


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """A record's numbers under flat names, for the sinks that take only those: a dynamics record's roles,
    layers and attention as `roles/<role>/<key>`, `layers/<i>/grad_norm` and `attention/<i>/<key>` (undefined
    values left out); every other record's top-level numbers (bools as 0/1) but `step`."""
    if record["kind"] != "dynamics":
        return {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
    flat = {f"roles/{role}/{key}": v for role, values in record["roles"].items() for key, v in values.items()}
    for part in ("layers", "attention"):
        flat.update({f"{part}/{entry['layer']}/{key}": v for entry in record[part]
                     for key, v in entry.items() if key != "layer"})
    return {k: v for k, v in flat.items() if v is not None}


class ConsoleSink:
    """A live progress bar on a terminal (step, loss, lr, tokens/s, ETA); eval lines and spike warnings always.
    Dynamics records are left to the other sinks: a line per parameter would bury the loss."""

    def __init__(self, total_steps: int, start_step: int, console: Console, live: bool):
        self.console = console
        self.progress = None
        if live:
            self.progress = Progress(
                TextColumn("step {task.completed}/{task.total}"), BarColumn(),
                TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[tps]:,.0f} tok/s"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=console, transient=False)
            self.task = self.progress.add_task("train", total=total_steps, completed=start_step,
                                               loss=math.nan, lr=0.0, tps=0.0)
            self.progress.start()

    def log(self, record: dict[str, Any]) -> None:
        kind, step = record["kind"], record["step"]
        if kind == "train" and self.progress is not None:
            self.progress.update(self.task, completed=step, loss=record["loss"], lr=record["lr"],
                                 tps=record.get("tokens_per_s", 0.0))
        elif kind == "train":
            self.console.print(f"step {step:>6}  loss {record['loss']:.4f}  lr {record['lr']:.2e}  "
                               f"{record.get('tokens_per_s', 0):,.0f} tok/s  grad_norm {record['grad_norm']:.3f}")
        elif kind == "eval":
            self.console.print(f"step {step:>6}  val_loss {record['val_loss']:.4f}  "
                               f"val_ppl {record['val_ppl']:.2f}  val_acc {record['val_acc']:.4f}")
            if "sample" in record:
                self.console.print(f"  sample: {record['sample']!r}", markup=False, highlight=False)
        if record.get("grad_spike"):
            self.console.print(f"[yellow]warning: grad norm {record['grad_norm']:.3g} at step {step} "
                               f"is over 10x its running median[/yellow]")
        if record.get("loss_spike"):
            self.console.print(f"[yellow]warning: loss {record['loss']:.4g} at step {step} is over "
                               f"diag.loss_spike_factor times its running median[/yellow]")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def require_optional(cfg: RunConfig) -> None:
    """Fail before anything is written when an enabled sink's library is missing."""
    if cfg.wandb:
        _import("wandb", "wandb")
    if cfg.tensorboard:
        _import("torch.utils.tensorboard", "tensorboard")


def _import(module: str, extra: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"run.{extra}=true needs {extra}: pip install 'optbench[{extra}]'") from None


class WandbSink:
    """Weights & Biases, online or offline (an optional extra: pip install optbench[wandb])."""

    def __init__(self, cfg: RunConfig, run_dir: Path, config: dict[str, Any]):
        self.run = _import("wandb", "wandb").init(project=cfg.wandb_project, entity=cfg.wandb_entity, name=cfg.wandb_name,
                              mode=cfg.wandb_mode, dir=str(run_dir), config=config, resume="allow")

    def log(self, record: dict[str, Any]) -> None:
        metrics = scalars(record)
        if record["kind"] == "dynamics":  # its own namespace: roles/matrix/grad_norm is not the train grad_norm
            metrics = {f"dynamics/{k}": v for k, v in metrics.items()}
        if "sample" in record:
            metrics["sample"] = record["sample"]
        self.run.log(metrics, step=record["step"])

    def close(self) -> None:
        self.run.finish()


class TensorBoardSink:
    """TensorBoard event files under <run>/tensorboard (optional extra: optbench[tensorboard])."""

    def __init__(self, run_dir: Path):
        self.writer = _import("torch.utils.tensorboard", "tensorboard").SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        step, kind = record["step"], record["kind"]
        if "sample" in record:
            self.writer.add_text("sample", record["sample"], step)
        for key, value in scalars(record).items():
            self.writer.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        self.writer.close()
