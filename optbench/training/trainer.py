"""The training loop: one config in, one run directory out.

    trainer = Trainer(cfg)      # data, model, optimizer; nothing written yet
    summary = trainer.train()   # run directory, steps, evaluations, checkpoints, summary.json

Observers (`Trainer(cfg, observers=[...])`) see every record after the run directory's sinks; one
may end the run early by raising `StopTraining` (a sweep's pruner does), and the run then ends with
that status and no final checkpoint; `StopTraining(status, write=False)` ends it without its summary either, for
a run whose directory is no longer its own (a bench worker whose claim on the trial was lost).

Everything that can fail because of the user's input (config, data, prompt, run directory) fails in
the constructor, before a run directory exists, so a bad command leaves nothing behind.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console

from optbench import data as datalib
from optbench import downstream, models, optim
from optbench.config.compose import to_yaml
from optbench.config.schema import Config
from optbench.errors import UserError
from optbench.models.layers import upcast
from optbench.training import checkpoint, device as hw, diagnostics, distributed, refusals, resume
from optbench.training.averaging import WeightAverage
from optbench.training.checkpointer import Checkpointer
from optbench.training.evaluation import validation_metrics
from optbench.training.optimizer_hooks import OptimizerHooks
from optbench.training.preemption import StopRequest
from optbench.training.rng import isolated_rng, rng_state, set_rng_state
from optbench.training.rundir import default_dir, environment, read_json, truncate_metrics, write_atomic, write_json
from optbench.training.sample import continuation
from optbench.training.schedules import lr_multiplier
from optbench.training.sharded_checkpoint import Sharded
from optbench.training.sinks import ConsoleSink, JsonlSink, Sink, TensorBoardSink, WandbSink, require_optional
from optbench.training.telemetry import Telemetry
from optbench.training.timing import StepTimer


class StopTraining(Exception):
    """Raised by an observer to end the run now with `status` (e.g. "pruned"); with `write=False` the run
    leaves its directory as it is (no summary), since another process has taken it over."""

    def __init__(self, status: str, write: bool = True):
        super().__init__(status)
        self.status, self.write = status, write


@dataclass
class Evaluations:
    """The validation losses a run has seen after step 0: the last (the run's final) and the best."""

    final: dict[str, Any] = field(default_factory=dict)
    best: float | None = None

    def add(self, record: dict[str, Any], at_start: bool) -> None:
        if at_start:  # the untrained model's loss is neither the run's result nor its best
            return
        self.final = record
        self.best = record["val_loss"] if self.best is None else min(self.best, record["val_loss"])


class Trainer:
    def __init__(self, cfg: Config, console: Console | None = None, observers: tuple[Sink, ...] = (),
                 data: datalib.Prepared | None = None):
        """`data`: cfg.data's prepared dataset where the caller holds it already (a bench worker, across trials)."""
        self.cfg = cfg
        self.observers = tuple(observers)
        self.data = data
        self.console = console or Console(stderr=True)
        # The run's random streams are its own: seeded here, carried from construction into train(), and kept
        # apart from the caller's, as the thread count is.
        with hw.threads(cfg.train), isolated_rng():
            self._build()
            self.rng = rng_state()

    def _build(self) -> None:
        cfg = self.cfg
        self.world = distributed.from_environment()
        self.device = hw.resolve_device(distributed.init(self.world, cfg.train.device))
        self.dtype = hw.resolve_dtype(cfg.train.dtype, self.device)
        refusals.check_precision(cfg)
        run_dir = cfg.run.dir or str(default_dir(cfg.model.name, cfg.optim.name))
        self.run_dir = Path(distributed.gather_objects(self.world, run_dir)[0])  # rank 0's timestamp for all
        self.store = checkpoint.CheckpointStore(self.run_dir / "checkpoints", cfg.run.keep_last, cfg.run.keep_every)
        self.sharded = self.world.distributed and cfg.train.parallel == "fsdp"
        self.resume_from = resume.find(cfg, self.run_dir, self.store, self.device, sharded=self.sharded)
        if self.resume_from is not None:
            resume.check_world_size(cfg, self.resume_from, self.world.size)
            resume.check_precision(self.resume_from, self.dtype, cfg.train.dtype)
        require_optional(cfg.run)
        downstream.check_before_training(cfg)

        if not self.world.is_main:
            distributed.barrier(self.world)  # rank 0 prepares the data first, the others then read it
        if self.data is None:
            self.data = datalib.load(cfg.data, progress=self.console.is_terminal and self.world.is_main)
        if self.world.is_main:
            distributed.barrier(self.world)
        self.tokenizer = self.data.tokenizer()
        self.prompt = self._encode_prompt(cfg.eval.prompt)
        self.batches = datalib.TokenBatches(
            self.data.tokens("train"), seq_len=cfg.train.seq_len, batch_size=cfg.train.batch_size,
            grad_accum=cfg.train.grad_accum, data_seed=cfg.train.data_seed, sampling=cfg.data.sampling,
            rank=self.world.rank, world_size=self.world.size)
        self.val_batches = datalib.eval_batches(
            self.data.tokens("val"), cfg.train.seq_len, cfg.eval.batch_size or cfg.train.batch_size,
            cfg.eval.batches)

        torch.manual_seed(cfg.train.seed)
        self.model = models.build(cfg.model, self.data.vocab_size, cfg.train.seq_len).to(self.device)
        if self.resume_from is None:
            self.model.load_initial_weights()
        # float64 (a verification precision) casts the float32 initial weights before the model is wrapped and the
        # optimizer built, so the replica shards, the gradients and the optimizer state are float64 too.
        self.model.to(hw.param_dtype(self.dtype))
        refusals.check_parallel(cfg, self.world.size)
        self.replica = distributed.replicate(self.model, self.world, cfg.train.parallel)
        self.forward = torch.compile(self.replica) if cfg.train.compile else self.replica
        self.plan = optim.plan(cfg.optim, self.model)  # one plan: the optimizer and routing.json
        self.optimizer = distributed.build_optimizer(cfg.optim, self.model, self.replica, self.plan)
        for group in self.optimizer.param_groups:
            group["base_lr"] = group["lr"]  # the schedule scales each group's own base lr
        self.hooks = OptimizerHooks(self.optimizer, optim.get(cfg.optim.name).capabilities)
        self.routing = optim.routing_table(self.plan)
        self.averager = WeightAverage(self.model, cfg.train) if cfg.train.weight_avg != "none" else None
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        # rank 0 measures the dynamics for all (DDP's replicas are equal), on the first validation window
        self.telemetry = Telemetry(cfg.diag, self.model, self.plan, self.val_batches[0][0][:1], self.device,
                                   self.dtype, measures=self.world.is_main)
        self.checkpointer = Checkpointer(self.store, self.world, self.sharded, self.model, self.optimizer, self.hooks,
                                         self.averager, self.telemetry)
        self.timer = StepTimer(self.device)  # each process times its own steps: a resumed run warms up again
        self.tokens_per_step = cfg.train.batch_size * cfg.train.grad_accum * cfg.train.seq_len
        self.step = 0
        self.time_offset = 0.0
        self.model_metrics: dict[str, Any] = {}

    # ----------------------------------------------------------------------------- setup helpers

    def _encode_prompt(self, prompt: str) -> list[int]:
        try:
            ids = self.tokenizer.encode(prompt)
        except (KeyError, ValueError):
            raise UserError(f"eval.prompt={prompt!r} has characters outside the {self.tokenizer.name} "
                            "vocabulary; choose a prompt from the training text") from None
        return ids or ([self.tokenizer.eot] if self.tokenizer.eot is not None else [0])

    # ----------------------------------------------------------------------------- the step

    def train_step(self, step: int) -> tuple[float, torch.Tensor]:
        """Forward and backward over grad_accum micro-batches at the step's learning rates; returns the mean loss
        and the total gradient norm, before clipping (`clip` applies it once diagnostics have seen the gradients)."""
        cfg = self.cfg.train
        lr_scale = lr_multiplier(step, cfg.steps, self.cfg.schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * lr_scale
        total_loss = torch.zeros((), dtype=hw.param_dtype(self.dtype), device=self.device)
        micros = self.batches.micro_indices()
        for i, micro in enumerate(micros):
            x, y = (t.to(self.device, non_blocking=True) for t in self.batches.batch(step, micro))
            # Gradients are averaged over ranks once, at the last micro-batch of the step.
            with distributed.gradient_sync(self.replica, enabled=i == len(micros) - 1):
                with hw.autocast(self.device, self.dtype):
                    logits = self.forward(x)
                logits = upcast(logits).view(-1, logits.size(-1))
                ce = F.cross_entropy(logits, y.view(-1)) / len(micros)
                aux = self.model.auxiliary_losses()
                self.scaler.scale(ce + sum(aux.values()) / len(micros)).backward()
            total_loss += ce.detach()  # the logged loss is the cross-entropy alone, comparable across models
        self.model_metrics = {**{k: v.detach() for k, v in aux.items()}, **self.model.forward_stats()}
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        loss_sum = distributed.sum_(self.world, [total_loss.item()], self.device)[0]
        return loss_sum / self.world.size, grad_norm

    def clip(self, grad_norm: torch.Tensor) -> None:
        """Scale the gradients to a total norm of at most train.grad_clip (0: no clipping)."""
        if self.cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grads_with_norm_(self.params, self.cfg.train.grad_clip, grad_norm)

    def _apply_update(self) -> None:
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    # ----------------------------------------------------------------------------- evaluation

    def evaluate(self, model: torch.nn.Module | None = None) -> dict[str, float]:
        """Loss, perplexity and next-token accuracy on the fixed validation windows."""
        model = model or self.model
        share = self.world.distributed and self.cfg.train.parallel == "ddp"
        return validation_metrics(model, self.forward if model is self.model else model, self.val_batches,
                                  self.device, self.dtype, self.world, share)

    def _eval_record(self) -> dict[str, Any]:
        with self.hooks.eval_mode():
            record = self.evaluate()
            if self.cfg.eval.sample_tokens > 0:
                ev = self.cfg.eval
                record["sample"] = continuation(self.model, self.tokenizer, self.prompt, ev.sample_tokens,
                                                ev.temperature, ev.top_k, self.cfg.train.seed, self.data.vocab_size)
        if self.averager is not None:
            record.update({f"{k}_avg": v for k, v in self.evaluate(self.averager.module).items()})
        return record

    def _is_eval_step(self, step: int) -> bool:
        every = self.cfg.eval.every
        return step == self.cfg.train.steps or step in self.cfg.eval.at_steps or (every > 0 and step % every == 0)

    # ----------------------------------------------------------------------------- the run

    def train(self) -> dict[str, Any]:
        """Run (or resume) to train.steps; write the run directory; return the summary."""
        with hw.threads(self.cfg.train), isolated_rng():
            set_rng_state(self.rng)
            return self._run()

    def _run(self) -> dict[str, Any]:
        cfg = self.cfg
        distributed.barrier(self.world)  # every rank has checked the run directory before rank 0 writes
        if self.resume_from is not None:
            self._restore(self.resume_from[1])
            self.resume_from = None  # the state is in the model and optimizer now; free the copy
            if self.step >= cfg.train.steps and (self.run_dir / "summary.json").exists():
                return read_json(self.run_dir / "summary.json")
        if self.world.is_main:
            self._open_run_dir()
        self.sinks = [*self._open_sinks(), *self.observers] if self.world.is_main else []
        self._write_summary(self._summary("running", {}))
        hw.reset_peak_memory(self.device)
        self.started = time.perf_counter() - self.time_offset
        self.hooks.before_training(cfg.train.steps)
        status, stop, evals, write = "running", StopRequest(), Evaluations(), True
        try:
            with stop:
                if self.step == 0 and cfg.eval.every > 0:
                    self._evaluate(evals)
                while self.step < cfg.train.steps:
                    status = self._step()
                    if status == "diverged":
                        break
                    if self._is_eval_step(self.step):
                        self._evaluate(evals)
                    if (self.step < cfg.train.steps
                            and distributed.any_(self.world, stop.requested is not None, self.device)):
                        status = "interrupted"
                        self._save()
                        break
                    if cfg.run.ckpt_every and self.step % cfg.run.ckpt_every == 0 and self.step < cfg.train.steps:
                        self._save()
                if status == "running":
                    status = "completed"
                    self._save()
        except StopTraining as early:
            status, write = early.status, early.write
        except KeyboardInterrupt:
            status = "interrupted"  # a second Ctrl-C: stop now, the last saved checkpoint stays the resume point
        except BaseException:
            status = "failed"
            raise
        finally:
            summary = self._summary(status, {"final_val_loss": evals.final.get("val_loss"),
                                             "best_val_loss": evals.best, "wall_s": self._elapsed()})
            if status == "interrupted":
                summary["signal"] = stop.requested or signal.SIGINT.name
            if write:
                self._write_summary(summary)
            for sink in self.sinks:
                sink.close()
        if status == "completed" and self.world.is_main and cfg.eval.downstream:
            downstream.after_training(cfg, self.run_dir, self.device)
        return summary

    def _step(self) -> str:
        """One step: forward, backward and the update are timed; diagnostics and logging happen outside the timer.
        Returns "diverged" when the loss is not finite or above train.diverge_loss, else "running"."""
        cfg = self.cfg
        with self.timer.timed():
            loss, norm = self.train_step(self.step)
        grad_norm = distributed.as_float(norm)
        spike, loss_spike = self.telemetry.spikes(loss, grad_norm)
        if not math.isfinite(loss) or loss > cfg.train.diverge_loss:
            self._emit({"kind": "train", "loss": loss, "lr": self.optimizer.param_groups[0]["lr"],
                        "grad_norm": grad_norm})
            return "diverged"
        is_log = ((self.step + 1) % cfg.run.log_every == 0 or self.step + 1 == cfg.train.steps or spike
                  or loss_spike)
        before = diagnostics.snapshot(self.params) if is_log else None
        self.telemetry.before_update(self.step + 1)  # weights and gradients as the coming update meets them
        grad_stats = diagnostics.gradient_stats(self.params) if is_log else {}  # before clipping changes them
        with self.timer.timed():
            self.clip(norm)
            self.hooks.before_step(loss)
            self._apply_update()
            self.step += 1
            self._after_update()  # an optimizer's extra pass and weight averaging are training work too
        self.timer.end_step()
        if is_log:
            tokens_per_s = self.timer.interval_tokens_per_s(self.tokens_per_step)
            self._emit({"kind": "train", "loss": loss, "lr": self.optimizer.param_groups[0]["lr"],
                        "grad_norm": grad_norm, "grad_spike": spike, "loss_spike": loss_spike, **grad_stats,
                        **diagnostics.update_stats(self.params, before),
                        **{k: float(v) for k, v in self.model_metrics.items()},
                        "tokens_per_s": tokens_per_s, **self._mfu(tokens_per_s)})
        dynamics = self.telemetry.after_update(self.step)
        if dynamics is not None:
            self._emit({"kind": "dynamics", **dynamics})
        return "running"

    def _evaluate(self, evals: Evaluations) -> None:
        record = self._eval_record()
        evals.add(record, at_start=self.step == 0)
        self._emit({"kind": "eval", **record})

    def _emit(self, record: dict[str, Any]) -> None:
        record.update(step=self.step, tokens=self.step * self.tokens_per_step, time_s=round(self._elapsed(), 4))
        for sink in self.sinks:
            sink.log(record)

    def _elapsed(self) -> float:
        """Wall-clock seconds of the run, across resumes."""
        return time.perf_counter() - self.started

    def _write_summary(self, summary: dict[str, Any]) -> None:
        if self.world.is_main:
            write_json(self.run_dir / "summary.json", summary)

    def _after_update(self) -> None:
        """Work some optimizers or options need once the weights have moved."""
        if self.hooks.wants_hessian(self.step):
            x = self.batches.batch(self.step - 1, 0)[0].to(self.device)
            generator = torch.Generator(device=self.device).manual_seed(self.cfg.train.seed * 1_000_003 + self.step)

            def logits() -> torch.Tensor:
                with hw.autocast(self.device, self.dtype):
                    return self.forward(x)

            self.hooks.hessian_pass(logits, generator)
        if self.averager is not None:
            self.averager.update(self.model, self.step)

    def _mfu(self, tokens_per_s: float) -> dict[str, float]:
        peak = hw.peak_flops(self.device)
        if peak is None or self.dtype == torch.float64:  # the peak is bf16's: a float64 run's ratio means nothing
            return {}
        return {"mfu": self.model.flops_per_token(self.cfg.train.seq_len) * tokens_per_s / peak}

    def _summary(self, status: str, figures: dict[str, Any]) -> dict[str, Any]:
        """summary.json: status, losses, and the cost of the run. tokens_per_s and step_time_s are the steady
        state of this (resumed) process's timed steps; wall_s is the whole run's wall clock, across resumes."""
        return {
            "status": status,
            "final_val_loss": figures.get("final_val_loss"),
            "best_val_loss": figures.get("best_val_loss"),
            "steps": self.step,
            "tokens": self.step * self.tokens_per_step,
            "wall_s": round(figures.get("wall_s") or 0.0, 3),
            **self.timer.summary(self.tokens_per_step),
            "peak_mem_bytes": hw.peak_memory_bytes(self.device),
            "optim_state_bytes": optim.state_bytes(self.optimizer),
            "n_params": self.model.num_params(),
            "n_params_non_embedding": self.model.num_params(embeddings=False),
            **self.telemetry.summary(),
            "run_dir": str(self.run_dir),
        }

    # ----------------------------------------------------------------------------- run directory

    def _open_run_dir(self) -> None:
        (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        write_atomic(self.run_dir / "config.yaml", to_yaml(self.cfg).encode())
        write_json(self.run_dir / "env.json", environment())
        write_json(self.run_dir / "routing.json", self.routing)
        self._print_routing()
        truncate_metrics(self.run_dir, self.step)

    def _open_sinks(self) -> list[Sink]:
        cfg = self.cfg.run
        sinks: list[Sink] = [JsonlSink(self.run_dir / "metrics.jsonl"),
                             ConsoleSink(self.cfg.train.steps, self.step, self.console,
                                         live=cfg.progress and self.console.is_terminal)]
        if cfg.wandb:
            sinks.append(WandbSink(cfg, self.run_dir, config={"yaml": to_yaml(self.cfg)}))
        if cfg.tensorboard:
            sinks.append(TensorBoardSink(self.run_dir))
        return sinks

    def _print_routing(self) -> None:
        for line in optim.routing_summary(self.routing):
            self.console.print(line, highlight=False)

    def _save(self) -> None:
        self.checkpointer.save(self.step, self.step * self.tokens_per_step, self._elapsed())

    def _restore(self, state: dict[str, Any] | Sharded) -> None:
        self.step, self.time_offset = self.checkpointer.restore(state)
