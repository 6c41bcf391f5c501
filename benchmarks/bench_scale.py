"""The bench at scale: thousands of trials through the real claim, heartbeat, requeue and tell code, only the
training faked, with 1, 8 and 32 local workers, on SQLite and on PostgreSQL.

    python benchmarks/bench_scale.py [--trials 10000] [--studies 400] [--workers 1,8,32] [--storage sqlite,postgres]
                                     [--postgres URL] [--kill [on|both]] [--kill-every 5] [--trial-ms 30]
    python benchmarks/bench_scale.py --suite s4s-stage1 [--studies 48,96,192] [--workers 1] [--storage sqlite]
                                     [--rounds 1]

The synthetic suite spreads --trials over --studies (scenario x optimizer pairs, each a tuning grid over the
learning rate, pruned by the median rule, then a final study over its best's seeds; benchmarks/scale/suites.py).
--suite plans a shipped suite's first --studies studies end to end instead, once per count, to show whether a
claim costs more as the studies found done pile up (s4s-stage1 has 4 scenarios x 24 optimizers = 192 studies: 48,
96 and 192 are whole scenarios, so every count plans the same mix of optimizers; a count past the suite's size
repeats its scenarios under new names, `llama-60m~2` and so on, up to 8 times: 384 is the suite twice over). Each
run starts from an empty storage (a fresh SQLite file, or a fresh schema in the --postgres database, dropped
afterwards; default OPTBENCH_TEST_POSTGRES).

A fake trial sleeps a lognormal time of mean --trial-ms and reports a synthetic loss curve (benchmarks/scale/
fake_trainer.py). --kill SIGKILLs a random worker holding a trial every --kill-every seconds on average and starts
another in its place; heartbeats beat every second, so the dead worker's trial is requeued --grace-s (30) seconds
after its last beat.

Per run, one line: workers killed, and workers that failed on their own (replaced as `optbench bench` replaces
them; their tracebacks go to stderr); trials run to an end (each configuration once), trials requeued after their
worker died, pruned and diverged ones; wall-clock seconds from the start of the claims to the last worker's exit,
and claims/s; for the claims that handed out a trial, the latency (p50, p90, p99, and the p50 of the last tenth,
which skip the most studies found done), the p50 of the time spent waiting for the claim lock, holding it, and on
the CPU, and the SQL statements sent; the share of the wall clock the claim lock was held; claims that found nothing
to run yet (waits); and the audit: duplicated and lost trials (benchmarks/scale/audit.py), both of which must be
0. Then, per storage, where claims/s stopped scaling and why, and where a cluster whose trials last
--real-trial-min minutes would saturate the claim lock; with --suite, how a claim's cost changed with the number of
studies.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks.scale`, here and in the workers

from benchmarks.scale import pool, probe, storages, suites, table
from benchmarks.scale.audit import audit
from benchmarks.scale.fake_trainer import TrialTimes
from optbench.bench.storage import open_storage
from optbench.bench.suite import Suite
from optbench.errors import UserError

KILL_MODES = {"off": (False,), "on": (True,), "both": (False, True)}


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse(argv)
        return run(args)
    except UserError as err:
        sys.stderr.write(f"bench_scale: error: {err}\n")
        return 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UserError(message)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", help="plan a shipped suite's first --studies studies instead of the synthetic suite")
    p.add_argument("--trials", type=int, default=10_000, help="synthetic suite: trials planned (default 10000)")
    p.add_argument("--studies", help="studies (synthetic: one count, default 400; --suite: counts, default 48,96,192)")
    p.add_argument("--workers", help="worker counts (default 1,8,32; --suite: 1)")
    p.add_argument("--storage", default="sqlite,postgres", help="sqlite, postgres or both (default both)")
    p.add_argument("--postgres", default=os.environ.get("OPTBENCH_TEST_POSTGRES"),
                   help="a PostgreSQL database (default $OPTBENCH_TEST_POSTGRES); each run uses a fresh schema in it")
    p.add_argument("--kill", nargs="?", const="on", default="off", choices=sorted(KILL_MODES),
                   help="kill random workers (on), or run each configuration without and with kills (both)")
    p.add_argument("--kill-every", type=float, default=5.0, help="mean seconds between kills (default 5)")
    p.add_argument("--trial-ms", type=float, default=30.0, help="mean fake trial duration (default 30 ms)")
    p.add_argument("--grace-s", type=int, default=suites.GRACE_S,
                   help=f"seconds without a heartbeat before a trial is taken for a dead worker's (default "
                        f"{suites.GRACE_S}; heartbeats every second)")
    p.add_argument("--real-trial-min", type=float, default=10.0,
                   help="a real trial's minutes, for the cluster extrapolation (default 10)")
    p.add_argument("--rounds", type=int, default=1,
                   help="--suite: run the counts this many times over, in turn, and summarise each count by its "
                        "rounds' median (a shared machine's speed drifts over minutes; default 1)")
    p.add_argument("--seed", type=int, default=0, help="seeds the trial durations and the kills")
    args = p.parse_args(argv)
    args.studies = counts("--studies", args.studies or ("48,96,192" if args.suite else "400"))
    args.workers = counts("--workers", args.workers or ("1" if args.suite else "1,8,32"))
    args.storage = args.storage.split(",")
    for kind in args.storage:
        if kind not in storages.KINDS:
            raise UserError(f"--storage {kind}: valid: {', '.join(storages.KINDS)}")
    if not args.suite and len(args.studies) != 1:
        raise UserError(f"--studies {','.join(map(str, args.studies))}: the synthetic suite takes one count; several "
                        "go with --suite")
    for name, value in (("--kill-every", args.kill_every), ("--trial-ms", args.trial_ms),
                        ("--real-trial-min", args.real_trial_min)):
        if not value > 0:
            raise UserError(f"{name} {value}: must be positive")
    if args.rounds < 1 or (args.rounds > 1 and not args.suite):
        raise UserError(f"--rounds {args.rounds}: valid: a positive integer, and more than 1 only with --suite")
    if args.grace_s < 2:
        raise UserError(f"--grace-s {args.grace_s}: must be at least 2 (heartbeats beat every second)")
    return args


def counts(flag: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise UserError(f"{flag} {text}: valid: positive integers separated by commas, e.g. 1,8,32")
    return values


def run(args: argparse.Namespace) -> int:
    # every suite built and checked before the first run starts
    plans = [(suites.shipped_subset(args.suite, n, grace_s=args.grace_s) if args.suite
              else suites.synthetic(args.trials, n, grace_s=args.grace_s), n) for n in args.studies]
    if "postgres" in args.storage and not args.postgres:
        raise UserError("--storage postgres needs --postgres postgresql://USER:PASSWORD@HOST/DB (or "
                        "OPTBENCH_TEST_POSTGRES)")
    times = TrialTimes(args.trial_ms / 1000)
    print(f"{plans[0][0].name if not args.suite else args.suite}: fake trials of {args.trial_ms:g} ms mean; "
          f"kills every {args.kill_every:g} s on average where on; {os.cpu_count()} CPU cores", flush=True)
    print(table.HEADER, flush=True)
    rows = []
    for kind in args.storage:
        for suite, studies in plans * args.rounds:  # the counts in turn, round after round
            for killing in KILL_MODES[args.kill]:
                for workers in args.workers:
                    r = one_run(suite, studies, kind, args.postgres, workers, times,
                                args.kill_every if killing else None, args.seed)
                    print(table.format_row(r), flush=True)
                    rows.append(r)
    lines = table.flatness(rows) if args.suite else table.saturation(rows, args.real_trial_min * 60)
    print("\n".join(lines))
    return 1 if any(r.audit.duplicates or r.audit.lost for r in rows) else 0


def one_run(suite: Suite, studies: int, kind: str, postgres: str | None, workers: int, times: TrialTimes,
            kill_every_s: float | None, seed: int) -> table.Row:
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp, storages.fresh(kind, Path(tmp), postgres) as url:
        folder = Path(tmp)
        open_storage(url, suite.execution).engine.dispose()  # the tables, made before any worker starts
        supervised = pool.run(pool.Job(suite, url, folder, times), workers, kill_every_s, seed)
        claims = pool.read_claims(folder)
        found = audit(suite, url, claims)
        for problem in found.duplicates + found.lost:
            print(f"  {problem}", file=sys.stderr)
        storage = open_storage(url, suite.execution)
        walk = probe.walk_cpu_ms(suite, storage) if not found.lost else float("nan")
        storage.engine.dispose()
    return table.row(kind, workers, kill_every_s is not None, supervised.kills, supervised.crashes, studies,
                     supervised.wall_s, claims, found, walk)


if __name__ == "__main__":
    sys.exit(main())
