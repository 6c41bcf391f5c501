"""A trial on N ranks (`execution.nproc_per_trial: N`): `optbench train` under torchrun, a child of the worker.

The worker claims the trial, keeps its heartbeat and tells the study as for a trial it trains itself; in between it
runs, and waits for,

    python -m optbench.bench.tether WORKER_PID \\
        python -m torch.distributed.run --standalone --nproc-per-node N -m optbench [--plugin P] train OVERRIDES

then reads the run's summary.json. `--standalone` gives each trial a rendezvous on a free local port; `optbench train`
picks gloo on CPU and nccl on GPU (one GPU per rank from the worker's CUDA_VISIBLE_DEVICES); the suite's
train.parallel (ddp or fsdp, from its base or scenario overrides) is among the overrides. The guarantees of a
single-process trial hold:

- SIGTERM or SIGINT to the worker reaches torchrun as SIGTERM, which passes it to every rank: the run finishes its step,
  checkpoints and ends "interrupted", and the worker puts the trial back in the queue and stops.
- A worker whose claim on the trial was lost (failed as stale by another worker; heartbeat.py) sends torchrun SIGHUP,
  which it passes to every rank. The trainer handles SIGTERM and SIGINT only, so a rank ends at once, mid-step,
  without a checkpoint or summary: the run directory is the requeued copy's now (see worker.py).
- A worker killed outright leaves no ranks behind: torchrun runs in a session of its own (a signal to the worker's
  process group is not its), tied to the worker by tether.py, so the worker's death is a SIGTERM to torchrun, which
  stops the ranks as above (SIGKILL after its 30 s). The trial's heartbeat goes stale, and it is requeued into the
  same run directory and resumes from the checkpoint, as a killed single-process trial does.

On Slurm each array task is one worker that runs this same path on its node, over gpus_per_task x N GPUs. An N-task
job whose tasks claimed together would need the claim shared between processes; here one process claims and torchrun
gives the ranks their world, so claiming, heartbeats and requeueing are the single-process code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from optbench.bench.suite import Suite
from optbench.errors import check
from optbench.training.preemption import StopRequest
from optbench.training.rundir import read_json

POLL_S = 0.2
"""How often the worker looks at its child while the ranks train (a signal is handled at once regardless)."""

ENDED = ("completed", "diverged", "interrupted")
"""A run's statuses that are its result (a "failed" or still "running" summary is a crash of the ranks)."""


class RanksFailed(RuntimeError):
    """The ranks exited without a result: a crash of the trial, as an exception in a single-process one is."""


def check_configs(configs: list, nproc: int) -> None:
    """Every run the suite composes must run on `nproc` ranks: refused here, in one line, before any trial starts,
    rather than as a crash of every trial."""
    from optbench.training.refusals import check_parallel

    for cfg in configs:
        check(cfg.train.grad_accum % nproc == 0,
              f"train.grad_accum={cfg.train.grad_accum} must be a multiple of execution.nproc_per_trial={nproc} "
              "(the ranks split each step's micro-batches); set train.grad_accum in the suite's base")
        check_parallel(cfg, nproc)


def command(suite: Suite, overrides: list[str]) -> list[str]:
    """torchrun running `optbench train OVERRIDES` on the suite's nproc_per_trial ranks, with the suite's plugins."""
    plugins = [arg for ref in suite.plugins for arg in ("--plugin", ref)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={suite.execution.nproc_per_trial}", "-m", "optbench", *plugins, "train", *overrides]


def rank_threads(threads: int | None, nproc: int) -> int:
    """Each rank's share of the worker's CPU threads."""
    return max(1, (threads or os.cpu_count() or 1) // nproc)


def train(suite: Suite, run: Path, overrides: list[str], threads: int | None, opened: Callable[[], None],
          lost: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    """Train `run` on the suite's nproc_per_trial ranks; returns its summary (an "interrupted" one where a signal
    stopped the ranks before their trainer could say so; a "lost" one, never written, where `lost()` turned true and
    the ranks were stopped for it). Raises RanksFailed when they ended without a result. `opened()` is called once
    the ranks' trainer has opened the run directory (it refuses to start in a folder that holds files but no
    checkpoint, so the worker's own files go in after), unless the claim was lost by then."""
    per_rank = rank_threads(threads, suite.execution.nproc_per_trial)
    cmd = [sys.executable, "-m", "optbench.bench.tether", str(os.getpid()),
           *command(suite, [*overrides, f"train.threads={per_rank}"])]
    env = {**os.environ, "OMP_NUM_THREADS": str(per_rank)}
    summary = Written(run / "summary.json")  # an earlier attempt's (interrupted) summary is not this one's
    with ForwardStop() as stop:
        stop.child = subprocess.Popen(cmd, env=env, start_new_session=True)
        try:
            if stop.requested:  # a signal that came while the child was being started
                stop.child.send_signal(signal.SIGTERM)
            code, dropped = wait(stop.child, summary, opened, lost)
        finally:
            if stop.child.poll() is None:  # the worker is leaving on an error: its ranks stop with it
                stop.child.send_signal(signal.SIGTERM)
                stop.child.wait()
    summary = read_json(summary.path) if summary.fresh() else {}
    if summary.get("status") in ENDED:
        return summary
    if dropped:
        return {"status": "lost"}
    if stop.requested:  # stopped before the ranks could checkpoint: back to the queue, as an interrupted run
        return {"status": "interrupted", "signal": stop.requested}
    raise RanksFailed(f"{suite.execution.nproc_per_trial} ranks under torchrun exited with code {code} "
                      f"(run status {summary.get('status', 'none')}); their output is in this worker's log")


class Written:
    """A file as this attempt writes it: `fresh` once written since (it is replaced whole: a new inode and mtime)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.before = self._stamp()

    def _stamp(self) -> tuple[int, int] | None:
        if not self.path.exists():
            return None
        stat = self.path.stat()
        return stat.st_ino, stat.st_mtime_ns

    def fresh(self) -> bool:
        return self.path.exists() and self._stamp() != self.before


def wait(child: subprocess.Popen, summary: Written, opened: Callable[[], None],
         lost: Callable[[], bool]) -> tuple[int, bool]:
    """The child's exit code, and whether it was stopped (SIGHUP, once) because `lost()` turned true; `opened` is
    called once the ranks' trainer writes the run's summary (first thing), while the claim is held."""
    called = dropped = False
    while True:
        code = child.poll()
        if not dropped and code is None and lost():
            child.send_signal(signal.SIGHUP)
            dropped = True
        if not called and not dropped and summary.fresh():
            opened()
            called = True
        if code is not None:
            return code, dropped
        time.sleep(POLL_S)


class ForwardStop(StopRequest):
    """While the ranks run, SIGTERM and SIGINT to the worker become one SIGTERM to the child (torchrun); `requested`
    names the first signal. torchrun is in a session of its own, so without this no signal would reach it. Unlike a
    run's own StopRequest, a second SIGINT does not interrupt the worker: the ranks are already stopping."""

    def __init__(self) -> None:
        super().__init__()
        self.child: subprocess.Popen | None = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.requested is None
        self.requested = self.requested or signal.Signals(signum).name
        if first and self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)  # once: a second SIGTERM would cut torchrun's own shutdown short
