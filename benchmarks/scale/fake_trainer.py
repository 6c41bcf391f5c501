"""A trial without training: it sleeps a drawn time and ends as a real run ends, with a summary the worker tells.

The loss is a deterministic function of the trial's scenario, optimizer and hyperparameters, plus noise fixed by
its configuration and seed, so planning proceeds as with real runs: grids find an interior optimum or walk past
an edge (extend.py), final seeds differ by their noise, a learning rate far above the optimum diverges, and where
the suite prunes, the intermediate losses go through the worker's own PruningObserver (Optuna's median pruner).
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from dataclasses import dataclass
from typing import Any

from optbench.bench.plan import Claim
from optbench.bench.suite import Suite, run_key, search_space
from optbench.bench.worker import PruningObserver
from optbench.config.schema import Config, EvalConfig, TrainConfig
from optbench.optim.search_space import Choice, Dimension, LogUniform
from optbench.training.trainer import StopTraining

EVALS = 4
"""Evaluations along a fake run; the pruner sees all but the last (PruningObserver never prunes the last step)."""
EVAL_EVERY = 100
CURVE = 0.5
"""How far above its final loss a run is at its first evaluation: every run shares the shape, so the runs'
order at any step is the order of their final losses, as the median pruner assumes."""
WEIGHT = 4.0
"""The bowl's depth: the loss at the edge of a range opposite an optimum at its middle is 1.0 above the best."""
NOISE = 0.005
"""Seed-to-seed noise of a final loss: well below the loss gap between neighbouring grid points but one."""
DIVERGE = 0.4
"""A learning rate this far above its optimum (in units of its range) diverges."""


@dataclass(frozen=True)
class TrialTimes:
    """How long a fake trial sleeps: lognormal with this mean and log-space spread (0: always the mean)."""

    mean_s: float = 0.03
    sigma: float = 0.5

    def draw(self, rng: random.Random) -> float:
        if self.sigma == 0:
            return self.mean_s
        return rng.lognormvariate(math.log(self.mean_s) - self.sigma ** 2 / 2, self.sigma)


class FakeTrainer:
    """Trains a claimed trial in the time drawn for it; returns the summary a Trainer would (status, loss)."""

    def __init__(self, suite: Suite, times: TrialTimes, rng: random.Random):
        self.suite, self.times, self.rng = suite, times, rng
        self.cfg = Config(train=TrainConfig(steps=EVALS * EVAL_EVERY), eval=EvalConfig(every=EVAL_EVERY))

    def train(self, claim: Claim) -> dict[str, Any]:
        duration = self.times.draw(self.rng)
        start = time.perf_counter()
        final = synthetic_loss(self.suite, claim)
        if final is None:
            time.sleep(duration / 2)  # diverged half-way
            return {"status": "diverged", "final_val_loss": None, "wall_s": time.perf_counter() - start}
        pruning = self.suite.tuning.prune and claim.phase == "tune"  # as run_trial attaches the observer
        observer = PruningObserver(claim, self.suite, self.cfg) if pruning else None
        for k in range(1, EVALS + 1):
            time.sleep(duration / EVALS)
            if observer is not None:
                try:
                    observer.log({"step": k * EVAL_EVERY, "val_loss": final + CURVE * (EVALS / k - 1)})
                except StopTraining as stop:
                    return {"status": stop.status, "final_val_loss": None, "wall_s": time.perf_counter() - start}
        return {"status": "completed", "final_val_loss": final, "wall_s": time.perf_counter() - start}


def synthetic_loss(suite: Suite, claim: Claim) -> float | None:
    """The final validation loss of the claimed configuration at its seed; None when it diverges."""
    scenario, optimizer = claim.scenario.name, claim.entry.name
    space = search_space(claim.entry)
    loss = 3.0 + 0.5 * unit(scenario) + 0.2 * unit(optimizer)
    for key, dim in space.items():
        if key not in claim.hparams:
            continue
        u, best = position(dim, claim.hparams[key]), 0.2 + 0.6 * unit(scenario, optimizer, key)
        if key == "lr" and u - best > DIVERGE:
            return None
        loss += WEIGHT * (u - best) ** 2
    noise = random.Random(unit(scenario, optimizer, run_key(claim.hparams, claim.seed))).gauss(0.0, NOISE)
    return loss + noise


def position(dim: Dimension, value: Any) -> float:
    """Where `value` sits in the dimension: 0 at its low end, 1 at its high end, in log space for a log range, and
    beyond [0, 1] for a point extended past the range; a choice's index over the choices."""
    if isinstance(dim, Choice):
        return dim.values.index(value) / max(1, len(dim.values) - 1)
    if isinstance(dim, LogUniform):
        return math.log(value / dim.low) / math.log(dim.high / dim.low)
    return (value - dim.low) / (dim.high - dim.low)


def unit(*parts: str) -> float:
    """A number in [0, 1) fixed by `parts`, the same in every process (Python's hash() is salted per process)."""
    digest = hashlib.sha256("|".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64
