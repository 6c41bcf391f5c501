"""The figures of a run, and what they say about where the storage, not the trials, becomes the limit.

A worker alone claims, trains, tells, and claims again: its cycle is the trial time T plus its overheads. N
workers could claim N times as often until the claims, which the storage serialises, fill the claim lock: past
N ~ cycle / c (c: the time a claim holds the lock), claims/s stays near 1 / c while each claim waits longer for
those ahead. Whether a run got there shows in how busy the lock was: the time claims held it over the run's wall
clock (probe.py). Claims/s can stop scaling before that, when the workers run out of CPU.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks.scale.audit import Audit

SCALING_KEPT = 0.5
"""Claims/s stopped scaling where it grew by less than this share of the growth in workers."""
STORAGE_BOUND = 0.8
"""A claim lock busy this share of the wall clock is the limit (claims queue for it)."""


@dataclass
class Row:
    label: str
    """The storage: sqlite or postgres."""
    workers: int
    killing: bool
    """Whether the supervisor killed workers in this run (how many it found to kill: `kills`)."""
    kills: int
    crashes: int
    """Workers that failed on their own (replaced): a worker whose trial was failed under it as a dead worker's."""
    studies: int
    wall_s: float
    claims: list[dict[str, Any]]
    """Every logged claim (pool.claim_record), in the order they returned."""
    audit: Audit
    walk_cpu_ms: float
    """The CPU time of a claim in the finished suite (probe.walk_cpu_ms): the walk over every study found done."""

    @property
    def handed(self) -> list[dict[str, Any]]:
        """The claims that handed out a trial."""
        return [c for c in self.claims if c["outcome"] == "claim"]

    @property
    def claims_per_s(self) -> float:
        return len(self.handed) / self.wall_s

    def ms(self, field: str, q: int = 50, last_tenth: bool = False) -> float:
        """The q-th percentile of a claim figure (seconds, lock_wait, cpu) over the handing claims, in ms."""
        handed = self.handed
        if last_tenth:
            handed = handed[-max(1, len(handed) // 10):]
        return percentile([c[field] for c in handed], q) * 1000

    @property
    def lock_busy(self) -> float:
        """The share of the wall clock some claim (one handing out a trial or not) held the claim lock."""
        return sum(c["lock_held"] for c in self.claims) / self.wall_s

    @property
    def statements_per_claim(self) -> float:
        return statistics.fmean(c["statements"] for c in self.handed) if self.handed else float("nan")

    @property
    def waits(self) -> int:
        """Claims that found nothing to run yet (every remaining trial waits on running ones)."""
        return sum(c["outcome"] == "wait" for c in self.claims)


def percentile(values: list[float], q: int) -> float:
    """The q-th percentile (the inclusive method: within the measured range)."""
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def row(label: str, workers: int, killing: bool, kills: int, crashes: int, studies: int, wall_s: float,
        claims: list[dict[str, Any]], audit: Audit, walk_cpu_ms: float) -> Row:
    return Row(label, workers, killing, kills, crashes, studies, wall_s, sorted(claims, key=lambda c: c["at"]), audit,
               walk_cpu_ms)


COLUMNS = (("storage", 8), ("workers", 7), ("kills", 5), ("crashes", 7), ("studies", 7), ("trials", 6), ("requeued", 8),
           ("pruned", 6), ("diverged", 8), ("wall s", 7), ("claims/s", 8), ("p50 ms", 7), ("p90 ms", 7),
           ("p99 ms", 7), ("late p50", 8), ("wait p50", 8), ("held p50", 8), ("cpu p50", 7), ("lock busy", 9),
           ("SQL/claim", 9), ("waits", 5), ("dup", 3), ("lost", 4))
HEADER = " ".join(f"{name:<{width}}" if i == 0 else f"{name:>{width}}" for i, (name, width) in enumerate(COLUMNS))


def format_row(r: Row) -> str:
    a = r.audit
    cells = (r.label, r.workers, r.kills, r.crashes, r.studies, a.ended, a.requeued, a.pruned, a.diverged,
             f"{r.wall_s:.1f}", f"{r.claims_per_s:.2f}", f"{r.ms('seconds', 50):.1f}", f"{r.ms('seconds', 90):.1f}",
             f"{r.ms('seconds', 99):.1f}", f"{r.ms('seconds', 50, last_tenth=True):.1f}",
             f"{r.ms('lock_wait', 50):.1f}", f"{r.ms('lock_held', 50):.1f}", f"{r.ms('cpu', 50):.1f}",
             f"{r.lock_busy:.0%}", f"{r.statements_per_claim:.1f}", r.waits, len(a.duplicates), len(a.lost))
    return " ".join(f"{cell:<{width}}" if i == 0 else f"{cell:>{width}}"
                    for i, (cell, (_, width)) in enumerate(zip(cells, COLUMNS, strict=True)))


def saturation(rows: list[Row], real_trial_s: float) -> list[str]:
    """Per storage, from its runs without kills: where claims/s stopped scaling and why, and where a cluster of
    real trials would saturate the claim lock."""
    lines = []
    for label in dict.fromkeys(r.label for r in rows):
        runs = sorted((r for r in rows if r.label == label and not r.killing), key=lambda r: r.workers)
        if runs and runs[0].workers == 1:
            lines += [f"{label}:"] + [f"  {line}" for line in scaling(runs) + extrapolation(runs, real_trial_s)]
    return lines


def scaling(runs: list[Row]) -> list[str]:
    alone = runs[0]
    cycle_ms, hold_ms = 1000 / alone.claims_per_s, alone.ms("lock_held")
    figures = ([f"{figure(r):{spec}}" for r in runs] for figure, spec in (
        (lambda r: r.claims_per_s, ".1f"), (lambda r: r.ms("seconds"), ".0f"), (lambda r: r.ms("lock_held"), ".0f"),
        (lambda r: r.statements_per_claim, ".0f"), (lambda r: r.lock_busy, ".0%")))
    rates, latencies, holds, statements, busy = (" -> ".join(f) for f in figures)
    lines = [(f"One worker's cycle (claim, fake trial, tell) took {cycle_ms:.0f} ms and its claim held the claim lock "
              f"{hold_ms:.0f} ms: at that hold the lock would saturate near cycle / hold = {cycle_ms / hold_ms:.1f} "
              "workers."),
             (f"Measured at {', '.join(str(r.workers) for r in runs)} workers: {rates} claims/s; per claim, latency "
              f"{latencies} ms, lock held {holds} ms, {statements} SQL statements; lock busy {busy}.")]
    stalled = next((b for a, b in itertools.pairwise(runs) if b.claims_per_s - a.claims_per_s
                    < SCALING_KEPT * a.claims_per_s * (b.workers / a.workers - 1)), None)
    if stalled is None:
        lines.append(f"Claims/s kept scaling up to {runs[-1].workers} workers.")
    elif stalled.lock_busy >= STORAGE_BOUND:
        lines.append(f"Storage-bound from {stalled.workers} workers: claims/s stopped scaling with the claim lock "
                     f"busy {stalled.lock_busy:.0%} of the time.")
    else:
        lines.append(f"Claims/s stopped scaling at {stalled.workers} workers with the claim lock busy "
                     f"{stalled.lock_busy:.0%} of the time: the CPU cores the workers share (with the database "
                     "server, here) ran out before the lock did.")
    return lines


def extrapolation(runs: list[Row], real_trial_s: float) -> list[str]:
    """A claim loads every study that other workers' running trials keep open (neither done nor claimable yet), so
    its statements grow with the workers: fitted as a + b x workers, at the time per statement of the lone worker's
    claims, the lock saturates where workers x hold(workers) = the trial time."""
    alone = runs[0]
    per_statement_ms = alone.ms("lock_held") / alone.statements_per_claim
    a, b = alone.statements_per_claim, 0.0
    if len(runs) > 1:
        fit = statistics.linear_regression([r.workers for r in runs], [r.statements_per_claim for r in runs])
        a, b = fit.intercept, max(0.0, fit.slope)
    trial_ms, base_ms, growth_ms = real_trial_s * 1000, a * per_statement_ms, b * per_statement_ms
    flat = trial_ms / base_ms
    workers = flat  # N (base + growth N) = trial, solved for N
    if growth_ms > 0:
        workers = (math.sqrt(base_ms ** 2 + 4 * growth_ms * trial_ms) - base_ms) / (2 * growth_ms)
    return [(f"SQL statements per claim ~ {a:.0f} + {b:.1f} per worker (the open studies each claim loads), "
             f"{per_statement_ms:.2f} ms each with the lock held (the lone worker's claims)."),
            (f"A real trial of {real_trial_s / 60:g} min: the claim lock would saturate near {workers:,.0f} workers, "
             f"each claim then holding it {(a + b * workers) * per_statement_ms:.0f} ms ({flat:,.0f} workers if "
             "claims did not grow with the workers).")]


def flatness(rows: list[Row]) -> list[str]:
    """Per storage and worker count: how a claim's latency, CPU time, lock hold and statements change with the
    number of studies, over all claims and over the last tenth (the claims that skip the most studies found done);
    each count's figure is the median over its runs (--rounds). On a shared machine the CPU time is the steadier
    figure: the wall clock also counts other processes' turns."""
    lines = []
    for label, workers, killing in dict.fromkeys((r.label, r.workers, r.killing) for r in rows):
        by_count: dict[int, list[Row]] = {}
        for r in rows:
            if (r.label, r.workers, r.killing) == (label, workers, killing):
                by_count.setdefault(r.studies, []).append(r)
        if len(by_count) < 2:
            continue
        studies = sorted(by_count)

        def trend(figure: Callable[[Row], float], digits: int = 1, by_count=by_count, studies=studies) -> str:
            return " -> ".join(f"{statistics.median(figure(r) for r in by_count[n]):.{digits}f}" for n in studies)
        rounds = min(len(runs) for runs in by_count.values())
        median_of = f" (median of {rounds} rounds)" if rounds > 1 else ""
        lines.append(f"{label}, {workers} worker(s){', kills' if killing else ''}, "
                     f"{' -> '.join(map(str, studies))} studies{median_of}: "
                     f"claim latency p50 {trend(lambda r: r.ms('seconds'))} ms (last tenth "
                     f"{trend(lambda r: r.ms('seconds', last_tenth=True))}), CPU p50 {trend(lambda r: r.ms('cpu'))} ms "
                     f"(last tenth {trend(lambda r: r.ms('cpu', last_tenth=True))}), lock held p50 "
                     f"{trend(lambda r: r.ms('lock_held'))} ms, SQL statements per claim "
                     f"{trend(lambda r: r.statements_per_claim)}; a claim in the finished suite (walking every study, "
                     f"loading none): CPU {trend(lambda r: r.walk_cpu_ms, 2)} ms.")
    return lines
