"""Trials on several ranks (execution.nproc_per_trial, bench/multirank.py): the torchrun command, the checks made
before any trial, the worker's signals reaching the ranks, the ranks stopped at once when the worker loses its claim,
and no rank outliving a killed worker.

One end-to-end run (2 gloo ranks on CPU): a worker is killed mid-trial, its torchrun and ranks stop (the run ends
"interrupted" at a checkpoint), and a rerun resumes the trial from it, finishes the suite and writes the report.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from optbench.bench import launch, layout, multirank
from optbench.bench.suite import Execution, Suite
from optbench.bench.worker import work
from optbench.cli import main
from optbench.training.checkpoint import CheckpointStore
from optbench.training.rundir import read_json
from tests.bench.proctree import child_env, children
from tests.bench.test_bench_run import micro_suite, run_dirs, steps_logged, trials, wait_for
from tests.bench.test_suite import write

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_the_command_runs_optbench_train_under_torchrun_with_the_suites_plugins():
    suite = Suite(name="s", execution=Execution(nproc_per_trial=4), plugins=["/abs/plugin.py", "my.module"])
    assert multirank.command(suite, ["optim=muon", "train.parallel=fsdp"]) == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4", "-m", "optbench",
        "--plugin", "/abs/plugin.py", "--plugin", "my.module", "train", "optim=muon", "train.parallel=fsdp"]
    assert multirank.rank_threads(8, 4) == 2 and multirank.rank_threads(1, 4) == 1


def test_each_worker_gets_the_next_gpus_for_its_ranks():
    four = Execution(gpus=[4, 5, 6, 7], nproc_per_trial=2)
    assert [launch.worker_gpus(four, slot) for slot in range(3)] == [[4, 5], [6, 7], [4, 5]]
    assert [launch.worker_gpus(Execution(gpus=[4, 5]), slot) for slot in range(3)] == [[4], [5], [4]]


@pytest.mark.parametrize("changes, message", [
    ({}, "train.grad_accum=1 must be a multiple of execution.nproc_per_trial=2"),
    ({"base": ["model=gpt2", "train.steps=10", "train.grad_accum=2", "train.parallel=fsdp"],
      "optimizers": [{"name": "adamw"}, {"name": "prodigy"}]}, "optim=prodigy cannot run under train.parallel=fsdp"),
])
def test_a_run_that_cannot_run_on_the_ranks_fails_before_anything_is_written(tmp_path, capsys, changes, message):
    path = write(tmp_path, execution={"nproc_per_trial": 2}, **changes)
    assert main(["bench", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- the worker's child


def tethered(parent_code: str, child_code: str, tmp_path: Path) -> subprocess.Popen:
    """A process running `parent_code` after starting `child_code` through the tether (its pid in `pid`)."""
    child = [sys.executable, "-m", "optbench.bench.tether", "{pid}", sys.executable, "-c", child_code]
    code = (f"import os, subprocess, sys, time; cmd = {child!r}; "
            "subprocess.Popen([a.format(pid=os.getpid()) for a in cmd]); " + parent_code)
    return subprocess.Popen([sys.executable, "-c", code], env=child_env(), cwd=tmp_path)


TRAP_SIGTERM = ("import pathlib, signal, time; "
                "signal.signal(signal.SIGTERM, lambda *a: (pathlib.Path('got-sigterm').touch(), exit(0))); "
                "pathlib.Path('started').touch(); time.sleep(60)")


def test_a_tethered_command_gets_sigterm_when_its_parent_is_killed(tmp_path):
    parent = tethered("time.sleep(60)", TRAP_SIGTERM, tmp_path)
    try:
        wait_for(lambda: (tmp_path / "started").exists(), timeout=60)
        parent.kill()  # SIGKILL: the parent cannot pass anything on
        parent.wait()
        wait_for(lambda: (tmp_path / "got-sigterm").exists(), timeout=30, what="the orphan's SIGTERM")
    finally:
        parent.kill()


def test_a_tether_whose_parent_is_already_gone_runs_nothing():
    done = subprocess.run([sys.executable, "-m", "optbench.bench.tether", "1", "true"], capture_output=True,
                          text=True, env=child_env(), timeout=60)
    assert done.returncode == 1 and done.stderr.strip() == "tether: parent 1 exited before the command started"


def test_signals_to_the_worker_reach_the_child_as_one_sigterm(tmp_path):
    counting = ("import signal, time; n = []; signal.signal(signal.SIGTERM, lambda *a: n.append(1)); "
                "print('ready', flush=True)\nwhile not n: time.sleep(0.01)\ntime.sleep(0.5); print(len(n))")
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with multirank.ForwardStop() as stop:
        stop.child = subprocess.Popen([sys.executable, "-c", counting], stdout=subprocess.PIPE, text=True)
        assert stop.child.stdout.readline() == "ready\n"
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C as well: already on its way, not sent twice
        assert stop.child.stdout.read() == "1\n"
        stop.child.wait()
    assert stop.requested == "SIGTERM"
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == previous


def stand_in_ranks(monkeypatch, run: Path, ranks: str) -> None:
    """multirank.train runs `ranks` (Python, with write(status) writing the run's summary, and wait() waiting to be
    stopped) instead of torchrun."""
    script = (f"import json, pathlib, sys, time\n"
              f"def write(status): pathlib.Path({str(run / 'summary.json')!r}).write_text(json.dumps("
              f"{{'status': status}}))\n"
              f"def wait(): pathlib.Path({str(run / 'waiting')!r}).touch(); time.sleep(60)\n{ranks}\n")
    monkeypatch.setattr(multirank, "command", lambda suite, overrides: [sys.executable, "-c", script])


@pytest.mark.parametrize("ranks, expected", [
    ("write('completed'); sys.exit(0)", {"status": "completed", "opened": 1}),
    ("write('interrupted'); sys.exit(143)", {"status": "interrupted", "opened": 1}),
    ("write('failed'); sys.exit(1)", "ranks under torchrun exited with code 1 (run status failed)"),
    ("sys.exit(2)", "ranks under torchrun exited with code 2 (run status none)"),
    ("write('running'); wait()", {"status": "interrupted", "signal": "SIGTERM", "opened": 1}),
    ("wait()", {"status": "interrupted", "signal": "SIGTERM", "opened": 0}),
])
def test_what_the_ranks_leave_is_the_trials_result(tmp_path, monkeypatch, ranks, expected):
    """Stand-in ranks end with a summary or none; the last two wait to be stopped by a SIGTERM to the worker before
    their trainer could write a result, and the trial goes back to the queue as an interrupted run."""
    stand_in_ranks(monkeypatch, tmp_path, ranks)
    suite = Suite(name="s", execution=Execution(nproc_per_trial=2))
    opened = []

    def stop_the_worker() -> None:
        wait_for(lambda: (tmp_path / "waiting").exists(), timeout=60)
        os.kill(os.getpid(), signal.SIGTERM)  # handled on the main thread, by multirank.ForwardStop

    if "wait()" in ranks:
        threading.Thread(target=stop_the_worker, daemon=True).start()
    if isinstance(expected, str):
        with pytest.raises(multirank.RanksFailed, match=expected.replace("(", r"\(").replace(")", r"\)")):
            multirank.train(suite, tmp_path, [], 2, opened=lambda: opened.append(1))
        return
    summary = multirank.train(suite, tmp_path, [], 2, opened=lambda: opened.append(1))
    assert {**summary, "opened": len(opened)} == expected


def test_an_earlier_attempts_summary_is_not_this_ones(tmp_path, monkeypatch):
    """A requeued trial's run directory holds the interrupted attempt's summary; ranks that crash before writing their
    own are a crash of this attempt, not another interruption."""
    (tmp_path / "summary.json").write_text(json.dumps({"status": "interrupted", "signal": "SIGTERM"}))
    stand_in_ranks(monkeypatch, tmp_path, "sys.exit(1)")
    opened = []
    with pytest.raises(multirank.RanksFailed, match=r"exited with code 1 \(run status none\)"):
        multirank.train(Suite(name="s", execution=Execution(nproc_per_trial=2)), tmp_path, [], 2,
                        opened=lambda: opened.append(1))
    assert not opened


def test_ranks_of_a_lost_claim_end_at_once_and_write_nothing(tmp_path, monkeypatch):
    """Once the worker finds its claim lost, the ranks get SIGHUP, which ends them without the checkpoint and summary
    that SIGTERM would have them write (the stand-in writes "interrupted" on SIGTERM, as the trainer would)."""
    stand_in_ranks(monkeypatch, tmp_path, "import signal\n"
                   "signal.signal(signal.SIGTERM, lambda *_: (write('interrupted'), sys.exit(143)))\n"
                   "write('running'); wait()")
    summary = multirank.train(Suite(name="s", execution=Execution(nproc_per_trial=2)), tmp_path, [], 2,
                              opened=lambda: None, lost=lambda: (tmp_path / "waiting").exists())
    assert summary == {"status": "lost"}
    assert read_json(tmp_path / "summary.json") == {"status": "running"}


# ----------------------------------------------------------------------------- end to end

STEPS = 100


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for whoever reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.xdist_group("processes")
def test_a_suite_on_two_ranks_per_trial_survives_a_killed_worker(tmp_path, corpus):
    path = micro_suite(tmp_path, corpus, steps=STEPS, grid=(1e-3,), seeds=(0,), nproc_per_trial=2,
                       threads_per_worker=2, ckpt_every=5)
    spec = yaml.safe_load(path.read_text())
    spec["optimizers"] = spec["optimizers"][:1]  # one trial, whose final run (the tuning seed) is its own
    spec["base"].append("train.grad_accum=2")
    path.write_text(yaml.safe_dump(spec))
    suite, out, url = launch.prepare(path, tmp_path / "out", None)
    log = tmp_path / "worker.log"
    with open(log, "w") as f:  # the command a local bench starts a worker with, in a process group of its own
        worker = subprocess.Popen([sys.executable, "-m", "optbench", "bench", str(layout.suite_file(out)), "--out",
                                   str(out), "--storage", url, "--worker", "0", "--threads", "2"],
                                  stdout=f, stderr=subprocess.STDOUT, env=child_env(), start_new_session=True)
    try:
        # a trial the worker has recorded (trial.json) and the ranks have checkpointed
        wait_for(lambda: any(run.glob("checkpoints/step-*.pt") for run in run_dirs(out)), what="a checkpointed trial")
        (torchrun,) = children(worker.pid)
        ranks = children(torchrun)
        assert len(ranks) == 2
        os.killpg(worker.pid, signal.SIGKILL)  # the worker's whole group, as a CI timeout would: it passes nothing on
        worker.wait()
        try:
            wait_for(lambda: not any(map(running, [torchrun, *ranks])), timeout=120)
        except AssertionError:
            raise AssertionError(f"torchrun or a rank outlived its worker; {log.read_text()[-3000:]}") from None
    finally:
        worker.kill()
    (run,) = run_dirs(out)
    summary = read_json(run / "summary.json")
    assert (summary["status"], summary.get("signal")) == ("interrupted", "SIGTERM"), \
        f"not stopped through the tether: {summary}; the worker's log: {log.read_text()[-3000:]}"
    assert 0 < summary["steps"] < STEPS and CheckpointStore(run / "checkpoints").steps()[-1] == summary["steps"]

    assert work(suite, out, url, "rerun", threads=2) == 2  # the requeued trial, and the final seed reusing its run
    steps = steps_logged(run)
    assert steps == sorted(set(steps)) and steps[-1] == STEPS  # resumed from its checkpoint: no step twice
    states = sorted(t.state.name for t in trials(out))
    assert states == ["COMPLETE", "COMPLETE", "FAIL"]  # the killed attempt (its heartbeat stale), its copy, the seed
    from optbench.report import write_report

    written = write_report(out)
    assert Path(written["html"]).exists()
    assert json.loads((run / "trial.json").read_text())["phases"] == ["tune", "final"]
