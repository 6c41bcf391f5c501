"""`optbench bench SUITE`: check the suite, prepare its data, then run workers until every study is done.

Locally, N worker processes each pinned to a GPU (CUDA_VISIBLE_DEVICES) or a share of the CPU threads;
a worker that dies is replaced, and its trial is requeued by the storage's heartbeat. On Slurm, an
array of workers through submitit. Either way the workers pull from the same studies, so running the
command again (after a crash, a kill, a timeout) picks up where the last one stopped.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf
from rich.console import Console

from optbench import plugins
from optbench.bench import downstream, layout, multirank
from optbench.bench.live import LiveView
from optbench.bench.plan import load_study, tuning_phase
from optbench.bench.protocol import as_plain, as_plain_entry, differences, freeze, freeze_entry, thawed
from optbench.bench.storage import open_storage
from optbench.bench.suite import Execution, Suite, is_frozen, load_suite, run_overrides, search_space, to_yaml
from optbench.bench.worker import work
from optbench.config.compose import compose
from optbench.errors import UserError

RESTARTS_PER_WORKER = 3
"""Replacements for workers that die, per worker slot, before the bench gives up."""


def prepare(suite_ref: str | Path, out: Path | None, storage: str | None) -> tuple[Suite, Path, str]:
    """Validate everything a run will need before writing anything; then write OUT/suite.yaml and the data."""
    suite = load_suite(suite_ref)
    # Every plugin this process has, --plugin and OPTBENCH_PLUGINS included: a Slurm worker has neither.
    suite.plugins = plugins.loaded()
    suite.plugin_hashes = plugins.digests(suite.plugins)
    check_registry(suite)  # a suite read back from OUT/suite.yaml must still be what the registry says
    suite = freeze(suite)  # the protocol as the registry resolves it now, what OUT/suite.yaml keeps
    out = Path(out) if out is not None else layout.default_out(suite.name)
    configs = check_runs(suite)
    downstream.check_tasks(suite.downstream)
    check_compatible(suite, out)
    if storage is not None:
        open_storage(storage, suite.execution)  # a bad URL fails before OUT is created
    url = storage or layout.sqlite_url(out)
    out.mkdir(parents=True, exist_ok=True)
    open_storage(url, suite.execution)
    layout.suite_file(out).write_text(to_yaml(suite))
    prepare_data(configs)
    return suite, out, url


def check_runs(suite: Suite) -> list:
    """Compose each scenario x optimizer at its first grid point, and check every grid value of every
    optimizer against its config's own checks: a bad key or value fails here, in one line, before any
    trial starts."""
    from optbench import optim
    from optbench.optim.search_space import grid_points

    configs = []
    for entry in suite.optimizers:
        space = search_space(entry)
        flat_fixed = {k: v for k, v in entry.fixed.items() if "." not in k}
        for key, dim in space.items():
            if "." not in key:  # a nested (backup.*) value is checked by the composition below
                for value in grid_points(dim):
                    optim.make_config(entry.name, **{**flat_fixed, key: value})
        first = {key: grid_points(dim)[0] for key, dim in space.items()}
        for scenario in suite.scenarios:
            if suite.runs_in(entry, scenario):
                configs.append(compose(run_overrides(suite, scenario, entry, first, suite.tuning.seed)))
    if suite.execution.nproc_per_trial > 1:
        multirank.check_configs(configs, suite.execution.nproc_per_trial)
    return configs


def check_compatible(suite: Suite, out: Path) -> None:
    """Results in OUT must come from the same protocol (protocol.py): only execution settings may change between
    runs of the command, optimizers may be added and final seeds extended."""
    path = layout.suite_file(out)
    if not path.exists():
        return
    # Both through the schema, so a field added to the format since (at its default) is no change of protocol.
    old = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(Suite), OmegaConf.load(path)))
    new = as_plain(suite)
    for key in ("name", "baseline", "base", "scenarios", "tuning"):
        if old.get(key) != new.get(key):
            raise UserError(f"{out} holds results of suite '{old.get('name')}' with a different {key} "
                            f"({_listed(differences({key: old.get(key)}, {key: new.get(key)}))}); use another --out "
                            "(or delete that folder) to run the changed suite")
    old_optimizers = {o["name"]: o for o in old.get("optimizers", [])}
    for entry in new["optimizers"]:
        if entry["name"] in old_optimizers and old_optimizers[entry["name"]] != entry:
            changed = differences(old_optimizers[entry["name"]], entry)
            raise UserError(f"{out} tuned optimizer {entry['name']} under another protocol ({_listed(changed)}); "
                            "use another --out")
    edited = sorted(ref for ref, digest in old["plugin_hashes"].items()
                    if new["plugin_hashes"].get(ref, digest) != digest)
    if edited:
        raise UserError(f"{out} holds results of plugin {edited[0]} as it was before an edit (its SHA-256 changed); "
                        "restore it, or use another --out")
    if not set(old["final"]["seeds"]) <= set(new["final"]["seeds"]):
        raise UserError(f"final.seeds may only grow between runs into {out}; it had {old['final']['seeds']}")


def check_registry(suite: Suite) -> None:
    """A frozen suite (OUT/suite.yaml, as workers read it) against what the registry says now: a worker of a
    changed optbench would run something else than the study ran so far. Entries not yet frozen have nothing to
    compare."""
    for entry in filter(is_frozen, suite.optimizers):
        frozen, now = as_plain_entry(entry), as_plain_entry(freeze_entry(thawed(entry)))
        if frozen != now:
            raise UserError(f"optimizer {entry.name} is no longer what this bench froze when it started "
                            f"({_listed(differences(frozen, now))}); run it with the optbench that started it, "
                            "or use another --out")


def _listed(changes: list[str], most: int = 4) -> str:
    shown = "; ".join(changes[:most])
    return shown + (f"; and {len(changes) - most} more" if len(changes) > most else "")


def prepare_data(configs: list) -> None:
    """Tokenize each dataset once, here, rather than in every worker at the same moment."""
    from optbench import data as datalib

    seen = set()
    for cfg in configs:
        key = OmegaConf.to_yaml(OmegaConf.structured(cfg.data))
        if key not in seen:
            seen.add(key)
            datalib.load(cfg.data, progress=sys.stderr.isatty())


# ----------------------------------------------------------------------------- local


class Stopped(KeyboardInterrupt):
    """The bench was stopped by `signum`; its workers checkpointed their trials and put them back in the queue."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def run_local(suite: Suite, out: Path, url: str, workers: int | None = None) -> None:
    """N worker processes until the suite is done; dead workers are replaced, signals forwarded."""
    n = workers or suite.execution.workers
    threads = suite.execution.threads_per_worker or max(1, (os.cpu_count() or 1) // n)
    procs: dict[int, subprocess.Popen] = {}
    restarts = 0
    stop = {"signal": None}

    def forward(signum, frame) -> None:
        stop["signal"] = signum
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, forward)
    with LiveView(suite, open_storage(url, suite.execution), n, Console(stderr=True)) as view:
        try:
            for slot in range(n):
                procs[slot] = spawn_worker(suite, out, url, slot, threads)
            while procs:
                time.sleep(0.5)
                view.refresh()
                for slot, proc in list(procs.items()):
                    code = proc.poll()
                    if code is None:
                        continue
                    del procs[slot]
                    if code != 0 and stop["signal"] is None:
                        restarts += 1
                        if restarts > RESTARTS_PER_WORKER * n:
                            raise UserError(f"workers keep dying (last exit code {code}); "
                                            f"see {layout.worker_log(out, str(slot))}")
                        procs[slot] = spawn_worker(suite, out, url, slot, threads)
        except KeyboardInterrupt:
            forward(signal.SIGINT, None)
            raise Stopped(signal.SIGINT) from None
        finally:
            for proc in procs.values():
                proc.wait()
            signal.signal(signal.SIGTERM, previous)
    if stop["signal"] is not None:
        raise Stopped(stop["signal"])


def spawn_worker(suite: Suite, out: Path, url: str, slot: int, threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if suite.execution.gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, worker_gpus(suite.execution, slot)))
    log = layout.worker_log(out, str(slot))
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "optbench", "bench", str(layout.suite_file(out)), "--out", str(out),
           "--storage", url, "--worker", str(slot), "--threads", str(threads)]
    with open(log, "a") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)


def worker_gpus(execution: Execution, slot: int) -> list[int]:
    """The GPUs of worker `slot`: the next nproc_per_trial of execution.gpus, taken in turn (a list shorter than the
    workers' needs is shared among them)."""
    n, gpus = execution.nproc_per_trial, execution.gpus
    return [gpus[(slot * n + k) % len(gpus)] for k in range(n)]


def run_worker(out: Path, url: str, worker_id: str, threads: int | None) -> int:
    """One worker (a local process or a Slurm array task): reads the frozen suite from OUT and works."""
    suite = load_suite(layout.suite_file(out))
    check_registry(suite)
    return work(suite, Path(out), url, worker_id, threads)


# ----------------------------------------------------------------------------- Slurm


def submit_slurm(suite: Suite, out: Path, url: str, workers: int | None = None, cluster: str | None = "slurm"):
    """An array of workers through submitit (cluster="local" runs the same array as local processes). Each array task
    is one worker on one node; with execution.nproc_per_trial = N it runs its trials under torchrun over its
    gpus_per_task x N GPUs (bench/multirank.py says why not as an N-task job)."""
    import contextlib
    import io

    import submitit
    from submitit.core.utils import FailedJobError

    settings = suite.execution.slurm
    if cluster == "slurm":
        check_slurm()
    executor = submitit.AutoExecutor(folder=str(out / "slurm" / "%j"), cluster=cluster)
    gpus = settings.gpus_per_task * suite.execution.nproc_per_trial  # one task, its trial's ranks forked by torchrun
    params = {"timeout_min": settings.time_min, "cpus_per_task": settings.cpus_per_task,
              "mem_gb": settings.mem_gb, "slurm_array_parallelism": settings.array_parallelism,
              "gpus_per_node": gpus, "name": f"optbench-{suite.name}"}
    if cluster == "slurm":
        params.update({f"slurm_{k}": v for k, v in (("partition", settings.partition), ("account", settings.account),
                                                    ("qos", settings.qos)) if v})
        params.update({f"slurm_{k}": v for k, v in settings.extra.items()})
    executor.update_parameters(**params)
    n = workers or suite.execution.workers
    ids = [f"slurm-{i}" for i in range(n)]
    refused = io.StringIO()  # submitit prints sbatch's complaint itself; it goes into the one-line error instead
    try:
        with contextlib.redirect_stderr(refused):
            return executor.map_array(run_slurm_worker, [out] * n, [url] * n, ids, [settings.cpus_per_task] * n)
    except FailedJobError as err:
        reason = next((line for line in str(err).splitlines() if line.strip()), "no reason given")
        raise UserError(f"sbatch refused the array of {n} workers: {reason.strip()}") from None


def check_slurm() -> None:
    """--slurm needs a Slurm cluster (submitit takes srun on PATH for one): say so in one line."""
    if shutil.which("srun") is None:
        raise UserError("--slurm submits the workers to a Slurm cluster, but there is no srun here; run it on a "
                        "Slurm login node, or without --slurm for local workers")


def run_slurm_worker(out: Path, url: str, worker_id: str, threads: int | None) -> int:
    """One Slurm array task. Slurm warns of the time limit with submitit's signal (USR2), which submitit
    answers by raising in the middle of whatever runs, and the worker would record that as a crash of the
    trial's hyperparameters. Here the signal stops the running trial as SIGTERM does: it finishes its step,
    checkpoints and goes back to the study's queue, and this task ends."""
    import submitit
    from submitit.core.utils import UncompletedJobError

    warning = submitit.JobEnvironment._usr_sig()
    previous = signal.signal(warning, _as_sigterm)
    try:
        return run_worker(out, url, worker_id, threads)
    except KeyboardInterrupt:
        raise UncompletedJobError(f"worker {worker_id} was stopped (time limit or preemption); its trial "
                                  "checkpointed and went back to the queue: submit again to continue") from None
    finally:
        signal.signal(warning, previous)


def _as_sigterm(signum, frame) -> None:
    signal.raise_signal(signal.SIGTERM)


# ----------------------------------------------------------------------------- progress


def progress(suite: Suite, url: str) -> list[dict]:
    """Per scenario and optimizer: tuning trials by state, final seeds finished, and the final losses."""
    import math

    from optuna.trial import TrialState

    storage = open_storage(url, suite.execution)
    rows = []
    for scenario, entry in suite.pairs():
        row = {"scenario": scenario.name, "optimizer": entry.name}
        studies = {"tune": [tuning_phase(k) for k in range(suite.tuning.studies)], "final": ["final"]}
        for phase, names in studies.items():  # the repeated tuning studies' trials counted together
            trials = [t for name in names
                      for t in load_study(suite, storage, scenario.name, entry.name, name).get_trials(deepcopy=False)]
            row[phase] = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState
                          if any(t.state == state for t in trials)}
            if phase == "final":
                row["final_losses"] = [t.value for t in trials if t.state == TrialState.COMPLETE
                                       and t.value is not None and math.isfinite(t.value)]
        rows.append(row)
    return rows
