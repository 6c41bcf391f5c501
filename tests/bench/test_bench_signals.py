"""SIGTERM to a local bench (a Slurm preemption notice to the coordinator, `kill`, a CI timeout) reaches every
worker: each running trial finishes its step, checkpoints and goes back to the queue; the bench exits with a
one-line hint and no traceback; the same command again completes every trial without redoing a step.

Workers are found among the coordinator's own children (tests/bench/proctree.py), never by a pattern
matched over the whole machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from optbench.bench import launch, layout
from optbench.bench.worker import work
from optbench.training.checkpoint import CheckpointStore
from optbench.training.rundir import read_json
from tests.bench.proctree import child_with_args, children, cmdline, hold, kill_child, send
from tests.bench.test_bench_run import bench_process, micro_suite, run_dirs, steps_logged, trials, wait_for

optuna.logging.set_verbosity(optuna.logging.WARNING)

STEPS = 120


def training(out: Path) -> list[Path]:
    """Runs inside their training loop: running, with a train line written (the stop handlers are in place)."""
    found = []
    for run in run_dirs(out):
        summary, metrics = run / "summary.json", run / "metrics.jsonl"
        if summary.exists() and metrics.exists() and read_json(summary)["status"] == "running" \
                and any('"loss"' in line for line in metrics.read_text().splitlines()[:-1]):
            found.append(run)
    return found


def open_run(pid: int) -> Path | None:
    """The run directory whose metrics.jsonl process `pid` holds open (the trainer keeps it open while it trains)."""
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = Path(os.readlink(fd))
            if target.name == "metrics.jsonl":
                return target.parent
    except OSError:  # exited, or a descriptor closed while we looked
        return None
    return None


def state(out: Path) -> str:
    """What the runs and workers were doing, for a failure message."""
    runs = {str(run): read_json(run / "summary.json").get("status") for run in run_dirs(out)
            if (run / "summary.json").exists()}
    logs = {p.name: p.read_text()[-2000:] for p in (out / "workers").glob("*.log")}
    return f"runs {runs}; worker logs {logs}"


def is_stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] in ("T", "t")


def pending(pid: int, sig: signal.Signals) -> bool:
    """Whether `sig` waits to be delivered to `pid` (a stopped process keeps it pending until continued)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("ShdPnd:", "SigPnd:")) and int(line.split()[1], 16) >> (sig - 1) & 1:
            return True
    return False


@pytest.mark.slow
@pytest.mark.xdist_group("processes")
def test_sigterm_reaches_every_worker_whose_trials_checkpoint_and_requeue(tmp_path, corpus):
    # No heartbeat falls due while a worker is paused (a paused writer could hold the SQLite lock), and a
    # paused worker's trial is never taken for a dead one's.
    path = micro_suite(tmp_path, corpus, steps=STEPS, grid=(1e-3,), seeds=(0,), workers=2, heartbeat_s=300,
                       grace_s=600)
    spec = yaml.safe_load(path.read_text())
    spec["optimizers"][1]["search"]["lr"]["grid"] = [1e-4]  # one trial per optimizer: both workers train at once
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    bench = bench_process(path, out, workers=2)
    held = []  # the workers, by pidfd: cleaned up below even if a broken coordinator left them orphaned
    try:
        wait_for(lambda: len(children(bench.pid)) == 2, what="two workers")
        workers = {slot: child_with_args(bench.pid, "--worker", slot) for slot in ("0", "1")}
        held = [(hold(bench.pid, pid), pid) for pid in workers.values()]
        # Each worker is paused (SIGSTOP) the moment its trial is seen inside the training loop, so both are
        # caught mid-trial however far apart a loaded machine starts them (raced, one could finish first). The
        # run a worker trains is the one whose metrics.jsonl it holds open: a look costs a millisecond, where a
        # query of the study could take longer than a whole trial on a loaded machine.
        paused: set[str] = set()

        def pause_the_training() -> bool:
            for slot, pid in workers.items():
                run = open_run(pid)
                if slot not in paused and run is not None and run in training(out):
                    send(*held[list(workers).index(slot)], signal.SIGSTOP)
                    paused.add(slot)
            return len(paused) == 2

        try:
            wait_for(pause_the_training)
        except AssertionError:
            raise AssertionError(f"never both training; paused {paused}; {state(out)}") from None
        # Stopped in fact, not only sent SIGSTOP: a SIGTERM arriving before the stop takes effect is taken first
        # (a lower number) and would not show as pending below.
        wait_for(lambda: all(is_stopped(pid) for pid in workers.values()), what="both workers stopped")
        bench.send_signal(signal.SIGTERM)  # to the coordinator alone, as Slurm or `kill PID` would
        try:
            wait_for(lambda: all(pending(pid, signal.SIGTERM) for pid in workers.values()))  # forwarded to both
        except AssertionError:
            signals = {pid: [line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                             if line.startswith(("State", "Sig", "Shd"))] for pid in [bench.pid, *workers.values()]}
            raise AssertionError(f"SIGTERM not pending in both paused workers: {signals}; coordinator exit "
                                 f"{bench.poll()}; {state(out)}") from None
        for fd, pid in held:
            send(fd, pid, signal.SIGCONT)
        output, _ = bench.communicate(timeout=120)
    finally:
        for fd, pid in held:
            send(fd, pid, signal.SIGKILL)  # a no-op when they exited as they should
            if fd is not None:
                os.close(fd)
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    assert bench.returncode == 128 + signal.SIGTERM, output  # as `optbench train` exits on SIGTERM
    assert "stopped; run the same command again to continue" in output and "Traceback" not in output
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers.values())  # both exited and were reaped
    for slot in ("0", "1"):
        assert "Traceback" not in layout.worker_log(out, slot).read_text()

    stopped = run_dirs(out)
    assert len(stopped) == 2
    for run in stopped:
        summary = read_json(run / "summary.json")
        assert (summary["status"], summary["signal"]) == ("interrupted", "SIGTERM"), run
        assert 0 < summary["steps"] < STEPS
        assert CheckpointStore(run / "checkpoints").steps()[-1] == summary["steps"]  # saved where it stopped
    failed = [t for t in trials(out) if t.state == TrialState.FAIL]
    waiting = [t for t in trials(out) if t.state == TrialState.WAITING]
    assert len(failed) == 2 and not any("error" in t.user_attrs for t in failed)  # stopped, not crashed
    assert sorted(str(t.user_attrs["hparams"]) for t in waiting) == sorted(str(t.user_attrs["hparams"]) for t in failed)

    # The rerun in this process (test_bench_run's kill test reruns a real `optbench bench`): what matters here is
    # that the requeued trials resume from their checkpoints.
    suite, out, url = launch.prepare(path, out, None)
    work(suite, out, url, "rerun", threads=1)
    for run in stopped:
        steps = steps_logged(run)
        assert steps == sorted(set(steps)) and steps[-1] == STEPS  # resumed from its checkpoint: no step twice
    assert sorted(t.state.name for t in trials(out) if t.state != TrialState.FAIL) == ["COMPLETE"] * 4


@pytest.mark.xdist_group("processes")
def test_a_worker_is_found_among_its_benchs_children_only():
    """Two processes with one command line, one the child of a stand-in coordinator and one the test's own:
    only the coordinator's is found and signalled (a machine-wide `pgrep -f` would match both)."""
    marker = f"optbench-test-{uuid.uuid4().hex}"
    command = [sys.executable, "-c", "import time; time.sleep(120)", "--worker", marker]
    ours = subprocess.Popen(command)
    coordinator = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; subprocess.run(sys.argv[1:])",
                                    *command])
    held = None
    try:
        wait_for(lambda: children(coordinator.pid), timeout=60)
        pid = child_with_args(coordinator.pid, "--worker", marker)
        held = (hold(coordinator.pid, pid), pid)
        assert pid != ours.pid and cmdline(pid) == cmdline(ours.pid) == command
        with pytest.raises(AssertionError, match="is not a child of"):
            kill_child(coordinator.pid, ours.pid, signal.SIGKILL)
        kill_child(coordinator.pid, pid, signal.SIGKILL)
        assert coordinator.wait(timeout=60) == 0
        assert ours.poll() is None  # the look-alike lives on
    finally:
        if held is not None:
            send(*held, signal.SIGKILL)  # the coordinator's child, even if a failure above left it orphaned
            if held[0] is not None:
                os.close(held[0])
        for proc in (ours, coordinator):
            proc.kill()
            proc.wait()
