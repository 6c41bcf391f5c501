"""What diag.every costs on nanoGPT's CPU recipe: the same run with dynamics off and on, in the same rounds.

    python benchmarks/diag_overhead.py [--steps 300] [--rounds 3] [--every 100] [overrides ...]

Dynamics are measured outside the timed step, so the trainer's step_time_s cannot see them: the cost is read off
the wall clock, as wall seconds per step of runs without evaluations (eval.every=0, one batch at the end, no
sample), diag.every=0 against diag.every=N, alternated so the machine's noise reaches both alike. The wall-clock
ratio of two noisy runs cannot resolve a fraction of a percent on a shared machine, so the seconds spent inside
the telemetry's own calls (the snapshots, the measurements, the probe) are also timed in the "on" runs and
printed as a share of their wall time: the overhead itself, free of the noise between runs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from optbench.config.compose import compose
from optbench.training.telemetry import Telemetry
from optbench.training.trainer import Trainer


class _Clock:
    """Seconds spent in Telemetry.before_update and after_update, summed over a run."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, method):
        def timed(telemetry, *args):
            start = time.perf_counter()
            try:
                return method(telemetry, *args)
            finally:
                self.seconds += time.perf_counter() - start
        return timed


def run(overrides: list[str], steps: int, every: int) -> tuple[float, float]:
    """(wall ms per step, ms per step spent in the telemetry) of one run."""
    clock = _Clock()
    before, after = Telemetry.before_update, Telemetry.after_update
    Telemetry.before_update, Telemetry.after_update = clock.wrap(before), clock.wrap(after)
    try:
        with tempfile.TemporaryDirectory() as run_dir:
            cfg = compose([*overrides, f"train.steps={steps}", f"diag.every={every}", "eval.every=0",
                           "eval.batches=1", "eval.sample_tokens=0", "run.progress=false", f"run.dir={run_dir}/run"])
            summary = Trainer(cfg).train()
    finally:
        Telemetry.before_update, Telemetry.after_update = before, after
    return 1000 * summary["wall_s"] / steps, 1000 * clock.seconds / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--every", type=int, default=100, help="diag.every of the 'on' runs")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    overrides = ["experiment=nanogpt-shakespeare", *args.overrides]
    walls: dict[str, list[float]] = {"off": [], "on": []}
    inside: list[float] = []
    for _ in range(args.rounds):  # alternated, so the machine's noise reaches both alike
        walls["off"].append(run(overrides, args.steps, 0)[0])
        wall, telemetry = run(overrides, args.steps, args.every)
        walls["on"].append(wall)
        inside.append(telemetry / wall)
    off, on = statistics.median(walls["off"]), statistics.median(walls["on"])
    print(f"recipe: {' '.join(overrides)}  ({args.rounds} rounds of {args.steps} steps, "
          f"{torch.get_num_threads()} threads)")
    print(f"{'diag.every':<14}{'wall ms/step':>14}{'ratio':>8}")
    print(f"{'0 (baseline)':<14}{off:>14.1f}{1.0:>8.3f}")
    print(f"{args.every:<14}{on:>14.1f}{on / off:>8.3f}")
    print(f"time inside the telemetry at diag.every={args.every}: {100 * statistics.median(inside):.2f}% of the "
          f"wall time (median over rounds; per round {', '.join(f'{100 * x:.2f}%' for x in inside)})")


if __name__ == "__main__":
    main()
