"""Bench workers as local processes, with only their training faked, and a supervisor that may kill them.

A worker here is `optbench.bench.worker.work`'s loop over the same functions: `claim_next` with the worker's own
stamp, the heartbeat thread around the trial, the worker's `tell`, a pause of `POLL_S` when the claim says WAIT.
The loop is restated rather than called so that each claim, and only the claim, is measured (probe.py); the
trial is FakeTrainer's. Every claim is appended to the worker's log, `FOLDER/claims/<worker>.jsonl`, as it
returns (a line at a time, so a SIGKILL loses at most the claim it interrupts: the storage has that one).

Processes fork from a server that imported optbench once (multiprocessing's forkserver): 32 fresh interpreters
importing torch would take minutes on 2 cores, and a fork of the benchmark itself would inherit its database
connections. All workers start claiming together once every one is ready; the wall clock runs from then until
the last one exits. With kills on, the supervisor SIGKILLs a random worker holding a trial at exponentially
distributed times and starts a new one in its place; the dead one's trial is failed and requeued by the storage's
heartbeat check. Kills aim at trials because that is the path they test: a claim killed half-way is rolled back by
the database (claim_transaction.py; tests/bench/test_claims.py fails a claim on purpose).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import optuna

from benchmarks.scale.fake_trainer import FakeTrainer, TrialTimes
from benchmarks.scale.probe import Cost, StatementCounter
from optbench.bench.heartbeat import Heartbeat
from optbench.bench.launch import RESTARTS_PER_WORKER
from optbench.bench.plan import DONE, WAIT, Claim, Next, claim_next
from optbench.bench.storage import open_storage
from optbench.bench.suite import Suite, run_key
from optbench.bench.tell import tell
from optbench.bench.worker import POLL_S, stamp

READY_TIMEOUT_S = 600
"""How long the workers may take to open the storage before the run is given up (32 forks on 2 cores)."""


@dataclass(frozen=True)
class Job:
    """What every worker of a run is given."""

    suite: Suite
    url: str
    folder: Path
    """Where the claim logs go, and the output folder the stamps name run directories in (none is written)."""
    times: TrialTimes


@dataclass(frozen=True)
class Supervision:
    """What the supervisor saw: the run's wall-clock seconds, the workers it killed and those that failed on their
    own (each replaced)."""

    wall_s: float
    kills: int
    crashes: int


def claims_log(folder: Path, worker_id: str) -> Path:
    return Path(folder) / "claims" / f"{worker_id}.jsonl"


def read_claims(folder: Path) -> list[dict[str, Any]]:
    """Every claim every worker logged, in no particular order."""
    return [json.loads(line) for path in sorted((Path(folder) / "claims").glob("*.jsonl"))
            for line in path.read_text().splitlines() if line.strip()]


def work(job: Job, worker_id: str, seed: int, training=None, slot: int = 0, ready=None, go=None) -> None:
    """One worker until the suite is done. `training[slot]` is 1 from its claim of a trial until it begins to tell
    it (the supervisor aims its kills with it); with `ready` and `go`, it signals once its storage is open and waits
    for the start."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(job.url, job.suite.execution)
    trainer = FakeTrainer(job.suite, job.times, random.Random(seed))
    path = claims_log(job.folder, worker_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    with StatementCounter() as counter, open(path, "a", buffering=1) as log:
        if ready is not None:
            ready.release()
            go.wait()
        while True:
            with counter.measure() as cost:
                claim = claim_next(job.suite, storage, stamp=lambda found: stamp(job.folder, found, worker_id))
            log.write(json.dumps(claim_record(worker_id, claim, cost)) + "\n")
            if claim is DONE:
                return
            if claim is WAIT:
                time.sleep(POLL_S)
                continue
            if training is not None:
                training[slot] = 1
            with Heartbeat(storage, claim, job.suite.execution.heartbeat_s):
                summary = trainer.train(claim)
                if training is not None:
                    training[slot] = 0
                if summary["status"] != "lost":  # the pruner found the trial failed as stale: no result to tell
                    tell(storage, claim, summary)


def claim_record(worker_id: str, claim: Claim | Next, cost: Cost) -> dict[str, Any]:
    record = {"worker": worker_id, "at": time.time(), "seconds": cost.seconds, "lock_wait": cost.lock_wait,
              "lock_held": cost.lock_held, "cpu": cost.cpu, "statements": cost.statements}
    if not isinstance(claim, Claim):
        return {**record, "outcome": claim.value}
    return {**record, "outcome": "claim", "study": claim.study.study_name, "number": claim.trial.number,
            "trial_id": claim.trial._trial_id, "key": run_key(claim.hparams, claim.seed)}


class Supervisor:
    """Starts the workers, starts them claiming together, and with kills on, at exponentially distributed times
    (mean `kill_every_s`) SIGKILLs a random worker holding a trial, if one does, and starts another in its slot. A
    kill that finds no worker in a trial is skipped, not kept for the next to claim one: at the end of a suite the
    only trials left are killed ones, requeued `grace_s` after their last heartbeat, and a kept kill would meet each
    as soon as it is claimed, again and again. A worker that fails on its own is replaced as `optbench bench` replaces
    it (launch.py), up to RESTARTS_PER_WORKER times the workers, and counted; one that fails before the start, or
    one too many, stops the run (RuntimeError). Its traceback is on stderr."""

    def __init__(self, job: Job, workers: int, kill_every_s: float | None, seed: int, max_kills: int | None,
                 timeout_s: float | None):
        self.job, self.kill_every_s, self.seed, self.max_kills = job, kill_every_s, seed, max_kills
        self.timeout_s = timeout_s
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload([__name__])
        self.ready, self.go = self.context.Semaphore(0), self.context.Event()
        self.training = self.context.Array("b", workers, lock=False)
        self.rng = random.Random(seed)
        self.generation = [0] * workers
        self.procs: dict[int, multiprocessing.Process] = {}
        self.kills = self.crashes = 0

    def start(self, slot: int, first: bool) -> None:
        generation = self.generation[slot]
        name = f"w{slot}" if generation == 0 else f"w{slot}.{generation}"
        self.training[slot] = 0
        process = self.context.Process(
            target=work, name=name, args=(self.job, name, self.seed * 10_000 + slot * 100 + generation, self.training,
                                          slot),
            kwargs={"ready": self.ready, "go": self.go} if first else {})
        process.start()
        self.procs[slot] = process

    def run(self) -> Supervision:
        try:
            for slot in range(len(self.generation)):
                self.start(slot, first=True)
            self.await_ready()
            began = time.perf_counter()
            self.go.set()
            due = began + self.rng.expovariate(1 / self.kill_every_s) if self.kill_every_s else None
            deadline = began + self.timeout_s if self.timeout_s else None
            while self.procs:
                timeout = min((t - time.perf_counter() for t in (due, deadline) if t is not None), default=None)
                wait([p.sentinel for p in self.procs.values()], None if timeout is None else max(0.01, timeout))
                self.reap(replace=True)
                if deadline is not None and time.perf_counter() > deadline:
                    raise RuntimeError(f"the suite was not done after {self.timeout_s:g} s; {len(self.procs)} workers "
                                       "were still claiming")
                if due is not None and time.perf_counter() >= due:
                    self.kill_one()
                    more = self.max_kills is None or self.kills < self.max_kills
                    due = time.perf_counter() + self.rng.expovariate(1 / self.kill_every_s) if more else None
            return Supervision(time.perf_counter() - began, self.kills, self.crashes)
        finally:
            for process in self.procs.values():
                process.kill()
                process.join()

    def await_ready(self) -> None:
        """Until every worker has opened the storage; a worker that dies meanwhile stops the run."""
        deadline, waiting = time.perf_counter() + READY_TIMEOUT_S, len(self.procs)
        while waiting:
            if self.ready.acquire(timeout=0.2):
                waiting -= 1
                continue
            self.reap(replace=False)
            if time.perf_counter() > deadline:
                raise RuntimeError(f"workers did not open the storage within {READY_TIMEOUT_S} s")

    def reap(self, replace: bool) -> None:
        for slot, process in list(self.procs.items()):
            if process.exitcode is None:
                continue
            del self.procs[slot]
            if process.exitcode == 0:
                continue
            self.crashes += 1
            if not replace or self.crashes > RESTARTS_PER_WORKER * len(self.generation):
                raise RuntimeError(f"worker {process.name} exited with code {process.exitcode} (its traceback is "
                                   f"above); {self.crashes} worker(s) failed in this run")
            self.generation[slot] += 1
            self.start(slot, first=False)

    def kill_one(self) -> None:
        """SIGKILL a random worker holding a trial, if one does, and start another in its slot. The worker is stopped
        while its flag is read again: one that began to tell its trial meanwhile is let go, so a kill always leaves
        a trial running for the heartbeat check to requeue."""
        holding = [slot for slot, process in self.procs.items() if process.exitcode is None and self.training[slot]]
        if not holding:
            return
        slot = self.rng.choice(sorted(holding))
        pid = self.procs[slot].pid
        os.kill(pid, signal.SIGSTOP)
        wait_stopped(pid)
        if not self.training[slot]:
            os.kill(pid, signal.SIGCONT)
            return
        os.kill(pid, signal.SIGKILL)
        self.procs[slot].join()
        self.kills += 1
        self.generation[slot] += 1
        self.start(slot, first=False)


def wait_stopped(pid: int) -> None:
    """Until the process is stopped, or has exited: a SIGSTOP takes effect after os.kill returns (Linux's /proc)."""
    stat = Path(f"/proc/{pid}/stat")
    while True:
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]  # the field after the command name
        except FileNotFoundError:
            return
        if state in ("T", "t", "Z", "X"):
            return
        time.sleep(0.001)


def run(job: Job, workers: int, kill_every_s: float | None = None, seed: int = 0, max_kills: int | None = None,
        timeout_s: float | None = None) -> Supervision:
    """`workers` processes until the suite is done, with kills every `kill_every_s` on average where given (at most
    `max_kills` of them); a run still going after `timeout_s` is stopped (RuntimeError)."""
    return Supervisor(job, workers, kill_every_s, seed, max_kills, timeout_s).run()
