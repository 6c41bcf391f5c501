"""Where metrics go. The trainer emits plain dicts; each sink subscribes to them.

A record has `kind` ("train" or "eval") plus `step`, `tokens`, `time_s` and the metrics; an eval
record may carry the generated `sample` text.
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
        line = {k: v for k, v in record.items() if k != "kind"}
        self.file.write(json.dumps(line) + "\n")

    def close(self) -> None:
        self.file.close()


class ConsoleSink:
    """A live progress bar on a terminal (step, loss, lr, tokens/s, ETA); eval lines always."""

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
        metrics = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
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
        for key, value in record.items():
            if isinstance(value, (int, float)) and key not in ("step", "kind"):
                self.writer.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        self.writer.close()
