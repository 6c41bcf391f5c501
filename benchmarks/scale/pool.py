"""Bench workers as local processes, with only their training faked, and a supervisor that may kill them.

A worker here is `optbench.bench.worker.work`'s loop over the same functions: `claim_next` with the worker's own
stamp, the heartbeat thread around the trial, the worker's `tell`, a pause of `POLL_S` when the claim says WAIT.
The loop is restated rather than called so that each claim, and only the claim, is measured (probe.py); the
trial is FakeTrainer's. Every claim is appended to the worker's log, `FOLDER/claims/<worker>.jsonl`, as it
returns (a line at a time, so a SIGKILL loses at most the claim it interrupts: the storage has that one).

Processes fork from a server that imported optbench once (multiprocessing's forkserver): 32 fresh interpreters
importing torch would take minutes on 2 cores, and a fork of the benchmark itself would inherit its database
connections. All workers start claiming together once every one is ready; the wall clock runs from then until
the last one exits. With kills on, the supervisor SIGKILLs a random worker at exponentially distributed times and
starts a new one in its place; the dead one's trial is failed and requeued by the storage's heartbeat check.
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
from optbench.bench.plan import DONE, WAIT, Claim, Next, claim_next
from optbench.bench.storage import open_storage
from optbench.bench.suite import Suite, run_key
from optbench.bench.worker import POLL_S, heartbeat, stamp, tell

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
    """What the supervisor did: the run's wall-clock seconds, and the workers it killed (each replaced)."""

    wall_s: float
    kills: int


def claims_log(folder: Path, worker_id: str) -> Path:
    return Path(folder) / "claims" / f"{worker_id}.jsonl"


def read_claims(folder: Path) -> list[dict[str, Any]]:
    """Every claim every worker logged, in no particular order."""
    return [json.loads(line) for path in sorted((Path(folder) / "claims").glob("*.jsonl"))
            for line in path.read_text().splitlines() if line.strip()]


def work(job: Job, worker_id: str, seed: int, ready=None, go=None) -> None:
    """One worker until the suite is done. With `ready` and `go`, it signals once its storage is open and waits
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
            with heartbeat(storage, claim.trial._trial_id, job.suite.execution.heartbeat_s):
                tell(claim, trainer.train(claim))


def claim_record(worker_id: str, claim: Claim | Next, cost: Cost) -> dict[str, Any]:
    record = {"worker": worker_id, "at": time.time(), "seconds": cost.seconds, "lock_wait": cost.lock_wait,
              "cpu": cost.cpu, "statements": cost.statements}
    if not isinstance(claim, Claim):
        return {**record, "outcome": claim.value}
    return {**record, "outcome": "claim", "study": claim.study.study_name, "number": claim.trial.number,
            "trial_id": claim.trial._trial_id, "key": run_key(claim.hparams, claim.seed)}


def await_ready(procs: dict[int, multiprocessing.Process], ready) -> None:
    """Until every worker has opened the storage; a worker that dies meanwhile stops the run."""
    deadline, waiting = time.perf_counter() + READY_TIMEOUT_S, len(procs)
    while waiting:
        if ready.acquire(timeout=0.2):
            waiting -= 1
            continue
        dead = [p.name for p in procs.values() if p.exitcode is not None]
        if dead:
            raise RuntimeError(f"worker {dead[0]} exited before the start (its traceback is above)")
        if time.perf_counter() > deadline:
            raise RuntimeError(f"workers did not open the storage within {READY_TIMEOUT_S} s")


def run(job: Job, workers: int, kill_every_s: float | None = None, seed: int = 0) -> Supervision:
    """`workers` processes until the suite is done; with `kill_every_s`, a random one is SIGKILLed and replaced
    every `kill_every_s` seconds on average. A worker that fails on its own stops the run (RuntimeError)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    ready, go = context.Semaphore(0), context.Event()
    rng = random.Random(seed)
    generation = {slot: 0 for slot in range(workers)}

    def start(slot: int, wait_for_go: bool) -> multiprocessing.Process:
        name = f"w{slot}" if generation[slot] == 0 else f"w{slot}.{generation[slot]}"
        process = context.Process(target=work, name=name, args=(job, name, seed * 10_000 + slot * 100 + generation[slot]),
                                  kwargs={"ready": ready, "go": go} if wait_for_go else {})
        process.start()
        return process

    procs = {slot: start(slot, wait_for_go=True) for slot in range(workers)}
    kills = 0
    try:
        await_ready(procs, ready)
        began = time.perf_counter()
        go.set()
        next_kill = began + rng.expovariate(1 / kill_every_s) if kill_every_s else None
        while procs:
            timeout = None if next_kill is None else max(0.0, next_kill - time.perf_counter())
            wait([p.sentinel for p in procs.values()], timeout)
            for slot, process in list(procs.items()):
                if process.exitcode is not None:
                    del procs[slot]
                    if process.exitcode != 0:
                        raise RuntimeError(f"worker {process.name} exited with code {process.exitcode}")
            if next_kill is not None and time.perf_counter() >= next_kill:
                alive = sorted(slot for slot, process in procs.items() if process.exitcode is None)
                if alive:
                    slot = rng.choice(alive)
                    os.kill(procs[slot].pid, signal.SIGKILL)
                    procs[slot].join()
                    kills += 1
                    generation[slot] += 1
                    procs[slot] = start(slot, wait_for_go=False)
                next_kill = time.perf_counter() + rng.expovariate(1 / kill_every_s)
        return Supervision(time.perf_counter() - began, kills)
    finally:
        for process in procs.values():
            process.kill()
            process.join()
