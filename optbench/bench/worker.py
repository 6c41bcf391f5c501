"""A worker: claim a trial, train it as an ordinary run directory, tell the study, repeat until done.

Workers are interchangeable processes (local or Slurm array tasks) that share only the output folder
and the study storage. While a trial trains, a heartbeat thread tells the storage it is alive; a trial
whose heartbeat stops (its worker was killed) is failed by the next worker that plans and requeued with
the same hyperparameters and seed, so it lands in the same run directory and resumes its checkpoint.

A live worker can lose its claim: a trial whose heartbeats lapsed (a long stall, a storage outage, a machine under
load) is failed as stale by the next claim and its copy requeued, like a dead worker's. The heartbeat thread reads
the trial's state after each beat (heartbeat.py); once it is no longer RUNNING the run stops at its next record, the
worker prints why, tells nothing and goes on to its next claim; a tell that finds the trial failed does the same
(tell.py). What holds for the run directory, which the copy reruns in:

- The study gets one result per configuration: the copy's. A worker tells only in a transaction that finds its
  trial RUNNING, and claims, which fail stale trials, are serialised with it.
- Once the worker knows its claim is lost it writes nothing more there: the run stops without a checkpoint or a
  summary (StopTraining with write=False; ranks under torchrun get SIGHUP, which they do not handle, so they end
  at once), and a crash found lost writes no failed summary.
- Before it knows (at most heartbeat_s after the trial was failed, plus the time to the run's next record; longer
  for a worker that is stalled, which cannot know) it may still write a checkpoint, metrics lines or, having
  finished, its summary. Each is this configuration's own training at the same seed: checkpoints are written whole
  (renamed into place), so the copy resumes from a complete state of this run; metrics lines past the copy's
  resume step are dropped when the copy opens the directory (and land in the file it replaced after); and a
  finished summary written after the copy's is a result of the same configuration, which the copy, or its
  successor, reuses instead of training again.

A worker stays one process for all its trials, with what they share kept warm (warm.py), and prints one line
per trial with where its time went: claiming, setting up (config, trainer, run directory), the run itself, and
telling the study. A trial on several ranks (execution.nproc_per_trial) runs under torchrun in a child process
(multirank.py); the worker claims, beats and tells for it all the same.
"""

from __future__ import annotations

import shutil
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import optuna

from optbench.bench import downstream, layout, multirank
from optbench.bench.heartbeat import ClaimObserver, Heartbeat, Lost, lost_claim
from optbench.bench.plan import DONE, WAIT, Claim, claim_next
from optbench.bench.storage import open_storage
from optbench.bench.suite import Suite, run_key, run_overrides
from optbench.bench.tell import tell, tell_crash
from optbench.bench.warm import Warm
from optbench.config.compose import compose
from optbench.training.rundir import environment, read_json, write_json

POLL_S = 0.5
"""How often an idle worker looks again while other workers' trials decide what comes next (a claim that finds
nothing reads one index row per study and loads only the open studies: cheap enough to ask often)."""


def work(suite: Suite, out: Path, storage_url: str, worker_id: str, threads: int | None = None,
         max_trials: int | None = None) -> int:
    """Run trials until the suite is done (or `max_trials` ran); returns how many this worker ran."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(storage_url, suite.execution)
    warm = Warm()
    ran, idle_s = 0, 0.0
    while max_trials is None or ran < max_trials:
        clock = Clock()
        with clock.timed("claim"):
            claim = claim_next(suite, storage, stamp=lambda found: stamp(out, found, worker_id))
        if claim is DONE:
            break
        if claim is WAIT:
            time.sleep(POLL_S)
            idle_s += clock.claim + POLL_S
            continue
        assert isinstance(claim, Claim)
        with Heartbeat(storage, claim, suite.execution.heartbeat_s) as beat:
            run_trial(suite, out, claim, threads, warm, clock, beat)
        print(clock.line(claim), flush=True)
        ran += 1
    print(f"worker {worker_id}: {ran} trials, idle {idle_s:.2f} s waiting for other workers' trials", flush=True)
    return ran


def stamp(out: Path, claim: Claim, worker_id: str) -> dict[str, Any]:
    """The user attributes a claimed trial gets in its claim: where it runs, on which worker, with which code."""
    env = environment()
    return {"run_dir": str(run_path(out, claim)), "worker": worker_id, "git_commit": env["git_commit"],
            "versions": env["versions"]}


def run_path(out: Path, claim: Claim) -> Path:
    return layout.run_dir(out, claim.scenario.name, claim.entry.name, run_key(claim.hparams, claim.seed))


@dataclass
class Clock:
    """Seconds a trial spent in each part of its life in the worker, and what became of its run."""

    claim: float = 0.0
    setup: float = 0.0
    train: float = 0.0
    tell: float = 0.0
    outcome: str = ""
    """"run 3.20 s" (the run's own wall_s), "a finished run, reused" or "crashed"."""

    @contextmanager
    def timed(self, part: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, part, getattr(self, part) + time.perf_counter() - start)

    def line(self, claim: Claim) -> str:
        """`trial 12 cosine-200/adamw/tune: claim 0.02 s, set-up 0.11 s, train 3.31 s (run 3.20 s), tell 0.03 s`"""
        return (f"trial {claim.trial.number} {claim.study.study_name.split('/', 1)[1]}: claim {self.claim:.2f} s, "
                f"set-up {self.setup:.2f} s, train {self.train:.2f} s ({self.outcome}), tell {self.tell:.2f} s")


def run_trial(suite: Suite, out: Path, claim: Claim, threads: int | None, warm: Warm, clock: Clock,
              beat: Heartbeat) -> None:
    """Train the claimed configuration and tell the study its final validation loss, unless the claim was lost."""
    run = run_path(out, claim)
    overrides = run_overrides(suite, claim.scenario, claim.entry, claim.hparams, claim.seed)
    control = [f"run.dir={run}", "run.progress=false", "run.resume=auto",
               f"run.ckpt_every={suite.execution.ckpt_every}"]
    discard_dead_attempt(run)
    reused = finished(run)  # a final seed equal to the tuning seed: the trainer returns that run's summary
    attrs: dict[str, Any] = {}  # set on the trial with its result
    try:
        if suite.execution.nproc_per_trial > 1:
            summary = train_on_ranks(suite, run, claim, overrides, control, threads, clock, reused, beat)
        else:
            summary = train_here(suite, run, claim, overrides, control, threads, warm, clock, beat)
        with clock.timed("train"):  # a final run's downstream evaluation included (bench/downstream.py)
            if claim.phase == "final" and summary["status"] == "completed" and beat.lost is None:
                error = downstream.evaluate_final(suite.downstream, run)
                if error is not None:
                    attrs["downstream_error"] = error
    except Exception as err:  # a crash of this trial (bad hyperparameters, out of memory) is its result
        traceback.print_exc()
        error = f"{type(err).__name__}: {err}"[:500]
        clock.outcome = "crashed"
        with clock.timed("tell"):
            lost = tell_crash(beat.storage, claim, error,
                              lambda: record_failure(run, suite, claim, overrides, error))
        drop(claim, lost, clock)
        return
    clock.outcome = "a finished run, reused" if reused else f"run {summary.get('wall_s') or 0.0:.2f} s"
    if summary["status"] == "lost":
        # Stopped because the heartbeat found the claim lost, or because reporting to the trial found it finished
        # (the beat not yet): read it. Never told: "lost" is no result.
        lost = beat.lost or lost_claim(beat.storage, claim.trial._trial_id) or Lost(None)
    else:
        with clock.timed("tell"):
            lost = tell(beat.storage, claim, summary, attrs)
    drop(claim, lost, clock)
    if summary["status"] == "interrupted":  # a signal stopped the run: the worker stops too
        raise KeyboardInterrupt


def drop(claim: Claim, lost: Lost | None, clock: Clock) -> None:
    """A result nobody was told, since another worker failed its trial as stale: say so, once."""
    if lost is not None:
        clock.outcome += ", claim lost"
        print(lost.line(claim), flush=True)


def train_here(suite: Suite, run: Path, claim: Claim, overrides: list[str], control: list[str], threads: int | None,
               warm: Warm, clock: Clock, beat: Heartbeat) -> dict[str, Any]:
    """The run in this process, with the worker's warm data; returns its summary. The claim's observer comes first:
    a lost trial takes no more reports."""
    from optbench.training.trainer import Trainer

    with clock.timed("setup"):
        cfg = compose(overrides + control + ([f"train.threads={threads}"] if threads else []))
        pruning = (PruningObserver(claim, suite, cfg),) if claim.phase == "tune" and suite.tuning.prune else ()
        observers = (ClaimObserver(beat), *pruning)
        trainer = Trainer(cfg, observers=observers, data=warm.data(cfg.data))
        record_trial(run, suite, claim, overrides)
    with clock.timed("train"):
        return trainer.train()


def train_on_ranks(suite: Suite, run: Path, claim: Claim, overrides: list[str], control: list[str],
                   threads: int | None, clock: Clock, reused: bool, beat: Heartbeat) -> dict[str, Any]:
    """The run under torchrun on nproc_per_trial ranks (multirank.py); a finished run's summary is read, not rerun."""
    with clock.timed("train"):  # set-up is the ranks', inside their run
        if reused:
            record_trial(run, suite, claim, overrides)
            return read_json(run / "summary.json")
        return multirank.train(suite, run, overrides + control, threads,
                               opened=lambda: record_trial(run, suite, claim, overrides),
                               lost=lambda: beat.lost is not None)


def record_failure(run: Path, suite: Suite, claim: Claim, overrides: list[str], error: str) -> None:
    """A trial that crashed before its trainer wrote a summary (while composing its config or building its
    model, data or optimizer) still leaves a run directory the report finds and counts as failed."""
    summary = run / "summary.json"
    if summary.exists() and read_json(summary).get("status") != "running":
        return  # the trainer recorded the failure itself, or this is a finished run's directory
    run.mkdir(parents=True, exist_ok=True)
    record_trial(run, suite, claim, overrides)
    write_json(summary, {"status": "failed", "error": error, "final_val_loss": None, "best_val_loss": None,
                         "steps": 0, "tokens": 0, "run_dir": str(run)})


def discard_dead_attempt(run: Path) -> None:
    """A dead worker's attempt that never checkpointed holds nothing to resume: start that run afresh."""
    checkpoints = run / "checkpoints"
    if run.exists() and not (checkpoints.exists() and any(checkpoints.glob("step-*.pt"))):
        summary = run / "summary.json"
        if not (summary.exists() and read_json(summary)["status"] in ("completed", "diverged")):
            shutil.rmtree(run)


def finished(run: Path) -> bool:
    summary = run / "summary.json"
    return summary.exists() and read_json(summary)["status"] == "completed"


def record_trial(run: Path, suite: Suite, claim: Claim, overrides: list[str]) -> None:
    """trial.json: what the report needs to place this run; phases accumulate (a final run at the tuning
    seed is the tuning trial's own run directory). `trial` is the tuning study's number of the first attempt at
    this configuration (a requeued attempt keeps it): the order the tuning burden is counted in."""
    path = layout.trial_file(run)
    previous = read_json(path) if path.exists() else {}
    number = previous.get("trial", claim.trial.number if claim.phase == "tune" else None)
    phases = sorted(set(previous.get("phases", [])) | {claim.phase}, key=("tune", "final").index)
    record = {"suite": suite.name, "scenario": claim.scenario.name, "optimizer": claim.entry.name,
              "hparams": claim.hparams, "seed": claim.seed, "overrides": overrides, "trial": number, "phases": phases}
    extension = previous.get("extension", claim.extension if claim.phase == "tune" else None)
    if extension is not None:  # a point beyond the grid of this hyperparameter (bench/extend.py)
        record["extension"] = extension
    study = previous.get("study", claim.tuning_study)
    if study:  # one of the repeated tuning studies after the first (tuning.studies)
        record["study"] = study
    write_json(path, record)


class PruningObserver:
    """Reports each evaluation to the trial; stops the run when Optuna's median pruner finds its val loss
    worse than the median of earlier trials at the same step (after `prune_warmup_evals` evaluations, and
    never at the last step, where the trial is as good as finished)."""

    MIN_TRIALS = 2
    """Finished trials needed before any pruning: a median of fewer says little."""

    def __init__(self, claim: Claim, suite: Suite, cfg):
        self.trial = claim.trial
        self.last_step = cfg.train.steps
        every = cfg.eval.every or cfg.train.steps
        claim.study.pruner = optuna.pruners.MedianPruner(
            n_startup_trials=self.MIN_TRIALS, n_warmup_steps=suite.tuning.prune_warmup_evals * every)

    def log(self, record: dict[str, Any]) -> None:
        from optbench.training.trainer import StopTraining

        if "val_loss" not in record or record["step"] in (0, self.last_step):
            return
        try:
            self.trial.report(record["val_loss"], record["step"])
        except optuna.exceptions.UpdateFinishedTrialError:  # failed as stale since the last beat looked
            raise StopTraining("lost", write=False) from None
        if self.trial.should_prune():
            raise StopTraining("pruned")

    def close(self) -> None:
        pass
