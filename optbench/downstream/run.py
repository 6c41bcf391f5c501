"""`optbench eval run.dir=DIR tasks=a,b`: a run's model on lm-evaluation-harness tasks, into DIR/downstream.json.

    downstream.json   {"lm_eval_version", "step", "weights", "num_fewshot", "limit",
                       "tasks": {task: {"metrics": {"acc": ..}, "stderr": {"acc": ..}, "n_samples", "n_documents",
                                        "num_fewshot", "version", "hash"}}}

`metrics` are lm-eval's, keyed by metric name (with ",filter" for a filter other than lm-eval's "none"); `hash`
is lm-eval's task hash (over each evaluated document, prompt and target), so two files evaluated on the same
examples say so. Every check (run directory, weights, lm-eval installed, task names) runs before the model is
loaded, and the file is written atomically at the end, so a bad command leaves nothing behind.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from optbench import data as datalib
from optbench import models
from optbench.config.schema import Config
from optbench.downstream.tasks import check_names, require_lm_eval, task_manager
from optbench.errors import UserError, check, check_choice
from optbench.export.run import WEIGHTS, read_config, read_weights
from optbench.training import device as hw
from optbench.training.rundir import write_json
from optbench.training.sample import RunRef

RESULT_FILE = "downstream.json"
DATA_HINT = ("offline, set HF_DATASETS_OFFLINE=1 with the datasets in the Hugging Face cache, or point the task at "
             "local files from a tasks_dir YAML (README: optbench eval)")
KEYS = "run.dir, tasks, limit, batch_size, num_fewshot, device, tasks_dir, weights"


@dataclass
class EvalRequest:
    """What to evaluate and how: `optbench eval`'s key=value arguments (checked like any config), or eval.downstream's
    settings at the end of training."""

    run: RunRef = field(default_factory=RunRef)
    tasks: str = ""
    """lm-eval task names, comma-separated (brackets around them allowed, as eval.downstream=[a,b] is written)."""
    limit: int | None = None
    batch_size: int | None = None
    """None: the run's eval.batch_size, else its train.batch_size."""
    num_fewshot: int | None = None
    """None: each task's own default."""
    device: str = "auto"
    tasks_dir: str | None = None
    weights: str = "model"

    def task_names(self) -> list[str]:
        names = self.tasks.strip().removeprefix("[").removesuffix("]").split(",")
        return [name.strip() for name in names if name.strip()]


def parse_request(overrides: list[str]) -> EvalRequest:
    # tasks stays the text typed: parsed as YAML, `tasks=a, b` or `tasks=[a,b]` would not be a string
    text = {key: value for key, sep, value in (o.partition("=") for o in overrides) if sep and key == "tasks"}
    rest = [o for o in overrides if o.partition("=")[0] != "tasks"]
    try:
        merged = OmegaConf.merge(OmegaConf.structured(EvalRequest), OmegaConf.from_dotlist(rest), text)
        request = OmegaConf.to_object(merged)
    except (OmegaConfBaseException, yaml.YAMLError) as err:
        raise UserError(f"optbench eval: {str(err).splitlines()[0]}; valid keys: {KEYS}") from None
    check(bool(request.run.dir), "optbench eval needs run.dir=DIR (a run directory with a checkpoint)")
    check(bool(request.task_names()), "optbench eval needs tasks=NAME[,NAME...] (lm-eval tasks, e.g. "
                                      "hellaswag,arc_easy)")
    check_choice("weights", request.weights, WEIGHTS)
    for key in ("limit", "batch_size"):
        value = getattr(request, key)
        check(value is None or value > 0, f"{key}={value} must be positive")
    check(request.num_fewshot is None or request.num_fewshot >= 0,
          f"num_fewshot={request.num_fewshot} must be >= 0")
    return request


def eval_from_cli(overrides: list[str]) -> tuple[Path, dict[str, Any]]:
    """`optbench eval`: evaluate the run the overrides name; returns the file written and what it holds."""
    request = parse_request(overrides)
    return Path(request.run.dir) / RESULT_FILE, evaluate_run(request)


def check_before_training(cfg: Config) -> None:
    """eval.downstream's tasks must exist before the run does (its end is too late to learn of a typo)."""
    ev = cfg.eval
    if ev.downstream:
        require_lm_eval("eval.downstream")
        check_names(ev.downstream, ev.downstream_tasks_dir, "eval.downstream")


def after_training(cfg: Config, run_dir: Path, device: torch.device) -> None:
    """The trainer's eval.downstream: its tasks on the run's final checkpoint, into the run directory."""
    ev = cfg.eval
    request = EvalRequest(RunRef(str(run_dir)), ",".join(ev.downstream), ev.downstream_limit, device=str(device),
                          tasks_dir=ev.downstream_tasks_dir)
    try:
        evaluate_run(request, key="eval.downstream")
    except UserError as err:  # the run itself is complete and saved: say so, and how to evaluate it later
        raise UserError(f"training completed in {run_dir}, but eval.downstream failed: {err}; once fixed, run "
                        f"`optbench eval run.dir={run_dir} tasks={request.tasks}`") from None


def evaluate_run(request: EvalRequest, key: str = "tasks") -> dict[str, Any]:
    """Run the request's tasks on the run's model and write downstream.json; `key` names the task option in errors."""
    run_dir = Path(request.run.dir)
    cfg = read_config(run_dir)
    require_lm_eval(f"evaluating {key}")
    manager = task_manager(request.task_names(), request.tasks_dir, key)
    step, weights = read_weights(run_dir, request.weights)
    results = lm_eval_results(cfg, weights, manager, request)
    record = {"lm_eval_version": importlib.metadata.version("lm_eval"), "step": step, "weights": request.weights,
              "num_fewshot": request.num_fewshot, "limit": request.limit,
              "tasks": {name: task_record(name, metrics, results)
                        for name, metrics in {**results["results"], **results.get("groups", {})}.items()}}
    write_json(run_dir / RESULT_FILE, record)
    return record


def lm_eval_results(cfg: Config, weights: dict[str, torch.Tensor], manager, request: EvalRequest) -> dict[str, Any]:
    """lm-eval's results dict for the run's model with `weights` on the request's tasks."""
    from lm_eval import evaluator

    from optbench.downstream.adapter import OptbenchLM

    device = hw.resolve_device(request.device)
    prepared = datalib.load(cfg.data, progress=False)
    model = models.build(cfg.model, prepared.vocab_size, cfg.train.seq_len)
    model.load_state_dict(weights)
    batch_size = request.batch_size or cfg.eval.batch_size or cfg.train.batch_size
    dtype = hw.resolve_dtype(cfg.train.dtype, device)
    lm = OptbenchLM(model.to(device, hw.param_dtype(dtype)).eval(), prepared.tokenizer(), cfg.train.seq_len,
                    prepared.vocab_size, device, dtype, batch_size)
    try:
        with hw.threads(cfg.train):  # the run's train.threads, as it trained
            # log_samples: lm-eval's task hash is computed over the samples
            return evaluator.simple_evaluate(model=lm, tasks=request.task_names(), num_fewshot=request.num_fewshot,
                                             limit=request.limit, batch_size=batch_size, task_manager=manager,
                                             log_samples=True)
    except (ConnectionError, FileNotFoundError) as err:  # a task's dataset: not on this machine, no network
        raise UserError(f"a task's data cannot be loaded ({str(err).splitlines()[0]}); {DATA_HINT}") from None


def task_record(name: str, reported: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    """One task's entry of downstream.json: what lm-eval `reported` for it, with its counts, version and hash from
    the rest of `results` (a group, aggregating its tasks, has none of those)."""
    metrics, stderr = {}, {}
    for raw_key, value in reported.items():
        metric, sep, filter_name = raw_key.partition(",")
        if not sep:  # alias, name, sample_len: descriptions, not metrics
            continue
        label = metric.removesuffix("_stderr") + ("" if filter_name == "none" else f",{filter_name}")
        number = float(value) if isinstance(value, (int, float)) else None  # stderr "N/A" without bootstrap
        (stderr if metric.endswith("_stderr") else metrics)[label] = number
    counts = results.get("n-samples", {}).get(name, {})
    return {"metrics": metrics, "stderr": stderr, "n_samples": counts.get("effective"),
            "n_documents": counts.get("original"), "num_fewshot": results.get("n-shot", {}).get(name),
            "version": results.get("versions", {}).get(name), "hash": task_hash(results.get("samples", {}).get(name))}


def task_hash(samples: list[dict[str, Any]] | None) -> str | None:
    """lm-eval's task hash (as its EvaluationTracker writes it): over every sample's document, prompt and target."""
    if samples is None:
        return None
    from lm_eval.utils import hash_string

    return hash_string("".join(s["doc_hash"] + s["prompt_hash"] + s["target_hash"] for s in samples))
