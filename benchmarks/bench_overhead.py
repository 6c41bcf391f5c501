"""Bench workers' overhead: the runs' own wall clock as a fraction of the worker processes' whole lives, for this
checkout and a baseline revision, measured in the same run.

    python benchmarks/bench_overhead.py --baseline-rev REV [--suite tiny] [--steps N] [--workers 2] [--rounds 1]

Each variant prepares the suite into a fresh folder with its own code, then starts the workers exactly as
`optbench bench` does (launch.spawn_worker: the same command line and environment) and times each process from
its start to its exit: worker time is the sum of those lives, and every second of it not spent inside a run
(process start-up, claiming, composing, building trainers, run-directory writes, telling the study, waiting for
other workers' trials) is overhead. The runs' own time is the sum of wall_s over the run directories'
summary.json (a final seed equal to the tuning seed reuses that run: one directory, counted once).

The baseline is a `git worktree` of --baseline-rev in a temporary folder, removed afterwards; its workers import
it through PYTHONPATH, which they inherit. Rounds alternate the variants so machine noise reaches both alike.
--steps trims every run of the suite to N steps (a copy of the suite file with train.steps=N). This checkout's
workers log each trial's claim, set-up, train and tell times; their means are printed below the table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

DRIVER = """
import json, sys, time
from pathlib import Path
import optbench
from optbench.bench import launch
suite, out, url = launch.prepare(sys.argv[1], Path(sys.argv[2]), None)
threads = suite.execution.threads_per_worker or 1
procs = {slot: (time.perf_counter(), launch.spawn_worker(suite, out, url, slot, threads))
         for slot in range(int(sys.argv[3]))}
lives, codes = {}, {}
while len(lives) < len(procs):
    for slot, (start, proc) in procs.items():
        if slot not in lives and proc.poll() is not None:
            lives[slot], codes[slot] = time.perf_counter() - start, proc.returncode
    time.sleep(0.02)
print(json.dumps({"lives": list(lives.values()), "codes": list(codes.values()), "optbench": optbench.__file__}))
"""
"""Run with the variant's code: prepares OUT, starts the workers as `optbench bench` does, prints their lives and
which optbench it imported (its workers, started alike from the same folder and environment, import the same)."""

TRIAL_LINE = re.compile(r"^trial \d+ \S+: claim ([\d.]+) s, set-up ([\d.]+) s, train ([\d.]+) s \((.*)\), "
                        r"tell ([\d.]+) s$", re.MULTILINE)
IDLE_LINE = re.compile(r"^worker \S+: \d+ trials, idle ([\d.]+) s", re.MULTILINE)


def suite_file(suite: str, steps: int | None, folder: Path) -> Path:
    """The suite's file, or a copy of it whose every run trains `steps` steps."""
    sys.path.insert(0, str(REPO))
    from optbench.bench.suite import resolve_path

    path = resolve_path(suite)
    if steps is None:
        return path
    spec = yaml.safe_load(path.read_text())
    spec["base"] = [line for line in spec.get("base", []) if not line.startswith("train.steps=")]
    spec["base"].append(f"train.steps={steps}")
    trimmed = folder / f"{spec['name']}-{steps}.yaml"
    trimmed.write_text(yaml.safe_dump(spec, sort_keys=False))
    return trimmed


def run_variant(code: Path, suite: Path, out: Path, workers: int) -> dict:
    """Prepare and run the suite into `out` with the code in `code`; the workers' lives, the runs' wall_s."""
    # The variant's own folder is the working directory (first on sys.path, before any editable install) and
    # PYTHONPATH, which the workers inherit; data.mirror defaults to ../shared/data, so it is given absolutely.
    env = {**os.environ, "PYTHONPATH": str(code),
           "OPTBENCH_MIRROR": os.environ.get("OPTBENCH_MIRROR", str(REPO.parent / "shared" / "data"))}
    done = subprocess.run([sys.executable, "-c", DRIVER, str(suite), str(out), str(workers)], cwd=code, env=env,
                          capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not Path(result["optbench"]).resolve().is_relative_to(code.resolve()):
        raise SystemExit(f"the variant in {code} imported {result['optbench']}")
    if any(result["codes"]):
        raise SystemExit(f"a worker of {code} failed (exit codes {result['codes']}); see {out}/workers/")
    walls = [json.loads(p.read_text())["wall_s"] for p in out.glob("runs/*/*/*/summary.json")]
    logs = "\n".join(p.read_text() for p in sorted((out / "workers").glob("*.log")))
    return {"worker_s": sum(result["lives"]), "lives": result["lives"], "runs_s": sum(walls), "runs": len(walls),
            "trials": TRIAL_LINE.findall(logs), "idle_s": sum(float(s) for s in IDLE_LINE.findall(logs))}


def breakdown(result: dict) -> list[str]:
    """Per-trial means of what the workers logged, their idle polls, and the rest of worker time (start-up, exit)."""
    trials, worker_s = result["trials"], result["worker_s"]
    claim, setup, train, tell = ([float(t[i]) for t in trials] for i in (0, 1, 2, 4))
    run = [float(m.group(1)) for t in trials if (m := re.match(r"run ([\d.]+) s", t[3]))]
    around = sum(train) - sum(run)  # inside Trainer.train but outside the run's clock: run directory, summary
    rest = worker_s - sum(claim) - sum(setup) - sum(train) - sum(tell) - result["idle_s"]
    lines = [f"{'per trial (mean)':<34}{'s':>8}{'share of worker time':>24}"]
    for name, values in (("claim", claim), ("set-up (config, trainer)", setup), ("tell", tell)):
        lines.append(f"{name:<34}{statistics.mean(values):>8.3f}{sum(values) / worker_s:>24.3f}")
    lines.append(f"{'run dir + summary around the run':<34}{around / len(trials):>8.3f}{around / worker_s:>24.3f}")
    lines.append(f"{'idle polls (waiting on others)':<34}{'':>8}{result['idle_s'] / worker_s:>24.3f}")
    lines.append(f"{'process start-up and exit':<34}{'':>8}{rest / worker_s:>24.3f}")
    lines.append(f"{'the runs themselves':<34}{'':>8}{result['runs_s'] / worker_s:>24.3f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-rev", required=True, help="the revision to compare with (a commit, tag or branch)")
    parser.add_argument("--suite", default="tiny")
    parser.add_argument("--steps", type=int, help="train every run this many steps instead of the suite's")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    rev = subprocess.run(["git", "rev-parse", "--short", args.baseline_rev], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.strip()
    results: dict[str, list[dict]] = {"baseline": [], "today": []}
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        folder = Path(tmp)
        suite = suite_file(args.suite, args.steps, folder)
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(folder / "baseline"), rev], cwd=REPO, check=True)
        try:
            for round_ in range(args.rounds):
                for name, code in (("baseline", folder / "baseline"), ("today", REPO)):
                    out = folder / f"{name}-{round_}"
                    results[name].append(run_variant(code, suite, out, args.workers))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(folder / "baseline")], cwd=REPO, check=True)
    report(args, rev, results)


def report(args: argparse.Namespace, rev: str, results: dict[str, list[dict]]) -> None:
    steps = f"{args.steps} steps per run" if args.steps else "the suite's own steps"
    print(f"suite {args.suite} ({steps}), {args.workers} workers, {args.rounds} round(s); baseline {rev}")
    print(f"{'variant':<18}{'worker s':>10}{'runs wall_s':>13}{'runs':>6}{'trials logged':>15}{'fraction':>10}")
    for name, rounds in results.items():
        for r in rounds:
            label = f"baseline {rev}" if name == "baseline" else "this checkout"
            print(f"{label:<18}{r['worker_s']:>10.1f}{r['runs_s']:>13.1f}{r['runs']:>6}{len(r['trials']):>15}"
                  f"{r['runs_s'] / r['worker_s']:>10.3f}")
    today = results["today"][-1]
    if today["trials"]:
        print(f"\nthis checkout, last round ({len(today['trials'])} trials):")
        print("\n".join(breakdown(today)))


if __name__ == "__main__":
    main()
